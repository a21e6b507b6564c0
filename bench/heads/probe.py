"""Probes on cached features: a whole hyperparameter grid trained as one batched computation.

Every (learning rate, weight decay) pair is one head; all G linear heads live in one (G, C, D)
weight and train together off the same minibatches with AdamW, each at its own learning rate and
decay, on a cosine schedule over ``epochs``: a step is two GEMMs against its (G*C, D) view,
gradients by hand (``train_grid``). ``halving=True`` (the default) drops the worse half of the
grid at each checkpoint from a quarter of the epochs on, except points within validation noise of
the best. Validation accuracy is recorded at several epoch checkpoints, so the epoch count is a
grid axis too. The best (lr, wd, epochs) on validation is retrained on train+val, identically, and
evaluated on test exactly once.

Heads: ``linear`` (features standardised with training-set statistics, then Linear),
``bn-linear`` (MAE's protocol: BatchNorm1d(affine=False) with batch statistics in training and
running statistics at evaluation, then Linear) and ``mlp`` (standardise, then ReLU hidden layers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import torch
from torch import nn

from bench.errors import UsageError
from bench.heads.memory import Inputs, MemoryPlan, Source, inputs_of
from bench.precision import FP32, PrecisionPolicy, require
from bench.ranges import COUNT, NON_NEGATIVE, POSITIVE, check_settings, setting
from bench.heads.streaming import (Batches, Rows, ViewCycle, batches_source, moments,
                                   standardisation)
from bench.protocol import (ProbeData, ProbeResult, checkpoints, evaluate, top_classes,
                            top_predictions)

ARCHITECTURES = ("linear", "bn-linear", "mlp")  # what this trainer builds (heads: bench.heads.kinds)


# The default grid, by decades around where standardised features select (lr 3e-2, the median
# of benchmarks/grid_centre.py's 14 feature sets: digits through 8 offline backbones and Gaussian
# sets of 64-2,048 dims and 10-100 classes, selected between 1e-4 and 3; weight decay flat
# within validation noise for most, rising to 1-10 for some). Against the former 3e-4..3e-2 x
# 0..1e-1 it gives up 5x fewer validation points (mean 0.34 against 1.74 for linear, 0.74 against
# 1.37 for mlp) and selects at an end of the grid 9 (linear, as before) and 1 (mlp, 6 before)
# times of 14; the demo's results select inside it.
LRS = (3e-4, 3e-3, 3e-2, 0.3, 3.0)
WEIGHT_DECAYS = (0.0, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class ProbeConfig:
    head: str = "linear"
    lrs: tuple[float, ...] = setting(LRS, POSITIVE)
    weight_decays: tuple[float, ...] = setting(WEIGHT_DECAYS, NON_NEGATIVE)
    epochs: int = setting(40, COUNT)
    eval_every: int = setting(2, COUNT)  # validation checkpoints: every N epochs, and the last
    batch_size: int = setting(256, COUNT)
    hidden: int = setting(1024, COUNT)  # mlp
    hidden_layers: int = setting(1, COUNT)  # mlp
    seed: int = 0
    # Successive halving: from a quarter of the epochs on, at each validation checkpoint but the
    # last, only the better half of the grid (by the headline metric) trains on, with every point
    # tied with the last one kept and every point within one binomial standard error of the best
    # (val noise is no reason to drop a point); the points dropped keep the validation scores
    # they reached, and selection is over all of them. The default: on benchmarks/halving_table.py's
    # four feature sets it selects the full grid's point, in about 60% of its time
    # (docs/concepts/protocols.md).
    halving: bool = True
    # The paper's recipe (``bench.protocol.RECIPES``) sets these: ``sgd-step`` (``_AdamW``) on
    # the raw features; in an identity only where not the default
    optimizer: str = setting("adamw", when_set=True)
    standardise: bool = setting(True, when_set=True)

    def __post_init__(self) -> None:
        if self.head not in ARCHITECTURES:
            raise UsageError(f"the grid probe builds {', '.join(ARCHITECTURES)}, not {self.head!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"probe optimizer {self.optimizer!r}: use one of "
                             f"{', '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.eval_every < 1 or not self.lrs or not self.weight_decays:
            raise UsageError("probe needs epochs >= 1, eval_every >= 1 and non-empty lr/wd grids")
        check_settings(self)

    def checkpoints(self) -> list[int]:
        return checkpoints(self.epochs, self.eval_every)


class _GridHeads(nn.Module):
    """G independent heads evaluated together: (N, D) -> (G, N, C).

    ``linear`` and ``bn-linear`` keep all heads in one (G, C, D) weight (``nn.Linear``'s layout per
    head), so a step over a shared minibatch is one GEMM against its (G*C, D) view forward and one
    backward, with the softmax
    cross-entropy gradient written by hand. ``mlp`` keeps (G, fan_in, fan_out) weights per layer
    and trains through autograd. The grid axis comes first everywhere, so each grid point's
    parameters are contiguous (the optimizer's fused kernel updates them one point at a time).

    ``matmul`` is the type of the linear heads' two GEMMs (inputs and weights rounded to it,
    outputs back in float32): bfloat16 halves their time on CPUs with native bf16 (AVX512-BF16,
    AMX) and on GPUs. Weights, optimizer state, softmax and bias stay float32.
    """

    def __init__(self, groups: int, dim: int, classes: int, cfg: ProbeConfig, gen: torch.Generator,
                 matmul: torch.dtype = torch.float32):
        super().__init__()
        self.matmul = matmul
        self.linear = cfg.head != "mlp"
        # the linear heads' per-step results (logits, softmax, weight gradient), reused at every
        # step and scoring chunk: fresh ones are tens to hundreds of MB at ImageNet sizes, and
        # freed and taken again at every step they fragment the host heap (bench.heads.memory)
        self._buffers: dict[str, torch.Tensor] = {}
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        if self.linear:  # convex problem: zero init is exact
            self.weights.append(nn.Parameter(torch.zeros(groups, classes, dim)))
            self.biases.append(nn.Parameter(torch.zeros(groups, classes)))
            return
        widths = [dim] + [cfg.hidden] * cfg.hidden_layers + [classes]
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(groups, fan_in, fan_out, generator=gen) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(groups, 1, fan_out)))

    @property
    def groups(self) -> int:
        return len(self.weights[0])

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The first shape[0] rows of the reused buffer ``key`` (made, or made larger, here)."""
        buffer = self._buffers.get(key)
        if (buffer is None or buffer.dtype != dtype or buffer.shape[1:] != shape[1:]
                or len(buffer) < shape[0]):
            self._buffers.pop(key, None)
            buffer = torch.empty(shape, dtype=dtype, device=self.weights[0].device)
            self._buffers[key] = buffer
        return buffer[: shape[0]]

    def _linear_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, G, C) float32 logits of the linear heads: one GEMM against the (G*C, D) weight,
        without autograd into a reused buffer (valid until the next call)."""
        w, b = self.weights[0], self.biases[0]
        out = (None if torch.is_grad_enabled() else
               self._buffer("logits", (len(x), len(w) * w.shape[1]), self.matmul))
        flat = torch.mm(x.to(self.matmul), w.view(-1, w.shape[2]).to(self.matmul).T, out=out)
        return flat.view(len(x), *b.shape).float().add_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear:
            return self._linear_logits(x).transpose(0, 1)
        h = x.unsqueeze(0).expand(self.groups, -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        return h

    @torch.no_grad()
    def linear_gradients(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Gradients of the sum over heads of each head's mean cross-entropy, by hand.

        d loss / d logits = (softmax - onehot) / B, shared inputs: grad W = that^T @ x, one GEMM
        whose (G*C, D) output is the weights' (G, C, D) layout.
        """
        logits = self._linear_logits(x)
        # torch.softmax's kernel, into a reused buffer
        delta = torch.ops.aten._softmax.out(logits, -1, False,
                                            out=self._buffer("softmax", logits.shape, logits.dtype))
        rows = torch.arange(len(x), device=x.device)
        delta[rows, :, y] -= 1.0
        delta /= len(x)
        w = self.weights[0]
        # one buffer for every step: a fresh (G*C, D) result each step is a fresh mapping of
        # hundreds of MB at ImageNet sizes, page-faulted in again at every step
        grad = self._buffer("grad", (len(w) * w.shape[1], w.shape[2]), self.matmul)
        flat = torch.mm(delta.view(len(x), -1).to(self.matmul).T, x.to(self.matmul), out=grad)
        return [flat.float().view_as(w), delta.sum(0)]

    def keep(self, index: torch.Tensor) -> None:
        """Keep only grid points ``index`` (successive halving). New parameters, not resized
        ones: autograd remembers a parameter's shape. The buffers go first: the grid's old and
        new state are both alive for a moment."""
        self._buffers.clear()
        for params in (self.weights, self.biases):
            for i, p in enumerate(params):
                params[i] = nn.Parameter(p.detach().index_select(0, index))


OPTIMIZERS = ("adamw", "sgd", "sgd-step")
STEP_EPOCHS, STEP_GAMMA = 7, 0.1  # sgd-step: the paper's StepLR(7, 0.1), stepped per epoch
STATE_BYTES = 4 * 4  # float32 bytes per weight: the weight, two moments and its gradient
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # AdamW's; BETA1 is SGD's momentum too


class _AdamW:
    """AdamW over the grid's stacked parameters, each grid point at its own lr and decay.

    Weights decay, biases do not; the learning rate follows a cosine schedule over all steps.
    ``optimizer="sgd"``: SGD with momentum 0.9 and decoupled decay instead. From zero weights
    its first steps move a linear head toward the class means; Adam's per-coordinate scaling
    moves every weight by about lr whatever its gradient, which on a few images per class
    (few-shot) amplifies the dimensions that barely vary. ``optimizer="sgd-step"``: the paper's
    recipe, torch's ``SGD(momentum=0)`` (decay, if any, added to the gradient) with
    ``StepLR(7, 0.1)`` stepped once per epoch of ``steps_per_epoch`` steps, no cosine.
    The optimizer touches every grid weight each step, so on a CPU its passes over memory cost as
    much as the GEMMs: the weights of each grid point (a contiguous slice of the (G, ...) stack)
    are updated by torch's fused AdamW kernel, the one behind ``torch.optim.AdamW(fused=True)``
    (one pass instead of eight), and the small biases by the same update written in torch ops.
    """

    def __init__(self, heads: _GridHeads, lrs: torch.Tensor, wds: torch.Tensor, total_steps: int,
                 optimizer: str = "adamw", steps_per_epoch: int = 1):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self.sgd, self.step_lr = optimizer == "sgd", optimizer == "sgd-step"
        self.steps_per_epoch = steps_per_epoch
        self.heads = heads
        self._state()
        device = heads.weights[0].device
        self.lrs, self.wds = lrs.to(device, torch.float32), wds.to(device, torch.float32)
        self.point_lrs, self.point_wds = lrs.tolist(), wds.tolist()  # the fused kernel's scalars
        self.total_steps = total_steps
        self.step_count = 0
        self.step_tensor = torch.zeros((), device=device)  # the fused kernel's bias correction

    def _state(self, index: torch.Tensor | None = None) -> None:
        if index is None:
            self.moments = [(torch.zeros_like(p), torch.zeros_like(p))
                            for p in self.heads.parameters()]
        else:
            self.moments = [(m.index_select(0, index), v.index_select(0, index))
                            for m, v in self.moments]

    @staticmethod
    def _per_point(values: torch.Tensor, dims: int) -> torch.Tensor:
        """``values`` (one per grid point) shaped to broadcast along a (G, ...) parameter."""
        return values.view(-1, *[1] * (dims - 1))

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.step_count += 1
        scale = 0.5 * (1 + math.cos(math.pi * (self.step_count - 1) / self.total_steps))
        params, weights = list(self.heads.parameters()), len(self.heads.weights)
        if self.step_lr:
            epoch = (self.step_count - 1) // self.steps_per_epoch
            scale = STEP_GAMMA ** (epoch // STEP_EPOCHS)
            for i, (p, g) in enumerate(zip(params, grads)):
                lr = self._per_point(self.lrs, p.dim())
                if i < weights:
                    g = g + self._per_point(self.wds, p.dim()) * p
                p.addcmul_(g, lr, value=-scale)
            return
        if self.sgd:
            for i, (p, g, (m, _)) in enumerate(zip(params, grads, self.moments)):
                lr = self._per_point(self.lrs, p.dim())
                if i < weights:
                    p.mul_(1 - scale * lr * self._per_point(self.wds, p.dim()))
                m.mul_(BETA1).add_(g)
                p.addcmul_(m, lr, value=-scale)
            return
        self._adamw_weights(params[:weights], grads[:weights], self.moments[:weights], scale)
        self._adam_biases(params[weights:], grads[weights:], self.moments[weights:], scale)

    def _adamw_weights(self, params, grads, moments, scale: float) -> None:
        """Decayed AdamW, torch's fused kernel over each grid point's contiguous slice."""
        self.step_tensor.fill_(self.step_count)
        for g, (lr, wd) in enumerate(zip(self.point_lrs, self.point_wds)):
            torch._fused_adamw_(
                [p[g] for p in params], [d[g] for d in grads], [m[g] for m, _ in moments],
                [v[g] for _, v in moments], [], [self.step_tensor] * len(params),
                lr=scale * lr, beta1=BETA1, beta2=BETA2, weight_decay=wd, eps=EPS,
                amsgrad=False, maximize=False)

    def _adam_biases(self, params, grads, moments, scale: float) -> None:
        """The same update without decay, all grid points at once: biases are small.
        m_hat / (sqrt(v_hat) + EPS) == c * m / (sqrt(v) + EPS * sqrt(1 - BETA2^t)),
        c = sqrt(1 - BETA2^t) / (1 - BETA1^t): the bias corrections become two scalars."""
        root = math.sqrt(1 - BETA2**self.step_count)
        c = root / (1 - BETA1**self.step_count)
        for p, g, (m, v) in zip(params, grads, moments):
            m.lerp_(g, 1 - BETA1)
            v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
            p.addcdiv_(m * self._per_point(self.lrs, p.dim()), torch.sqrt(v).add_(EPS * root),
                       value=-scale * c)

    def keep(self, index: torch.Tensor) -> None:
        """Follow ``_GridHeads.keep`` (call it first): its new parameters, their kept state."""
        self._state(index)
        self.lrs, self.wds = self.lrs[index], self.wds[index]
        kept = index.tolist()
        self.point_lrs = [self.point_lrs[i] for i in kept]
        self.point_wds = [self.point_wds[i] for i in kept]


class _Normaliser:
    """Standardisation with fixed statistics, BatchNorm1d(affine=False) semantics, or none.

    Fixed statistics come from one streaming pass over the training rows (float64 sums,
    ``bench.heads.streaming.standardisation``); each minibatch is standardised as it is read,
    with no epsilon, so the numbers do not depend on the features' overall scale, and a
    dimension constant on the training rows is 0 (also where a test row differs in it).
    BatchNorm (``bn-linear``) keeps its epsilon, made relative: its inputs are centred, constant
    dimensions zeroed and all divided by one number, the root mean variance of the others, so
    they reach it with unit average variance at any scale. ``standardise=False``: the inputs are
    used as given (already normalised by the caller).
    """

    def __init__(self, views: ViewCycle[Batches], batchnorm: bool, standardise: bool = True):
        """``views``: the training rows (each augmented view of them: ``ViewCycle``)."""
        self.batchnorm, self.standardise = batchnorm, standardise
        if not standardise:
            return
        if not batchnorm:  # fixed: computed once, not per step (over every view trained on)
            self.mean, self.scale = standardisation(views)
            return
        mean, var = moments(views)  # running statistics: updated by every minibatch
        self.mean = mean.float()
        if batchnorm:
            varying = var > 0
            unit = var[varying].mean().sqrt() if bool(varying.any()) else var.new_ones(())
            self.scale = (varying.double() / unit).float()
            self.running_mean = torch.zeros_like(self.mean)
            self.running_var = torch.ones_like(self.mean)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float()
        if not self.standardise:
            return x
        x = (x - self.mean).mul_(self.scale)
        if not self.batchnorm:
            return x
        if train:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, 0.1)
                self.running_var.lerp_(x.var(0, unbiased=True) if len(x) > 1 else var, 0.1)
            return (x - mean) / torch.sqrt(var + 1e-5)
        return (x - self.running_mean) / torch.sqrt(self.running_var + 1e-5)


@dataclass
class GridModel:
    """The grid's trained heads and their input normalisation.

    ``points[g]`` is the index, in the grid passed to ``train_grid``, of head g: all of them, or
    the survivors of successive halving.
    """

    heads: _GridHeads
    norm: _Normaliser
    points: list[int]

    @torch.no_grad()
    def chunk_logits(self, batches: Batches) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, (G, n, C) logits of every kept head), chunk by chunk of the split."""
        for start, chunk in batches.chunks():
            yield start, self.heads(self.norm(chunk, train=False))

    def top(self, batches: Batches) -> torch.Tensor:
        """(G, N, 5) best classes of every kept head (``top_classes``): never (G, N, C)."""
        return torch.cat([top_classes(s) for _, s in self.chunk_logits(batches)], dim=1)

    def logits(self, batches: Batches) -> torch.Tensor:
        """(G, N, C) logits of every kept head (a refit's single head on test), written chunk
        by chunk into one tensor."""
        out = None
        for start, scores in self.chunk_logits(batches):
            if out is None:
                out = scores.new_empty((scores.shape[0], batches.n, scores.shape[2]))
            out[:, start : start + scores.shape[1]] = scores
        return out


Checkpoint = Callable[[GridModel], "Sequence[float] | None"]  # val scores for halving


@dataclass
class GridState:
    """Where a grid's training stands between two steps: what resumes it exactly (``--online``
    jobs, ``bench.run.online``). ``epoch`` (1-based) is in progress with ``step`` of its
    minibatches done; ``generator`` is the order generator's state at that epoch's start (its
    order is drawn again, the steps done are skipped); ``records``: the caller's validation
    records so far."""

    epoch: int
    step: int
    generator: torch.Tensor
    points: list[int]
    params: list[torch.Tensor]
    moments: list[tuple[torch.Tensor, torch.Tensor]]
    step_count: int
    norm: dict[str, torch.Tensor]
    records: list[dict[str, float]]


class Resume(Protocol):
    """Saves and restores a grid's training (``GridState``) by phase (``search``, ``refit``)."""

    def restored(self, phase: str) -> GridState | None: ...

    def step(self, phase: str, snapshot: Callable[[], GridState], boundary: bool = False
             ) -> None: ...


def _snapshot(model: GridModel, optimizer: _AdamW, epoch: int, step: int,
              generator: torch.Tensor, records: list[dict[str, float]]) -> GridState:
    return GridState(
        epoch, step, generator.clone(), list(model.points),
        [p.detach().clone() for p in model.heads.parameters()],
        [(m.clone(), v.clone()) for m, v in optimizer.moments], optimizer.step_count,
        {k: v.clone() for k, v in vars(model.norm).items() if isinstance(v, torch.Tensor)},
        list(records))


def _restore(state: GridState, model: GridModel, optimizer: _AdamW, gen: torch.Generator,
             records: list[dict[str, float]]) -> None:
    """``state`` into a freshly built grid (its full grid: kept points are selected first)."""
    if state.points != model.points:
        kept = torch.tensor(state.points, device=model.heads.weights[0].device)
        model.heads.keep(kept)
        optimizer.keep(kept)
        model.points = list(state.points)
    with torch.no_grad():
        for p, saved in zip(model.heads.parameters(), state.params):
            p.copy_(saved)
    optimizer.moments = [(m.clone(), v.clone()) for m, v in state.moments]
    optimizer.step_count = state.step_count
    for k, v in state.norm.items():
        setattr(model.norm, k, v.clone())
    gen.set_state(state.generator)
    records[:] = state.records


def train_grid(
    x: torch.Tensor | Batches | ViewCycle[Batches],
    y: torch.Tensor | None,
    num_classes: int,
    lrs: torch.Tensor,
    wds: torch.Tensor,
    cfg: ProbeConfig,
    evaluate_at: dict[int, Checkpoint],
    stop_at: int | None = None,
    progress: bool = False,
    matmul: torch.dtype = torch.float32,
    standardise: bool = True,
    optimizer: str = "adamw",
    val_size: int = 0,
    resume: Resume | None = None,
    phase: str = "search",
    records: list[dict[str, float]] | None = None,
) -> GridModel:
    """Train G = len(lrs) heads at once on (x, y), head g at (lrs[g], wds[g]).

    ``x``: the training rows as ``bench.heads.streaming.Batches`` (labels inside, ``y`` None;
    a ``ViewCycle`` of them for ``--views``: epoch e reads view e mod V, statistics over all),
    or a tensor where it trains with ``y`` its labels. Every head sees the same minibatches
    (``bench.heads.streaming``'s order, seeded by ``cfg.seed``) and the same cosine schedule
    over ``cfg.epochs``; training stops after ``stop_at`` epochs (default all). At each epoch in
    ``evaluate_at`` the callback gets the model; with ``cfg.halving`` it returns one validation
    score per kept head (``model.points``, by the headline metric, in percent) and, from a
    quarter of the epochs on and except at the last epoch, only ``_survivors`` train on;
    ``val_size`` (the number of validation images) sets their noise margin. Deterministic for a
    seed, and the same numbers whether ``x`` is in memory or streamed. ``matmul``: the linear
    heads' GEMM type (``_GridHeads``); MLP heads train in float32. ``standardise=False``: ``x``
    is used as given by ``linear`` and ``mlp`` heads (normalised by the caller, e.g. few-shot).
    ``optimizer``: ``adamw``, ``sgd`` (with momentum) or ``sgd-step`` (the paper's; ``_AdamW``).
    ``resume``: where training of ``phase`` restarts (``Resume.restored``) and what hears of
    each step and each finished epoch (``Resume.step``); ``records``, the caller's validation
    records, saved and restored with it. The source must then skip the steps of a restarted
    epoch (``x(epoch).skip``: ``bench.run.online``).
    """
    if not isinstance(x, ViewCycle):
        one = x if isinstance(x, Batches) else Batches.holding(x, y, cfg.batch_size)
        x = ViewCycle(lambda _: one)
    views, batches = x, x(0)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = batches.device
    heads = _GridHeads(len(lrs), batches.dim, num_classes, cfg, gen, matmul).to(device)
    norm = _Normaliser(views, batchnorm=cfg.head == "bn-linear", standardise=standardise)
    model = GridModel(heads, norm, list(range(len(lrs))))
    steps_per_epoch = math.ceil(batches.n / cfg.batch_size)
    optimizer = _AdamW(heads, lrs, wds, cfg.epochs * steps_per_epoch, optimizer, steps_per_epoch)
    last = stop_at or cfg.epochs
    records = [] if records is None else records
    first, skip = 1, 0
    state = resume.restored(phase) if resume is not None else None
    if state is not None:
        _restore(state, model, optimizer, gen, records)
        first, skip = state.epoch, state.step
    from tqdm.auto import tqdm

    for epoch in tqdm(range(first, last + 1), desc=f"probe {cfg.head} x{len(lrs)}",
                      unit="epoch", disable=not progress, leave=False):
        started = gen.get_state()
        source = views(epoch - 1)
        if skip:  # the steps of this epoch trained before the restart
            if not hasattr(source, "skip"):
                raise ValueError("only a source that skips steps (bench.run.online) resumes "
                                 "within an epoch")
            source.skip = skip
        for step, (raw, labels) in enumerate(source.epoch(gen), start=skip + 1):
            batch = norm(raw, train=True)
            if heads.linear:
                grads = heads.linear_gradients(batch.to(matmul), labels)
            else:
                logits = heads(batch)
                loss = nn.functional.cross_entropy(logits.reshape(-1, num_classes),
                                                   labels.repeat(heads.groups))
                heads.zero_grad(set_to_none=True)
                (loss * heads.groups).backward()  # sum over heads of each head's mean loss
                grads = [p.grad for p in heads.parameters()]
            optimizer.step(grads)
            if resume is not None:
                resume.step(phase, partial(_snapshot, model, optimizer, epoch, step, started,
                                           records))
        skip = 0
        if epoch in evaluate_at:
            scores = evaluate_at[epoch](model)
            if (cfg.halving and epoch < last and 4 * epoch >= cfg.epochs and scores is not None
                    and len(model.points) > 1):
                kept = torch.tensor(_survivors(scores, val_size), device=device)
                heads.keep(kept)
                optimizer.keep(kept)
                model.points = [model.points[g] for g in kept.tolist()]
        if resume is not None:
            resume.step(phase, partial(_snapshot, model, optimizer, epoch + 1, 0,
                                       gen.get_state(), records), boundary=True)
    return model


def _survivors(scores: Sequence[float], val_size: int) -> list[int]:
    """Indices of the better half of ``scores`` (percentages on ``val_size`` images), of every
    score equal to the worst kept one, and of every score within one binomial standard error of
    the best, 100 * sqrt(p (1 - p) / val_size): neither the grid's order nor a difference of a
    few validation images is a reason to drop a point (a late-improving point one image behind
    the leader at the cut goes on to win the full grid on benchmarks/halving_table.py's
    100-class set)."""
    ranked = sorted(scores, reverse=True)
    best = ranked[0] / 100
    noise = 100 * math.sqrt(best * (1 - best) / val_size) if val_size else 0.0
    threshold = min(ranked[math.ceil(len(scores) / 2) - 1], ranked[0] - noise)
    return [g for g, score in enumerate(scores) if score >= threshold]


REFIT_ON = ("train+val", "train")


class GridProbeTrainer:
    """The batched grid on pooled vectors, as a ``bench.protocol`` trainer.

    ``refit_on="train"`` retrains the selected point on train alone: few-shot probes validate on
    the rest of train, which must not leak into the k-shot head. ``standardise=False``: features
    come normalised (few-shot normalises rows itself: the k shots cannot estimate variances).
    ``standardise`` and ``optimizer``: None, the settings' own (``ProbeConfig``).
    """

    def __init__(self, cfg: ProbeConfig, device: torch.device | str, precision: PrecisionPolicy,
                 progress: bool = False, groups=None, refit_on: str = "train+val",
                 standardise: bool | None = None, optimizer: str | None = None):
        if refit_on not in REFIT_ON:
            raise ValueError(f"refit_on must be one of {', '.join(REFIT_ON)}, got {refit_on!r}")
        self.cfg, self.device, self.progress = cfg, torch.device(device), progress
        self.refit_splits = refit_on.split("+")
        self.standardise = cfg.standardise if standardise is None else standardise
        self.optimizer = cfg.optimizer if optimizer is None else optimizer
        self.store = getattr(torch, require(precision).probe_inputs)
        # The policy's head type: bf16 GEMMs for the linear grid's search (``_GridHeads``),
        # where G heads make them the cost; the selected point's refit is one head, in float32.
        self.matmul = torch.bfloat16 if precision.heads == "bf16" else torch.float32
        self.resume: Resume | None = None  # restartable training (``--online`` jobs)

    def memory(self, data: ProbeData) -> MemoryPlan:
        """How the grid reads each split within the run's memory budget (``grid_memory``)."""
        compute = torch.empty(0, dtype=self.store).element_size()
        return grid_memory(self.cfg, inputs_of(data, compute), data.memory_budget,
                           "+".join(self.refit_splits))

    def _batches(self, data: ProbeData, splits: Sequence[str], mode: str,
                 view: int = 0) -> Batches:
        """The rows of ``splits`` (one after another; train's view ``view``) as the grid reads
        them, in ``mode``."""
        labels = np.concatenate([np.asarray(data.labels[s]) for s in splits])
        return Batches(Rows([data.split_features(s, view) for s in splits]), labels,
                       self.cfg.batch_size, self.device, self.store, mode=mode)

    def _views(self, data: ProbeData, splits: Sequence[str], mode: str) -> ViewCycle[Batches]:
        """``_batches`` of each augmented view of train (``ProbeData.views``), one at a time."""
        return ViewCycle(lambda view: self._batches(data, splits, mode, view), data.view_count)

    def search(self, data: ProbeData) -> list[dict[str, float]]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        plan = self.memory(data)
        train = self._views(data, ["train"], plan.mode("search", "train"))
        val = self._batches(data, ["val"], plan.mode("search", "val"))
        grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
        records: list[dict[str, float]] = []

        def record(epoch: int) -> Checkpoint:
            def at(model: GridModel) -> list[float]:
                scores = []
                for point, p in zip(model.points, top_predictions(
                        model.top(val), data.labels["val"], data.num_classes)):
                    lr, wd = grid[point]
                    m = p.metrics()
                    records.append({"lr": lr, "weight_decay": wd, "epochs": epoch, **m})
                    scores.append(m[data.headline])
                return scores
            return at

        train_grid(train, None, data.num_classes, torch.tensor([g[0] for g in grid]),
                   torch.tensor([g[1] for g in grid]), cfg,
                   {e: record(e) for e in cfg.checkpoints()}, progress=self.progress,
                   matmul=self.matmul, standardise=self.standardise,
                   optimizer=self.optimizer, val_size=val.n, resume=self.resume,
                   records=records)
        return records

    def refit_predict(self, data: ProbeData, point: dict[str, float]) -> torch.Tensor:
        torch.manual_seed(self.cfg.seed)
        plan, refit = self.memory(data), "+".join(self.refit_splits)
        model = train_grid(self._views(data, self.refit_splits, plan.mode("refit", refit)),
                           None, data.num_classes,
                           torch.tensor([point["lr"]]), torch.tensor([point["weight_decay"]]),
                           self.cfg, {}, stop_at=int(point["epochs"]), progress=self.progress,
                           standardise=self.standardise, optimizer=self.optimizer,
                           resume=self.resume, phase="refit")
        return model.logits(self._batches(data, ["test"], plan.mode("test", "test")))[0]


def grid_memory(cfg: ProbeConfig, inputs: Inputs, budget: int | None,
                refit: str = "train+val") -> MemoryPlan:
    """The grid's reads within ``budget`` (``bench.heads.memory``): train, with one minibatch of
    val kept free, then val in what is left; the refit on ``refit``; then test."""
    return MemoryPlan.of(budget, grid_sources(cfg, inputs, refit))


def grid_sources(cfg: ProbeConfig, inputs: Inputs, refit: str = "train+val"
                 ) -> dict[str, list[Source]]:
    """The sources the grid reads in each phase, in order (``grid_memory``)."""
    def source(name: str) -> Source:
        return batches_source(name, inputs.rows_of(name), inputs.dims, inputs.stored,
                              inputs.compute, cfg.batch_size)

    return {"search": [source("train"), source("val")], "refit": [source(refit)],
            "test": [source("test")]}


def grid_state(cfg: ProbeConfig, inputs: Inputs) -> tuple[int, str]:
    """Bytes of the grid heads' weights, AdamW moments and gradients (float32), and how counted."""
    points, dims, classes = len(cfg.lrs) * len(cfg.weight_decays), inputs.dims, inputs.classes
    if cfg.head == "mlp":
        weights = (dims * cfg.hidden + (cfg.hidden_layers - 1) * cfg.hidden * cfg.hidden
                   + cfg.hidden * classes)
        return points * weights * STATE_BYTES, f"{points} x {weights:,} weights x 4 B x 4"
    return (points * (dims + 1) * classes * STATE_BYTES,
            f"{points} x {classes} x {dims + 1} x 4 B x 4")


def fit_probe(
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    num_classes: int,
    cfg: ProbeConfig,
    headline: str = "top1",
    device: torch.device | str = "cpu",
    progress: bool = False,
    precision: PrecisionPolicy = FP32,
) -> ProbeResult:
    """``bench.protocol.evaluate`` with the batched grid: select on val, retrain, test once.

    ``precision``: the ``bench.precision.PrecisionPolicy`` (default fp32 on any device)."""
    trainer = GridProbeTrainer(cfg, device, precision=precision, progress=progress)
    return evaluate(trainer, ProbeData(features, labels, num_classes), headline)
