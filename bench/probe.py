"""Probes on cached features: a whole hyperparameter grid trained as one batched computation.

Every (learning rate, weight decay) pair is one head; all G heads live in one (G, D, C) weight
tensor and train together off the same minibatches with AdamW, each at its own learning rate and
decay, on a cosine schedule over ``epochs``. Validation accuracy is recorded at several epoch
checkpoints, so the epoch count is a grid axis too. The best (lr, wd, epochs) on validation is
retrained on train+val, identically, and evaluated on test exactly once.

Heads: ``linear`` (features standardised with training-set statistics, then Linear),
``bn-linear`` (MAE's protocol: BatchNorm1d(affine=False) with batch statistics in training and
running statistics at evaluation, then Linear) and ``mlp`` (standardise, then ReLU hidden layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.errors import UsageError
from bench.protocol import ProbeData, ProbeResult, checkpoints, evaluate, metrics

HEADS = ("linear", "bn-linear", "mlp")


@dataclass
class ProbeConfig:
    head: str = "linear"
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
    epochs: int = 40
    eval_every: int = 10  # validation checkpoints: every N epochs, and the last
    batch_size: int = 256
    hidden: int = 1024  # mlp
    hidden_layers: int = 1  # mlp
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise UsageError(f"unknown head {self.head!r}; heads: {', '.join(HEADS)}")
        if self.epochs < 1 or self.eval_every < 1 or not self.lrs or not self.weight_decays:
            raise UsageError("probe needs epochs >= 1, eval_every >= 1 and non-empty lr/wd grids")

    def checkpoints(self) -> list[int]:
        return checkpoints(self.epochs, self.eval_every)


class _GridHeads(nn.Module):
    """G independent heads evaluated together: (N, D) -> (G, N, C)."""

    def __init__(self, groups: int, dim: int, classes: int, cfg: ProbeConfig, gen: torch.Generator):
        super().__init__()
        widths = [dim] + [cfg.hidden] * (cfg.hidden_layers if cfg.head == "mlp" else 0) + [classes]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            if last and cfg.head != "mlp":
                w = torch.zeros(groups, fan_in, fan_out)  # convex problem: zero init is exact
            else:
                bound = 1.0 / math.sqrt(fan_in)
                w = (torch.rand(groups, fan_in, fan_out, generator=gen) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(groups, 1, fan_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.weights[0].shape[0], -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        return h


class _Normaliser:
    """Standardisation with fixed statistics, or BatchNorm1d(affine=False) semantics."""

    def __init__(self, x: torch.Tensor, batchnorm: bool):
        self.batchnorm = batchnorm
        mean, var = _moments(x)
        self.mean, self.var = (torch.zeros_like(mean), torch.ones_like(var)) if batchnorm else (
            mean, var)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        if self.batchnorm and train:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            with torch.no_grad():
                self.mean.lerp_(mean, 0.1)
                self.var.lerp_(x.var(0, unbiased=True) if len(x) > 1 else var, 0.1)
            return (x - mean) / torch.sqrt(var + 1e-5)
        return (x - self.mean) / torch.sqrt(self.var + 1e-5)


def _moments(x: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    sq = torch.zeros_like(total)
    for i in range(0, len(x), chunk):
        block = x[i : i + chunk].double()
        total += block.sum(0)
        sq += (block * block).sum(0)
    mean = total / len(x)
    return mean.float(), (sq / len(x) - mean * mean).clamp_min(0).float()


def _train_grid(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lrs: torch.Tensor,
    wds: torch.Tensor,
    cfg: ProbeConfig,
    evaluate_at: dict[int, Any],
    stop_at: int | None = None,
    progress: bool = False,
) -> tuple[_GridHeads, _Normaliser]:
    """Train G = len(lrs) heads at once; call evaluate_at[epoch](heads, norm) at checkpoints."""
    gen = torch.Generator().manual_seed(cfg.seed)
    device = x.device
    heads = _GridHeads(len(lrs), x.shape[1], num_classes, cfg, gen).to(device)
    norm = _Normaliser(x, batchnorm=cfg.head == "bn-linear")
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in heads.parameters()]
    decays = [p.dim() == 3 for p in heads.parameters()]  # weights decay, biases do not
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    lr_view, wd_view = lrs.view(-1, 1, 1).to(device), wds.view(-1, 1, 1).to(device)
    step = 0
    from tqdm.auto import tqdm

    for epoch in tqdm(range(1, (stop_at or cfg.epochs) + 1), desc=f"probe {cfg.head} x{len(lrs)}",
                      unit="epoch", disable=not progress, leave=False):
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            logits = heads(norm(x[idx].float(), train=True))
            target = y[idx].repeat(len(lrs))
            loss = nn.functional.cross_entropy(logits.reshape(-1, num_classes), target)
            heads.zero_grad(set_to_none=True)
            (loss * len(lrs)).backward()  # sum over heads of each head's mean loss
            step += 1
            scale = 0.5 * (1 + math.cos(math.pi * (step - 1) / total_steps))
            with torch.no_grad():
                for p, (m, v), decay in zip(heads.parameters(), state, decays):
                    m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    update = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + eps)
                    if decay:
                        update = update + wd_view * p
                    p.sub_(lr_view * scale * update)
        if epoch in evaluate_at:
            evaluate_at[epoch](heads, norm)
    return heads, norm


@torch.no_grad()
def _logits(heads: _GridHeads, norm: _Normaliser, x: torch.Tensor, chunk: int = 8192):
    return torch.cat([heads(norm(x[i : i + chunk].float(), train=False))
                      for i in range(0, len(x), chunk)], dim=1)


REFIT_ON = ("train+val", "train")


class GridProbeTrainer:
    """The batched grid on pooled vectors, as a ``bench.protocol`` trainer.

    ``refit_on="train"`` retrains the selected point on train alone: few-shot probes validate on
    the rest of train, which must not leak into the k-shot head.
    """

    def __init__(self, cfg: ProbeConfig, device: torch.device | str = "cpu", precision=None,
                 progress: bool = False, groups=None, refit_on: str = "train+val"):
        if refit_on not in REFIT_ON:
            raise ValueError(f"refit_on must be one of {', '.join(REFIT_ON)}, got {refit_on!r}")
        self.cfg, self.device, self.progress = cfg, torch.device(device), progress
        self.refit_splits = refit_on.split("+")
        if precision is not None:
            self.store = getattr(torch, precision.probe_inputs)
        else:  # half the memory on a GPU, where fp16 matmuls are fast
            self.store = torch.float16 if self.device.type == "cuda" else torch.float32

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(np.asarray(a).reshape(len(a), -1))).to(
            self.device, self.store)

    def _labels(self, y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(y), dtype=torch.long, device=self.device)

    def search(self, data: ProbeData) -> list[dict[str, float]]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        x_train, x_val = self._tensor(data.features["train"]), self._tensor(data.features["val"])
        y_train, y_val = self._labels(data.labels["train"]), self._labels(data.labels["val"])
        grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
        records: list[dict[str, float]] = []

        def record(epoch: int):
            def at(heads, norm):
                logits = _logits(heads, norm, x_val)
                for g, (lr, wd) in enumerate(grid):
                    m = metrics(logits[g], y_val, data.num_classes)
                    records.append({"lr": lr, "weight_decay": wd, "epochs": epoch, **m})
            return at

        _train_grid(x_train, y_train, data.num_classes, torch.tensor([g[0] for g in grid]),
                    torch.tensor([g[1] for g in grid]), cfg,
                    {e: record(e) for e in cfg.checkpoints()}, progress=self.progress)
        return records

    def refit_predict(self, data: ProbeData, point: dict[str, float]) -> torch.Tensor:
        torch.manual_seed(self.cfg.seed)
        x_all = torch.cat([self._tensor(data.features[s]) for s in self.refit_splits])
        y_all = torch.cat([self._labels(data.labels[s]) for s in self.refit_splits])
        heads, norm = _train_grid(x_all, y_all, data.num_classes, torch.tensor([point["lr"]]),
                                  torch.tensor([point["weight_decay"]]), self.cfg, {},
                                  stop_at=int(point["epochs"]), progress=self.progress)
        return _logits(heads, norm, self._tensor(data.features["test"]))[0]


def fit_probe(
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    num_classes: int,
    cfg: ProbeConfig,
    headline: str = "top1",
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ProbeResult:
    """``bench.protocol.evaluate`` with the batched grid: select on val, retrain, test once."""
    trainer = GridProbeTrainer(cfg, device, progress=progress)
    return evaluate(trainer, ProbeData(features, labels, num_classes), headline)
