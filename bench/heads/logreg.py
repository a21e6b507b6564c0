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
far and its nearest solved neighbours: the points CLIP_benchmark's ``find_peak`` search visits
when run over CLIP's 97 values (8 per decade). CLIP_benchmark runs that search over its own 97
weight decays, 1e-6..1e2 (12 per decade), and trains an AdamW linear layer (lr 0.1, 10 epochs,
minibatches) on L2-normalised features instead of L-BFGS;
``normalisation="l2"`` gives its features, ``"standardise"`` scikit-learn's ``StandardScaler``
(train statistics), ``"none"`` (the default) CLIP's raw features. Differences from scikit-learn's
solver: float32 (float64 sums), a backtracking Armijo line search where scipy's L-BFGS-B uses
More-Thuente, and a stop when the relative decrease falls under ``FTOL`` (float32's noise) as
well as scikit-learn's ``max |gradient| <= tol``; ties in validation go to the smaller C.

**Batched and warm-started.** All C values of a round share every pass over the features: one
(G, K, D + 1) weight (the bias as a last column against a column of ones), one GEMM per chunk of
rows for all logits and one for all gradients. The L-BFGS state is per point (curvature pairs,
step sizes, convergence), and converged points leave the GEMMs. The first round starts from zero,
as CLIP's fits do (started along the path, each C from the last, it took the 10k set's round from
2.4 s to 1.2 s but stopped its large C at other points of their flat loss: C = 100 at 0.053
against 0.0067 from zero, where scikit-learn stops too); each refinement point (a geometric
midpoint) starts from the solution at the smaller of its two neighbouring C (stronger
regularisation: the path's direction) and that solution's L-BFGS scaling. What that saves depends
on the features: the refinements of the 10k x 512 x 100 set took 2-10 iterations a point, its
first round 6-16; on digits the count is set by the conditioning near the optimum and a warm start
saves about a sixth. The refit starts from zero, as scikit-learn's would (starting it from the
search's solution of its C saved one iteration in seven on the 10k set: not worth the state).

**Streamed.** A split's rows are read in chunks of ``CHUNK`` rows from a numpy array or any
(memory-mapped) array with ``take``; the rows a model trains on, when their float32 copy fits
``ProbeData.memory_budget`` beside one chunk of the split it is scored on (or when it is None),
are normalised once and kept on the device, then that split if it fits what is left; otherwise
every pass reads its chunks again (``logreg_memory``: the one memory policy's plan). The chunks
are the same either way, so are the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.errors import UsageError
from bench.heads.memory import Inputs, MemoryPlan, Source, inputs_of
from bench.heads.streaming import chunk_moments, multiplier, unit_rows
from bench.metrics import Predictions
from bench.precision import FP32, PrecisionPolicy
from bench.protocol import ProbeData, ProbeResult, evaluate, top_classes
from bench.ranges import COUNT, COUNT0, POSITIVE, check_settings, setting

CLIP_CS = (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6)  # CLIP's first round (C = 1 / lambda)
NORMALISATIONS = ("none", "standardise", "l2")
CHUNK = 4096  # rows per pass step: fixed, so streamed and resident passes add up identically
FTOL = 1e-9  # relative decrease under which a point stops (float32 logits' noise is ~1e-8)
ARMIJO = 1e-4  # sufficient decrease of the line search
MAX_LINE_SEARCH = 20  # trial steps before a point stops where it is (it cannot decrease further)


@dataclass
class LogRegConfig:
    head: str = "logreg"
    cs: tuple[float, ...] = setting(CLIP_CS, POSITIVE)  # the first round of C (1 / strength)
    # bisection rounds around the best C (CLIP: 4, to 8 steps per decade)
    refinements: int = setting(4, COUNT0)
    max_iter: int = setting(1000, COUNT)  # L-BFGS iterations per C (CLIP's, scikit-learn's)
    tol: float = setting(1e-4, POSITIVE)  # stop when max |gradient| <= tol (scikit-learn's)
    history: int = setting(10, COUNT)  # L-BFGS curvature pairs kept (scipy's maxcor)
    normalisation: str = "none"  # CLIP's raw features; "standardise" (train statistics), "l2"
    seed: int = 0  # nothing is random; kept because every result has a seed

    def __post_init__(self) -> None:
        if not self.cs:
            raise ValueError("the C grid (cs) is empty: give at least one C, e.g. cs=[0.1,1,10]")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation {self.normalisation!r}: use one of "
                             f"{', '.join(NORMALISATIONS)}")
        check_settings(self)


@dataclass
class _Normaliser:
    """The features' transform, fitted on the rows a model trains on."""

    kind: str
    mean: torch.Tensor | None = None
    scale: torch.Tensor | None = None  # 1 / standard deviation; 0 for a constant dimension

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "l2":
            return unit_rows(x)
        if self.kind == "standardise":
            return (x - self.mean) * self.scale
        return x


def _read(array: Any, start: int, stop: int) -> np.ndarray:
    """Rows start..stop as (rows, D): a slice of a numpy array, else ``take`` (a memory map's
    shards read for just those rows)."""
    rows = array[start:stop] if isinstance(array, np.ndarray) else array.take(
        np.arange(start, stop))
    return np.asarray(rows).reshape(stop - start, -1)


class _Rows:
    """The rows of one or more feature arrays (train, or train + val), as chunks of ``CHUNK``
    normalised float32 rows with a column of ones, on the device: kept there in mode
    ``memory``, read from the arrays at every pass otherwise (``logreg_memory``)."""

    def __init__(self, parts: Sequence[Any], device: torch.device, mode: str,
                 norm: _Normaliser):
        self.parts, self.device, self.norm = list(parts), device, norm
        self.n = sum(len(p) for p in self.parts)
        self.dim = int(np.prod(self.parts[0].shape[1:]))
        self.resident: list[torch.Tensor] | None = None
        if mode == "memory":
            self.resident = list(self._read_chunks())

    def _read_chunks(self) -> Iterator[torch.Tensor]:
        for part in self.parts:
            for start in range(0, len(part), CHUNK):
                x = _read(part, start, min(start + CHUNK, len(part)))
                x = self.norm(torch.as_tensor(x).to(self.device, torch.float32))
                yield torch.cat([x, torch.ones(len(x), 1, device=self.device)], dim=1)

    def chunks(self) -> Iterator[torch.Tensor]:
        return iter(self.resident) if self.resident is not None else self._read_chunks()



def logreg_memory(cfg: LogRegConfig, inputs: Inputs, budget: int | None) -> MemoryPlan:
    """The solver's reads within ``budget`` (``bench.heads.memory``): train kept whole in float32
    (with the ones column) if it fits beside one chunk of val, then val in what is left; the
    refit's train+val, then test beside it."""
    def source(name: str) -> Source:
        rows = inputs.rows_of(name)
        chunk, width = min(CHUNK, rows), inputs.dims + 1
        return Source(name, 4 * rows * width, 4 * chunk * width,
                      f"{chunk:,} rows x {width:,} numbers x 4 B", what="logistic-regression chunk",
                      fix="")

    return MemoryPlan.of(budget, {"search": [source("train"), source("val")],
                                  "refit": [source("train+val"), source("test")]})


def logreg_state(cfg: LogRegConfig, inputs: Inputs) -> tuple[int, str]:
    """Bytes of one search round's solver state: each C's weights, gradient, line-search trial
    and direction, and the L-BFGS pairs (2 x history), float32."""
    points = max(len(cfg.cs), 2)  # the first round, or a refinement's two midpoints
    weights = inputs.classes * (inputs.dims + 1)
    copies = 2 * cfg.history + 6
    return (points * weights * 4 * copies,
            f"{points} x {inputs.classes} x {inputs.dims + 1} x 4 B x {copies}")


def fit_normaliser(kind: str, parts: Sequence[Any], device: torch.device) -> _Normaliser:
    """``kind``'s transform; standardisation statistics from one pass (float64 sums,
    ``bench.heads.streaming.chunk_moments``: scikit-learn's ``StandardScaler`` statistics, no
    epsilon), constant dimensions mapped to 0."""
    if kind != "standardise":
        return _Normaliser(kind)
    mean, var = chunk_moments(
        torch.as_tensor(_read(part, start, min(start + CHUNK, len(part)))).to(device)
        for part in parts for start in range(0, len(part), CHUNK))
    return _Normaliser(kind, mean.float(), multiplier(var).float())


def _labels(parts: Sequence[Any], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.concatenate([np.asarray(p) for p in parts]), dtype=torch.long,
                           device=device)


@dataclass
class Objective:
    """Each point's f and gradient on ``rows``: one pass over its chunks for all points."""

    rows: _Rows
    labels: torch.Tensor
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
            # (A, K, rows): the softmax runs along K with the rows contiguous (the (rows, A, K)
            # layout's softmax over a short last axis took half a digits pass)
            logp = torch.log_softmax((flat @ x.T).view(a, k, len(x)), dim=1)
            loss -= logp[:, y, rows].sum(1, dtype=torch.float64)
            delta = logp.exp_()
            delta[:, y, rows] -= 1.0
            grad.addmm_(delta.view(a * k, len(x)), x)
        n = self.rows.n
        weights = theta[..., :-1]
        grad = grad.view(a, k, d1).div_(n)
        grad[..., :-1] += inv_cn.view(-1, 1, 1).float() * weights
        penalty = 0.5 * inv_cn * weights.double().square().sum((1, 2))
        return loss / n + penalty, grad


@dataclass
class Curvature:
    """L-BFGS's memory of G points: (m, G, ...) curvature pairs s, y in a ring whose newest slot
    is (count - 1) % m, rho = 1 / s.y (0: an empty or skipped slot, which counts for nothing in
    the two-loop recursion) and each point's initial inverse-Hessian scaling gamma = s.y / y.y
    of its newest pair."""

    s: torch.Tensor
    y: torch.Tensor
    rho: torch.Tensor
    gamma: torch.Tensor
    count: int = 0

    @classmethod
    def empty(cls, m: int, theta: torch.Tensor) -> Curvature:
        s = torch.zeros(m, *theta.shape, device=theta.device)
        rho = torch.zeros(m, len(theta), dtype=torch.float64, device=theta.device)
        return cls(s, torch.zeros_like(s), rho, torch.ones_like(rho[0]))

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """-H grad for every point: the two-loop recursion over the ring, newest pair first."""
        m = len(self.s)
        q = grad.clone()
        slots = [(self.count - 1 - i) % m for i in range(min(self.count, m))]
        alphas = []
        for j in slots:
            alpha = self.rho[j] * _dot(self.s[j], q)
            q -= _per_point(alpha, q) * self.y[j]
            alphas.append(alpha)
        r = _per_point(self.gamma, q) * q
        for j, alpha in zip(reversed(slots), reversed(alphas)):
            beta = self.rho[j] * _dot(self.y[j], r)
            r += _per_point(alpha - beta, r) * self.s[j]
        return -r


@dataclass
class Solution:
    """Each point's weights (G, K, D + 1), objective, whether it met ``tol``, and its L-BFGS
    memory (its scaling starts a warm start)."""

    theta: torch.Tensor
    loss: torch.Tensor
    iterations: list[int]
    converged: list[bool]
    memory: Curvature
    passes: int = 0


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-point inner products of (G, ...) tensors, in float64."""
    return (a * b).flatten(1).sum(1, dtype=torch.float64)


def _per_point(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)


def lbfgs(objective: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
          theta: torch.Tensor, cs: Sequence[float], n: int, cfg: LogRegConfig,
          scaling: Sequence[float] | None = None, progress: bool = False) -> Solution:
    """Minimise each point's objective from ``theta`` (G, K, D + 1), point g at C = cs[g].

    Batched L-BFGS: one shared ring of ``cfg.history`` slots holds each point's curvature pairs,
    each point has its own scaling, step size and stop; the objective is evaluated only for
    the points still searching. A point stops at max |gradient| <= tol, at a relative decrease
    under ``FTOL``, when no step decreases it, or at ``max_iter``. ``scaling[g]``: a warm
    start's initial inverse-Hessian scaling (the gamma of the solution it starts from; NaN for
    a cold start): its first step is -scaling * gradient. A cold start's is scipy's, unit length
    along -gradient, which from near an optimum would overshoot it. (Carrying the source's
    curvature pairs too, shifted exactly by the change of penalty, saved no iteration on digits
    or the 10k set: their iteration counts are set by the conditioning near the optimum.)
    """
    from tqdm.auto import tqdm

    g_count = len(cs)
    inv_cn = torch.tensor([1.0 / (c * n) for c in cs], dtype=torch.float64, device=theta.device)
    theta = theta.clone()
    loss, grad = objective(theta, inv_cn)
    memory = Curvature.empty(cfg.history, theta)
    warmed = torch.zeros(g_count, dtype=torch.bool, device=theta.device)
    if scaling is not None:
        given = torch.tensor(scaling, dtype=torch.float64, device=theta.device)
        warmed = ~given.isnan()
        memory.gamma[warmed] = given[warmed]
    iterations = torch.zeros(g_count, dtype=torch.long, device=theta.device)
    active = grad.flatten(1).abs().amax(1) > cfg.tol
    converged = ~active
    bar = tqdm(total=cfg.max_iter, desc=f"logreg L-BFGS x{g_count} C", unit="it",
               disable=not progress, leave=False)
    for step in range(cfg.max_iter):
        if not bool(active.any()):
            break
        bar.update(1)
        direction = memory.direction(grad)
        slope = _dot(grad, direction)
        uphill = slope >= 0  # float noise: restart that point from steepest descent
        if bool(uphill.any()):
            direction[uphill] = -grad[uphill]
            memory.rho[:, uphill] = 0.0
            slope = _dot(grad, direction)
        t = torch.ones(g_count, dtype=torch.float64, device=theta.device)
        if step == 0:
            cold = 1.0 / direction.flatten(1).norm(dim=1).double().clamp_min(1e-30)
            t = torch.where(warmed, t, cold)
        new_theta, new_loss, new_grad, moved = _line_search(
            objective, theta, loss, direction, slope, t, inv_cn, active)
        # a point that found no decrease is at float32's precision: it stops where it is
        s, y = new_theta - theta, new_grad - grad
        sy, yy = _dot(s, y), _dot(y, y)
        pair = moved & (sy > 0) & (sy > 1e-12 * yy)
        slot = memory.count % cfg.history
        memory.count += 1
        memory.s[slot] = s * _per_point(pair, s)
        memory.y[slot] = y * _per_point(pair, y)
        memory.rho[slot] = torch.where(pair, 1.0 / sy, torch.zeros_like(sy))
        memory.gamma = torch.where(pair, sy / yy, memory.gamma)
        flat = loss - new_loss <= FTOL * torch.maximum(torch.maximum(loss.abs(), new_loss.abs()),
                                                       torch.ones_like(loss))
        keep = _per_point(moved, theta).bool()
        theta, grad = torch.where(keep, new_theta, theta), torch.where(keep, new_grad, grad)
        loss = torch.where(moved, new_loss, loss)
        iterations += moved.long()
        met = moved & (grad.flatten(1).abs().amax(1) <= cfg.tol)
        converged |= met
        active = moved & ~met & ~flat
    bar.close()
    return Solution(theta, loss, iterations.tolist(), converged.tolist(), memory)


def _line_search(objective, theta, loss, direction, slope, t, inv_cn, active):
    """Backtracking (Armijo, quadratic interpolation) for every active point at once; a trial
    evaluates only the points still searching. Returns the new theta, f, gradient (the old ones
    where none was found) and which points found a sufficient decrease."""
    new_theta, new_loss, new_grad = theta.clone(), loss.clone(), torch.zeros_like(theta)
    moved = torch.zeros_like(active)
    searching = active.clone()
    for _ in range(MAX_LINE_SEARCH):
        index = searching.nonzero().squeeze(1)
        if not len(index):
            break
        trial = theta[index] + _per_point(t[index], theta) * direction[index]
        f, grad = objective(trial, inv_cn[index])
        ok = f <= loss[index] + ARMIJO * t[index] * slope[index]
        done = index[ok]
        new_theta[done], new_loss[done], new_grad[done] = trial[ok], f[ok], grad[ok]
        moved[done] = True
        searching[done] = False
        # the rest: the minimiser of the quadratic through f(0), f'(0) and f(t), in [0.1t, 0.5t]
        tg, g0 = t[index], slope[index]
        rise = f - loss[index] - g0 * tg
        quad = torch.where(rise > 0, -g0 * tg * tg / (2 * rise.clamp_min(1e-300)), 0.5 * tg)
        t[index] = torch.where(ok, tg, torch.minimum(torch.maximum(quad, 0.1 * tg), 0.5 * tg))
    return new_theta, new_loss, new_grad, moved


Round = Callable[[list[float], list["float | None"]], list[dict[str, float]]]


def search_cs(cs: Sequence[float], refinements: int, headline: str, solve_round: Round
              ) -> list[dict[str, float]]:
    """CLIP's parametric binary search over C: ``cs`` first, then ``refinements`` rounds, each
    solving the geometric midpoints between the best C so far (by ``headline``, the smaller C on
    ties) and its nearest solved neighbours. ``solve_round(cs, starts)`` solves and scores one
    round; ``starts[i]`` is the solved C that cs[i] starts from (the smaller neighbour: the path
    runs from strong to weak regularisation), None for zero. Returns every record by C."""
    records: dict[float, dict[str, float]] = {}
    todo: list[tuple[float, float | None]] = [(c, None) for c in sorted({float(c) for c in cs})]
    for round_index in range(refinements + 1):
        if round_index:
            solved = sorted(records)
            i = solved.index(max(solved, key=lambda c: records[c][headline]))
            pairs = [(solved[j], solved[j + 1]) for j in (i - 1, i) if 0 <= j < len(solved) - 1]
            todo = [(math.sqrt(a * b), a) for a, b in pairs if math.sqrt(a * b) not in records]
        if not todo:
            break
        round_cs = [c for c, _ in todo]
        records.update(zip(round_cs, solve_round(round_cs, [start for _, start in todo])))
    return [records[c] for c in sorted(records)]


class LogRegTrainer:
    """CLIP's logistic-regression probe as a ``bench.protocol`` trainer (float32 whatever the
    precision policy: L-BFGS needs exact gradients)."""

    def __init__(self, cfg: LogRegConfig, device: torch.device | str = "cpu",
                 precision: PrecisionPolicy | None = None, progress: bool = False, groups=None):
        self.cfg, self.device, self.progress = cfg, torch.device(device), progress
        self.solutions: list[tuple[list[float], Solution]] = []  # every solve, for inspection

    def _rows(self, data: ProbeData, splits: Sequence[str], mode: str,
              norm: _Normaliser | None = None) -> tuple[_Rows, torch.Tensor, _Normaliser]:
        """The rows of ``splits`` in ``mode`` (the plan's), normalised by ``norm`` (else fitted
        on them)."""
        parts = [data.features[s] for s in splits]
        norm = norm or fit_normaliser(self.cfg.normalisation, parts, self.device)
        rows = _Rows(parts, self.device, mode, norm)
        return rows, _labels([data.labels[s] for s in splits], self.device), norm

    def memory(self, data: ProbeData) -> MemoryPlan:
        return logreg_memory(self.cfg, inputs_of(data, 4), data.memory_budget)

    def _solve(self, objective: Objective, cs: list[float], start: torch.Tensor,
               scaling: list[float] | None = None) -> Solution:
        before = objective.passes
        solution = lbfgs(objective, start, cs, objective.rows.n, self.cfg, scaling,
                         self.progress)
        solution.passes = objective.passes - before
        self.solutions.append((cs, solution))
        return solution

    def search(self, data: ProbeData) -> list[dict[str, float]]:
        plan = self.memory(data)
        train, y_train, norm = self._rows(data, ["train"], plan.mode("search", "train"))
        val, _, _ = self._rows(data, ["val"], plan.mode("search", "val"), norm)
        objective = Objective(train, y_train)
        solved: dict[float, tuple[torch.Tensor, float]] = {}  # C -> weights, L-BFGS scaling
        cold = (torch.zeros(data.num_classes, train.dim + 1, device=self.device), math.nan)

        def solve_round(cs: list[float], starts: list[float | None]) -> list[dict[str, float]]:
            theta, scaling = zip(*[cold if s is None else solved[s] for s in starts])
            solution = self._solve(objective, cs, torch.stack(theta), list(scaling))
            if not solved:
                self._check_moved(solution, train)
            solved.update(zip(cs, zip(solution.theta, solution.memory.gamma.tolist())))
            return [{"C": c, **p.metrics()} for c, p in zip(cs, _predictions(
                val, solution.theta, data.labels["val"], data.num_classes))]

        return search_cs(self.cfg.cs, self.cfg.refinements, data.headline, solve_round)

    def _check_moved(self, solution: Solution, rows: _Rows) -> None:
        """Refuse a first round whose every C stopped at its zero start, which would log chance
        as a result: the gradient there was already under ``tol`` (features too small for it),
        or no step along it decreased the loss in float32 (features too large). Raw features
        (CLIP's protocol) are not scale-free: C's meaning and the solver's reach depend on
        their scale; standardised or l2 rows are."""
        if any(solution.iterations):
            return
        first = next(iter(rows.chunks()))[:, :-1]
        rms = float(first.double().square().mean().sqrt())
        why = (f"its gradient there is already under tol={self.cfg.tol:g}" if all(
            solution.converged) else "no step from there decreased the loss in float32")
        raise UsageError(
            f"logreg: every C stopped at zero weights ({why}): the features' scale (RMS "
            f"{rms:.3g} with normalisation={self.cfg.normalisation}) is out of the solver's "
            "reach; use --probe-arg normalisation=standardise (scale-free) or "
            "normalisation=l2")

    def refit_predict(self, data: ProbeData, point: dict[str, float]) -> torch.Tensor:
        plan = self.memory(data)
        rows, labels, norm = self._rows(data, ["train", "val"], plan.mode("refit", "train+val"))
        c = float(point["C"])
        start = torch.zeros(1, data.num_classes, rows.dim + 1, device=self.device)
        solution = self._solve(Objective(rows, labels), [c], start)
        if not solution.converged[0]:
            import warnings

            warnings.warn(f"logreg: C={c:g} stopped before max |gradient| <= tol={self.cfg.tol:g}"
                          f" ({solution.iterations[0]} iterations, max_iter "
                          f"{self.cfg.max_iter}): raise --probe-arg max_iter=N or tol",
                          stacklevel=2)
        test, _, _ = self._rows(data, ["test"], plan.mode("refit", "test"), norm)
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
