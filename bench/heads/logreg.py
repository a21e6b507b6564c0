"""CLIP's linear-probe protocol: multinomial logistic regression by full-batch L-BFGS, its inverse
regularisation C searched on validation, every C of a search round solved in one batch.

Objective of each C (scikit-learn's ``LogisticRegression(solver="lbfgs")`` in the mean form its
code minimises, so its ``tol`` means the same here), bias unpenalised:

    f(W, b) = mean_i CE(W x_i + b, y_i) + ||W||^2 / (2 C n)

**Protocol followed.** CLIP (Radford et al. 2021, appendix A.3) fits scikit-learn's L-BFGS
``LogisticRegression`` (at most 1,000 iterations) on the raw penultimate features and searches
the L2 strength over 1e-6..1e6 on a validation split by a parametric binary search: the seven
values 1e-6, 1e-4, ..., 1e6 first, then the interval around the peak halved until 8 steps per
decade; the selected value is refit on train+val and scored on test once. This head does the
same: ``cs`` is the first round (CLIP's seven values; as C = 1/lambda the range is the same),
each of ``refinements`` rounds (CLIP's 4) solves the geometric midpoints between the best C so
far and its nearest solved neighbours, which on CLIP's grid visits exactly CLIP_benchmark's
``find_peak`` indices on its 97-value grid. CLIP_benchmark runs that search but trains an AdamW
linear layer (lr 0.1, 10 epochs, minibatches) on L2-normalised features instead of L-BFGS;
``normalisation="l2"`` gives its features, ``"standardise"`` scikit-learn's ``StandardScaler``
(train statistics), ``"none"`` (the default) CLIP's raw features. Differences from scikit-learn's
solver: float32 (float64 sums), a backtracking Armijo line search where scipy's L-BFGS-B uses
More-Thuente, and a stop when the relative decrease falls under ``FTOL`` (float32's noise) as
well as scikit-learn's ``max |gradient| <= tol``; ties in validation go to the smaller C.

**Batched and warm-started.** All C values of a round share every pass over the features: one
(G, K, D + 1) weight (the bias as a last column against a column of ones), one GEMM per chunk of
rows for all logits and one for all gradients. The L-BFGS state is per point (curvature pairs,
step sizes, convergence), and converged points leave the GEMMs. The first round starts from zero;
each refinement point starts from the solution of its nearest solved neighbour (the smaller C,
stronger regularisation, on ties: the path's direction), so the rounds after the first converge in
a fraction of the iterations. The refit starts from zero, as scikit-learn's would (starting it from
the search's solution of its C saved one iteration in seven on the 10k set: not worth the state).

**Streamed.** A split's rows are read in chunks of ``CHUNK`` rows from a numpy array or any
(memory-mapped) array with ``take``; a split whose float32 copy fits ``ProbeData.memory_budget``
(or any split when it is None) is normalised once and kept on the device, and otherwise every
pass reads its chunks again. The chunks are the same either way, so are the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bench.metrics import Predictions
from bench.precision import FP32, PrecisionPolicy
from bench.protocol import ProbeData, ProbeResult, evaluate, top_classes
from bench.ranges import HEAD_RANGES, check_ranges

CLIP_CS = (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6)  # CLIP's first round (C = 1 / lambda)
NORMALISATIONS = ("none", "standardise", "l2")
CHUNK = 4096  # rows per pass step: fixed, so streamed and resident passes add up identically
FTOL = 1e-9  # relative decrease under which a point stops (float32 logits' noise is ~1e-8)
ARMIJO = 1e-4  # sufficient decrease of the line search
MAX_LINE_SEARCH = 20  # trial steps before a point stops where it is (it cannot decrease further)


@dataclass
class LogRegConfig:
    head: str = "logreg"
    cs: tuple[float, ...] = CLIP_CS  # the first round of inverse regularisation strengths
    refinements: int = 4  # bisection rounds around the best C (CLIP: 4, to 8 steps per decade)
    max_iter: int = 1000  # L-BFGS iterations per C (CLIP's and scikit-learn's max_iter)
    tol: float = 1e-4  # stop when max |gradient| <= tol (scikit-learn's tol)
    history: int = 10  # L-BFGS curvature pairs kept (scipy's maxcor)
    normalisation: str = "none"  # CLIP's raw features; "standardise" (train statistics), "l2"
    seed: int = 0  # nothing is random; kept because every result has a seed

    def __post_init__(self) -> None:
        if not self.cs:
            raise ValueError("the C grid (cs) is empty: give at least one C, e.g. cs=[0.1,1,10]")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation {self.normalisation!r}: use one of "
                             f"{', '.join(NORMALISATIONS)}")
        check_ranges(asdict(self), HEAD_RANGES, f"head {self.head!r}:")


@dataclass
class _Normaliser:
    """The features' transform, fitted on the rows a model trains on."""

    kind: str
    mean: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "l2":
            return torch.nn.functional.normalize(x, dim=1)
        if self.kind == "standardise":
            return (x - self.mean) / self.scale
        return x


def _read(array: Any, start: int, stop: int) -> np.ndarray:
    """Rows start..stop as (rows, D): a slice of a numpy array, else ``take`` (a memory map's
    shards read for just those rows)."""
    rows = array[start:stop] if isinstance(array, np.ndarray) else array.take(
        np.arange(start, stop))
    return np.asarray(rows).reshape(stop - start, -1)


class _Rows:
    """The rows of one or more feature arrays (train, or train + val), as chunks of ``CHUNK``
    normalised float32 rows with a column of ones, on the device: kept there when they fit the
    budget, read from the arrays at every pass otherwise."""

    def __init__(self, parts: Sequence[Any], device: torch.device, budget: int | None,
                 norm: _Normaliser):
        self.parts, self.device, self.norm = list(parts), device, norm
        self.n = sum(len(p) for p in self.parts)
        self.dim = int(np.prod(self.parts[0].shape[1:]))
        self.resident: list[torch.Tensor] | None = None
        if budget is None or 4 * self.n * (self.dim + 1) <= budget:
            self.resident = list(self._read_chunks())

    def _read_chunks(self) -> Iterator[torch.Tensor]:
        for part in self.parts:
            for start in range(0, len(part), CHUNK):
                x = _read(part, start, min(start + CHUNK, len(part)))
                x = self.norm(torch.as_tensor(x).to(self.device, torch.float32))
                yield torch.cat([x, torch.ones(len(x), 1, device=self.device)], dim=1)

    def chunks(self) -> Iterator[torch.Tensor]:
        return iter(self.resident) if self.resident is not None else self._read_chunks()


def fit_normaliser(kind: str, parts: Sequence[Any], device: torch.device) -> _Normaliser:
    """``kind``'s transform; standardisation statistics from one pass (float64 sums), zero
    variances scaled by 1 (scikit-learn's ``StandardScaler``)."""
    if kind != "standardise":
        return _Normaliser(kind)
    total = sq = None
    n = 0
    for part in parts:
        for start in range(0, len(part), CHUNK):
            x = torch.as_tensor(_read(part, start, min(start + CHUNK, len(part)))).to(
                device, torch.float64)
            total = x.sum(0) if total is None else total + x.sum(0)
            sq = (x * x).sum(0) if sq is None else sq + (x * x).sum(0)
            n += len(x)
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt()
    std[std == 0] = 1.0
    return _Normaliser(kind, mean.float(), std.float())


def _labels(parts: Sequence[Any], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.concatenate([np.asarray(p) for p in parts]), dtype=torch.long,
                           device=device)


@dataclass
class Objective:
    """Each point's f and gradient on ``rows``: one pass over its chunks for all points."""

    rows: _Rows
    labels: torch.Tensor
    classes: int
    passes: int = 0  # full passes over the rows (the cost of a solve)

    def __call__(self, theta: torch.Tensor, inv_cn: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """theta (A, K, D + 1), inv_cn (A,) = 1 / (C n): f (A,) float64, gradient like theta."""
        self.passes += 1
        a, k, d1 = theta.shape
        flat = theta.reshape(a * k, d1)
        loss = torch.zeros(a, dtype=torch.float64, device=theta.device)
        grad = torch.zeros_like(flat)
        offset = 0
        for x in self.rows.chunks():
            y = self.labels[offset : offset + len(x)]
            offset += len(x)
            rows = torch.arange(len(x), device=x.device)
            logp = torch.log_softmax((x @ flat.T).view(len(x), a, k), dim=-1)
            loss -= logp[rows, :, y].sum(0, dtype=torch.float64)
            delta = logp.exp_()
            delta[rows, :, y] -= 1.0
            grad.addmm_(delta.view(len(x), a * k).T, x)
        n = self.rows.n
        weights = theta[..., :-1]
        grad = grad.view(a, k, d1).div_(n)
        grad[..., :-1] += inv_cn.view(-1, 1, 1).float() * weights
        penalty = 0.5 * inv_cn * weights.double().square().sum((1, 2))
        return loss / n + penalty, grad


@dataclass
class Solution:
    """Each point's weights (G, K, D + 1), objective and whether it met ``tol``."""

    theta: torch.Tensor
    loss: torch.Tensor
    iterations: list[int]
    converged: list[bool]
    passes: int = 0


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-point inner products of (G, ...) tensors, in float64."""
    return (a * b).flatten(1).sum(1, dtype=torch.float64)


def _per_point(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)


def lbfgs(objective: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
          theta: torch.Tensor, cs: Sequence[float], n: int, cfg: LogRegConfig,
          progress: bool = False) -> Solution:
    """Minimise each point's objective from ``theta`` (G, K, D + 1), point g at C = cs[g].

    Batched L-BFGS: one shared ring of ``cfg.history`` slots holds each point's curvature pairs
    (a pair a point skipped has rho 0 and counts for nothing in the two-loop recursion), each
    point has its own initial scaling, step size and stop; the objective is evaluated only for
    the points still searching. A point stops at max |gradient| <= tol, at a relative decrease
    under ``FTOL``, when no step decreases it, or at ``max_iter``.
    """
    from tqdm.auto import tqdm

    g_count, m = len(cs), cfg.history
    inv_cn = torch.tensor([1.0 / (c * n) for c in cs], dtype=torch.float64, device=theta.device)
    theta = theta.clone()
    loss, grad = objective(theta, inv_cn)
    s_hist = torch.zeros(m, *theta.shape, device=theta.device)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(m, g_count, dtype=torch.float64, device=theta.device)
    gamma = torch.ones(g_count, dtype=torch.float64, device=theta.device)
    iterations = [0] * g_count
    active = (grad.flatten(1).abs().amax(1) > cfg.tol).tolist()
    converged = [not a for a in active]
    bar = tqdm(total=cfg.max_iter, desc=f"logreg L-BFGS x{g_count} C", unit="it",
               disable=not progress, leave=False)
    for step in range(cfg.max_iter):
        if not any(active):
            break
        bar.update(1)
        direction = _two_loop(grad, s_hist, y_hist, rho, gamma, step, m)
        slope = _dot(grad, direction)
        uphill = slope >= 0  # float noise: restart that point from steepest descent
        if bool(uphill.any()):
            direction[uphill] = -grad[uphill]
            rho[:, uphill] = 0.0
            slope = _dot(grad, direction)
        t = torch.ones(g_count, dtype=torch.float64, device=theta.device)
        if step == 0:  # scipy's first step: unit length along -gradient
            t = 1.0 / direction.flatten(1).norm(dim=1).double().clamp_min(1e-30)
        new_theta, new_loss, new_grad, accepted = _line_search(
            objective, theta, loss, direction, slope, t, inv_cn, active)
        slot = step % m
        s_hist[slot].zero_()
        y_hist[slot].zero_()
        rho[slot] = 0.0
        for g in range(g_count):
            if not active[g]:
                continue
            if not accepted[g]:  # no decrease left at float32's precision: stop where it is
                active[g] = False
                continue
            iterations[g] += 1
            s, y = new_theta[g] - theta[g], new_grad[g] - grad[g]
            sy = float(_dot(s[None], y[None]))
            if sy > 1e-12 * float(_dot(y[None], y[None])) and sy > 0:
                s_hist[slot, g], y_hist[slot, g] = s, y
                rho[slot, g] = 1.0 / sy
                gamma[g] = sy / float(_dot(y[None], y[None]))
            decrease = float(loss[g] - new_loss[g])
            scale = max(abs(float(loss[g])), abs(float(new_loss[g])), 1.0)
            theta[g], loss[g], grad[g] = new_theta[g], new_loss[g], new_grad[g]
            if float(grad[g].abs().max()) <= cfg.tol:
                active[g], converged[g] = False, True
            elif decrease <= FTOL * scale:
                active[g] = False
    bar.close()
    return Solution(theta, loss, iterations, converged)


def _two_loop(grad: torch.Tensor, s_hist: torch.Tensor, y_hist: torch.Tensor, rho: torch.Tensor,
              gamma: torch.Tensor, step: int, m: int) -> torch.Tensor:
    """-H grad for every point: the L-BFGS two-loop recursion over the ring, newest pair first."""
    q = grad.clone()
    slots = [(step - 1 - i) % m for i in range(min(step, m))]
    alphas = []
    for j in slots:
        alpha = rho[j] * _dot(s_hist[j], q)
        q -= _per_point(alpha, q) * y_hist[j]
        alphas.append(alpha)
    r = _per_point(gamma, q) * q
    for j, alpha in zip(reversed(slots), reversed(alphas)):
        beta = rho[j] * _dot(y_hist[j], r)
        r += _per_point(alpha - beta, r) * s_hist[j]
    return -r


def _line_search(objective, theta, loss, direction, slope, t, inv_cn, active):
    """Backtracking (Armijo, quadratic interpolation) for every active point at once; a trial
    evaluates only the points still searching. Returns the new theta, f, gradient, and which
    points found a sufficient decrease."""
    new_theta, new_loss, new_grad = theta.clone(), loss.clone(), torch.zeros_like(theta)
    accepted = [False] * len(active)
    searching = [g for g, a in enumerate(active) if a]
    for _ in range(MAX_LINE_SEARCH):
        if not searching:
            break
        index = torch.tensor(searching, device=theta.device)
        step = _per_point(t[index], theta)
        trial = theta[index] + step * direction[index]
        f, grad = objective(trial, inv_cn[index])
        still = []
        for i, g in enumerate(searching):
            expected = ARMIJO * float(t[g]) * float(slope[g])
            if float(f[i]) <= float(loss[g]) + expected:
                new_theta[g], new_loss[g], new_grad[g] = trial[i], f[i], grad[i]
                accepted[g] = True
                continue
            # minimiser of the quadratic through f(0), f'(0) and f(t), kept in [0.1 t, 0.5 t]
            tg, rise = float(t[g]), float(f[i]) - float(loss[g]) - float(slope[g]) * float(t[g])
            quad = -float(slope[g]) * tg * tg / (2 * rise) if rise > 0 else 0.5 * tg
            t[g] = min(max(quad, 0.1 * tg), 0.5 * tg)
            still.append(g)
        searching = still
    return new_theta, new_loss, new_grad, accepted


@dataclass
class _Search:
    """The C values solved so far, their validation scores and solutions (for warm starts)."""

    records: dict[float, dict[str, float]] = field(default_factory=dict)
    theta: dict[float, torch.Tensor] = field(default_factory=dict)

    def peak(self, headline: str) -> float:
        """The best C on validation; the smaller C on ties."""
        return max(sorted(self.records), key=lambda c: self.records[c][headline])

    def next_round(self, headline: str) -> list[tuple[float, float]]:
        """(new C, the solved C it starts from): the geometric midpoints between the peak and its
        nearest solved neighbours, each started from the smaller of the two."""
        solved = sorted(self.records)
        i = solved.index(self.peak(headline))
        pairs = [(solved[j], solved[j + 1]) for j in (i - 1, i) if 0 <= j < len(solved) - 1]
        return [(math.sqrt(a * b), a) for a, b in pairs]


class LogRegTrainer:
    """CLIP's logistic-regression probe as a ``bench.protocol`` trainer (float32 whatever the
    precision policy: L-BFGS needs exact gradients)."""

    def __init__(self, cfg: LogRegConfig, device: torch.device | str = "cpu",
                 precision: PrecisionPolicy | None = None, progress: bool = False, groups=None):
        self.cfg, self.device, self.progress = cfg, torch.device(device), progress
        self.solutions: list[tuple[list[float], Solution]] = []  # every solve, for inspection

    def _rows(self, data: ProbeData, splits: Sequence[str], norm: _Normaliser | None = None
              ) -> tuple[_Rows, torch.Tensor, _Normaliser]:
        parts = [data.features[s] for s in splits]
        norm = norm or fit_normaliser(self.cfg.normalisation, parts, self.device)
        rows = _Rows(parts, self.device, data.memory_budget, norm)
        return rows, _labels([data.labels[s] for s in splits], self.device), norm

    def _solve(self, objective: Objective, cs: list[float], start: torch.Tensor) -> Solution:
        before = objective.passes
        solution = lbfgs(objective, start, cs, objective.rows.n, self.cfg, self.progress)
        solution.passes = objective.passes - before
        self.solutions.append((cs, solution))
        return solution

    def search(self, data: ProbeData) -> list[dict[str, float]]:
        train, y_train, norm = self._rows(data, ["train"])
        val, _, _ = self._rows(data, ["val"], norm)
        objective = Objective(train, y_train, data.num_classes)
        shape = (data.num_classes, train.dim + 1)
        found = _Search()
        todo: list[tuple[float, float | None]] = [(c, None) for c in sorted(set(self.cfg.cs))]
        for round_index in range(self.cfg.refinements + 1):
            if round_index:
                todo = [(c, s) for c, s in found.next_round(data.headline)
                        if c not in found.records]
            if not todo:
                break
            start = torch.stack([torch.zeros(shape, device=self.device) if s is None
                                 else found.theta[s] for _, s in todo])
            cs = [c for c, _ in todo]
            solution = self._solve(objective, cs, start)
            scores = _predictions(val, solution.theta, data.labels["val"], data.num_classes)
            for c, theta, predictions in zip(cs, solution.theta, scores):
                found.records[c] = {"C": c, **predictions.metrics()}
                found.theta[c] = theta
        return [found.records[c] for c in sorted(found.records)]

    def refit_predict(self, data: ProbeData, point: dict[str, float]) -> torch.Tensor:
        rows, labels, norm = self._rows(data, ["train", "val"])
        c = float(point["C"])
        start = torch.zeros(1, data.num_classes, rows.dim + 1, device=self.device)
        solution = self._solve(Objective(rows, labels, data.num_classes), [c], start)
        if not solution.converged[0]:
            import warnings

            warnings.warn(f"logreg: C={c:g} stopped before max |gradient| <= tol={self.cfg.tol:g}"
                          f" ({solution.iterations[0]} iterations, max_iter "
                          f"{self.cfg.max_iter}): raise --probe-arg max_iter=N or tol",
                          stacklevel=2)
        test = _Rows([data.features["test"]], self.device, data.memory_budget, norm)
        return _logits(test, solution.theta)[0]


def _logits(rows: _Rows, theta: torch.Tensor) -> torch.Tensor:
    """(G, N, K) scores of every point on ``rows``."""
    g, k, d1 = theta.shape
    flat = theta.reshape(g * k, d1)
    return torch.cat([(x @ flat.T).view(len(x), g, k) for x in rows.chunks()]).transpose(0, 1)


def _predictions(rows: _Rows, theta: torch.Tensor, labels: Any, classes: int
                 ) -> list[Predictions]:
    """Each point's ``Predictions`` on ``rows``, the top classes found chunk by chunk (no
    (G, N, K) matrix)."""
    g, k, d1 = theta.shape
    flat = theta.reshape(g * k, d1)
    top = torch.cat([top_classes((x @ flat.T).view(len(x), g, k)).cpu() for x in rows.chunks()])
    y = np.asarray(labels, dtype=np.int64)
    return [Predictions(top[:, i].numpy(), y, classes) for i in range(g)]


def fit_logreg(features: dict[str, Any], labels: dict[str, np.ndarray], num_classes: int,
               cfg: LogRegConfig | None = None, headline: str = "top1",
               device: torch.device | str = "cpu", progress: bool = False,
               precision: PrecisionPolicy = FP32, memory_budget: int | None = None
               ) -> ProbeResult:
    """``bench.protocol.evaluate`` with the logistic-regression search: select C on val, refit
    on train+val, test once."""
    trainer = LogRegTrainer(cfg or LogRegConfig(), device, precision, progress)
    data = ProbeData(features, labels, num_classes, memory_budget=memory_budget)
    return evaluate(trainer, data, headline)
