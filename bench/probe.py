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
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

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
            raise ValueError(f"unknown head {self.head!r}; heads: {', '.join(HEADS)}")
        if self.epochs < 1 or self.eval_every < 1 or not self.lrs or not self.weight_decays:
            raise ValueError("probe needs epochs >= 1, eval_every >= 1 and non-empty lr/wd grids")

    def checkpoints(self) -> list[int]:
        return checkpoints(self.epochs, self.eval_every)

    def as_params(self) -> dict[str, Any]:
        return {f"probe.{k}": v for k, v in asdict(self).items()}


def checkpoints(epochs: int, eval_every: int) -> list[int]:
    """Epochs at which validation is scored: every ``eval_every``, and the last."""
    return sorted(set(range(eval_every, epochs + 1, eval_every)) | {epochs})


@dataclass
class ProbeResult:
    best: dict[str, float]  # lr, weight_decay, epochs
    val: dict[str, float]  # metrics of the selected grid point on validation
    test: dict[str, float]  # metrics of the retrained head on test
    per_class: np.ndarray  # test accuracy per class
    confusion: np.ndarray  # test confusion matrix (true x predicted)
    grid: list[dict[str, float]] = field(default_factory=list)  # every grid point's val metrics


def metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """top1, top5, mean per-class accuracy, in percent."""
    k = min(5, logits.shape[-1])
    topk = logits.topk(k, dim=-1).indices
    hit1 = topk[:, 0] == labels
    hit5 = (topk == labels[:, None]).any(-1)
    counts = torch.bincount(labels, minlength=num_classes).float()
    correct = torch.bincount(labels[hit1], minlength=num_classes).float()
    present = counts > 0
    return {
        "top1": 100.0 * hit1.float().mean().item(),
        "top5": 100.0 * hit5.float().mean().item(),
        "mean_per_class": 100.0 * (correct[present] / counts[present]).mean().item(),
    }


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


def fit_probe(
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    num_classes: int,
    cfg: ProbeConfig,
    headline: str = "top1",
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ProbeResult:
    """Select on val with the batched grid, retrain the winner on train+val, test once."""
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    store = torch.float16 if dev.type == "cuda" else torch.float32

    def tensor(a: np.ndarray, dtype=store) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a.reshape(len(a), -1))).to(dev, dtype)

    x = {s: tensor(features[s]) for s in ("train", "val", "test")}
    y = {s: torch.as_tensor(labels[s], dtype=torch.long, device=dev) for s in x}
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    lrs = torch.tensor([g[0] for g in grid])
    wds = torch.tensor([g[1] for g in grid])
    records: list[dict[str, float]] = []

    def record(epoch: int):
        def at(heads, norm):
            logits = _logits(heads, norm, x["val"])
            for g, (lr, wd) in enumerate(grid):
                m = metrics(logits[g], y["val"], num_classes)
                records.append({"lr": lr, "weight_decay": wd, "epochs": epoch, **m})
        return at

    _train_grid(x["train"], y["train"], num_classes, lrs, wds, cfg,
                {e: record(e) for e in cfg.checkpoints()}, progress=progress)
    best_index = int(np.argmax([r[headline] for r in records]))  # first maximum: deterministic
    best = records[best_index]

    x_all = torch.cat([x["train"], x["val"]])
    y_all = torch.cat([y["train"], y["val"]])
    heads, norm = _train_grid(x_all, y_all, num_classes, torch.tensor([best["lr"]]),
                              torch.tensor([best["weight_decay"]]), cfg, {},
                              stop_at=int(best["epochs"]), progress=progress)
    test_logits = _logits(heads, norm, x["test"])[0]
    return test_result(best, test_logits.cpu(), y["test"].cpu(), num_classes, records)


def test_result(best: dict[str, float], test_logits: torch.Tensor, y_test: torch.Tensor,
                num_classes: int, grid: list[dict[str, float]]) -> ProbeResult:
    """The selected grid point's result: test metrics, per-class accuracy, confusion matrix."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_test.numpy(), test_logits.argmax(-1).numpy()), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = 100.0 * np.diag(confusion) / confusion.sum(1)
    return ProbeResult(
        best={k: best[k] for k in ("lr", "weight_decay", "epochs")},
        val={k: best[k] for k in ("top1", "top5", "mean_per_class")},
        test=metrics(test_logits, y_test, num_classes),
        per_class=per_class,
        confusion=confusion,
        grid=grid,
    )
