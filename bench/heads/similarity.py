"""How alike two representations of the same images are: CKA, mutual kNN, CKNNA, for whole matrices.

Estimators (``Measure.name``):

- ``cka-debiased`` (default): linear CKA from U-centred Grams, i.e. Song et al.'s (2012) unbiased
  HSIC, as Kornblith's ``center_gram(unbiased=True)``. Unlike the biased form it is not inflated
  when d/n is large (independent Gaussians give about 0 at any d).
- ``cka``: linear CKA from doubly centred Grams (Kornblith et al. 2019).
- ``cka-rbf``: CKA of RBF kernels, bandwidth ``threshold * sqrt(median squared distance)``
  (Kornblith's rule; the threshold is recorded), doubly centred.
- ``cka-minibatch``: Nguyen et al. (2021): unbiased HSIC summed over equal batches of images,
  then normalised; with one batch it is ``cka-debiased``.
- ``mknn``: mutual k-nearest-neighbour alignment (Huh et al. 2024): the mean share of each
  image's k neighbours (cosine, itself excluded) that both representations agree on.
- ``cknna``: Huh et al.'s centred kernel nearest-neighbour alignment: unbiased HSIC of the cosine
  kernels restricted to mutual neighbours, normalised like CKA.

Every matrix comes from one pass: a pair's cross term is a sum of products of per-point pieces
(centred features, or row blocks of a point's Gram or neighbour mask), so each point's pieces are
built once per row block and all pairs are one matrix product. Linear CKA uses the feature-space
identity <XX', YY'> = |X'Y|^2 when that costs less than the Gram form (never an n x n Gram: Grams
are built a row block at a time). Everything is accumulated in float64, on the GPU when given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from bench.errors import UsageError

MEASURES = ("cka-debiased", "cka", "cka-rbf", "cka-minibatch", "mknn", "cknna")
ROW_BLOCK_BYTES = 1 << 28  # memory of one row block of all points' Grams (float64)


@dataclass(frozen=True)
class Measure:
    """A similarity estimator and its settings (all recorded with the matrix)."""

    name: str = "cka-debiased"
    k: int = 10  # mknn, cknna: neighbours per image
    rbf_threshold: float = 1.0  # cka-rbf: bandwidth = threshold * median distance
    batch_size: int = 1000  # cka-minibatch: images per batch (equal batches; the rest left out)

    def __post_init__(self) -> None:
        if self.name not in MEASURES:
            raise UsageError(f"measure {self.name!r}: use one of {', '.join(MEASURES)}")
        if self.k < 1 or self.rbf_threshold <= 0 or self.batch_size < 4:
            raise UsageError("k must be >= 1, the RBF threshold > 0 and the batch size >= 4")

    def settings(self) -> dict:
        """What changes this measure's numbers (irrelevant settings left out)."""
        out = {"measure": self.name, "dtype": "float64"}
        if self.name in ("mknn", "cknna"):
            out |= {"k": self.k, "kernel": "cosine (rows L2-normalised)"}
        elif self.name == "cka-rbf":
            out |= {"kernel": "rbf", "bandwidth": "threshold * sqrt(median squared distance)",
                    "rbf_threshold": self.rbf_threshold, "centring": "double"}
        else:
            out |= {"kernel": "linear",
                    "centring": "double" if self.name == "cka" else "U-centring (unbiased)"}
        if self.name == "cka-minibatch":
            out["batch_size"] = self.batch_size
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def as_points(features: Sequence[np.ndarray | torch.Tensor], device: str | torch.device = "cpu"
              ) -> list[torch.Tensor]:
    """Each point's features as (n, d) float64 on ``device`` (maps and tokens flattened)."""
    out = []
    for x in features:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        out.append(t.reshape(len(t), -1).to(device=device, dtype=torch.float64))
    return out


# --- pieces shared by the estimators ---------------------------------------------------------
def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(0, keepdim=True)


def _row_blocks(n: int, points: int) -> list[slice]:
    """Row blocks small enough that one block of every point's n-wide rows fits ROW_BLOCK_BYTES."""
    size = max(1, min(n, ROW_BLOCK_BYTES // (8 * n * max(points, 1))))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _blocked_products(rows: Sequence, cols: Sequence, n: int,
                      block: Callable[[object, slice], torch.Tensor]) -> torch.Tensor:
    """sum over entries of A_i * B_j for every pair, where ``block(point, rows)`` gives the
    (len(rows), n) slice of a point's n x n matrix: one matrix product per row block."""
    out = None
    for rs in _row_blocks(n, len(rows) + len(cols)):
        a = torch.stack([block(p, rs).reshape(-1) for p in rows])
        b = a if cols is rows else torch.stack([block(p, rs).reshape(-1) for p in cols])
        part = a @ b.T
        out = part if out is None else out + part
    return out


def _segments(dims: Sequence[int], device) -> torch.Tensor:
    """(points, sum d) indicator of which columns of the concatenated features belong to which point."""
    ids = torch.repeat_interleave(torch.arange(len(dims), device=device),
                                  torch.tensor(dims, device=device))
    return torch.nn.functional.one_hot(ids, len(dims)).T.to(torch.float64)


def gram_inner_products(rows: Sequence[torch.Tensor], cols: Sequence[torch.Tensor],
                        form: str = "auto") -> torch.Tensor:
    """<X_i X_i', Y_j Y_j'> for every pair: |X_i' Y_j|_F^2 in feature space, or the Grams'
    Frobenius product a row block at a time. ``form``: "features", "gram" or "auto" (cheaper)."""
    n = len(rows[0])
    if form == "auto":
        form = "features" if _feature_cost(rows, cols) <= _gram_cost(rows, cols) else "gram"
    if form == "gram":
        return _blocked_products(rows, cols, n, lambda x, rs: x[rs] @ x.T)
    zr = torch.cat(list(rows), 1)
    zc = zr if cols is rows else torch.cat(list(cols), 1)
    cross = (zr.T @ zc).square_()
    sr = _segments([x.shape[1] for x in rows], zr.device)
    sc = sr if cols is rows else _segments([y.shape[1] for y in cols], zr.device)
    return sr @ cross @ sc.T


def _feature_cost(rows, cols) -> float:
    n = len(rows[0])
    return n * sum(x.shape[1] for x in rows) * sum(y.shape[1] for y in cols)


def _gram_cost(rows, cols) -> float:
    n = len(rows[0])
    points = rows if cols is rows else [*rows, *cols]
    return n * n * (sum(x.shape[1] for x in points) + len(rows) * len(cols))


def self_inner_products(points: Sequence[torch.Tensor]) -> torch.Tensor:
    """<X X', X X'> per point, in whichever space is smaller."""
    return torch.stack([(x.T @ x if x.shape[1] < len(x) else x @ x.T).square().sum()
                        for x in points])


# --- HSIC for every pair ---------------------------------------------------------------------
def linear_hsic(rows: Sequence[torch.Tensor], cols: Sequence[torch.Tensor], unbiased: bool,
                form: str = "auto", pairs: bool = True) -> torch.Tensor:
    """Linear-kernel HSIC of every (row, col) pair (``pairs``) or of each point with itself.

    Biased: <HKH, HLH> / (n-1)^2. Unbiased (Song et al. 2012), with centred features so that
    K~1 = -diag(K): [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),
    K~ the Gram with its diagonal zeroed; equal to Kornblith's U-centred Gram product / (n(n-3)).
    """
    n = len(rows[0])
    if unbiased and n < 4:
        raise UsageError(f"debiased CKA needs at least 4 images, got {n}")
    same = cols is None or cols is rows
    rows = [_centre(x) for x in rows]
    cols = rows if same else [_centre(y) for y in cols]
    if pairs:
        trace = gram_inner_products(rows, cols, form)
    else:
        trace = self_inner_products(rows)
    if not unbiased:
        return trace / (n - 1) ** 2
    kr = torch.stack([x.square().sum(1) for x in rows])  # (points, n): diag of each Gram
    kc = kr if not pairs else torch.stack([y.square().sum(1) for y in cols])
    if pairs:
        diag = kr @ kc.T
        sums = kr.sum(1)[:, None] * kc.sum(1)[None, :]
    else:
        diag, sums = kr.square().sum(1), kr.sum(1).square()
    return (trace - diag + sums / ((n - 1) * (n - 2)) - 2 * diag / (n - 2)) / (n * (n - 3))


def _rbf_prepare(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, float, torch.Tensor, float]:
    """(x, 1/(2 sigma^2), row means of K, grand mean of K): what a row block of the centred RBF
    Gram needs. sigma^2 = threshold^2 * median of all n^2 squared distances (Kornblith)."""
    sq = x.square().sum(1)
    dist = _sq_distances(x, slice(0, len(x)), sq)
    scale = 1.0 / (2 * threshold ** 2 * float(_median(dist)))
    kernel = torch.exp(-dist * scale)
    means = kernel.mean(1)
    return x, scale, means, float(means.mean())


def _median(values: torch.Tensor) -> torch.Tensor:
    """numpy's median (mean of the two middle values for an even count)."""
    flat = values.reshape(-1).sort().values
    mid = len(flat) // 2
    return flat[mid] if len(flat) % 2 else (flat[mid - 1] + flat[mid]) / 2


def _sq_distances(x: torch.Tensor, rs: slice, sq: torch.Tensor) -> torch.Tensor:
    return (sq[rs, None] + sq[None, :] - 2 * (x[rs] @ x.T)).clamp_(min=0)


def _rbf_block(prepared, rs: slice) -> torch.Tensor:
    x, scale, means, grand = prepared
    kernel = torch.exp(-_sq_distances(x, rs, x.square().sum(1)) * scale)
    return kernel - means[rs, None] - means[None, :] + grand


def rbf_hsic(rows, cols, threshold: float, pairs: bool = True) -> torch.Tensor:
    """Biased HSIC of RBF kernels (doubly centred Grams) for every pair, or each point alone."""
    n = len(rows[0])
    prep_r = [_rbf_prepare(x, threshold) for x in rows]
    if not pairs:
        return torch.stack([_blocked_products([p], [p], n, _rbf_block)[0, 0] for p in prep_r]
                           ) / (n - 1) ** 2
    prep_c = prep_r if cols is rows else [_rbf_prepare(y, threshold) for y in cols]
    return _blocked_products(prep_r, prep_c, n, _rbf_block) / (n - 1) ** 2


# --- neighbour measures ------------------------------------------------------------------------
def neighbours(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised rows, indices (n, k) of each row's k most cosine-similar other rows)."""
    if k >= len(x):
        raise UsageError(f"k = {k} neighbours needs more than {k} images, got {len(x)}")
    z = torch.nn.functional.normalize(x, dim=1)
    idx = []
    for rs in _row_blocks(len(z), 1):
        sim = z[rs] @ z.T
        sim[torch.arange(sim.shape[0], device=z.device),
            torch.arange(rs.start, rs.stop, device=z.device)] = -torch.inf
        idx.append(sim.topk(k, dim=1).indices)
    return z, torch.cat(idx)


def _mask_block(prepared, rs: slice) -> torch.Tensor:
    z, idx = prepared
    mask = torch.zeros(rs.stop - rs.start, len(z), dtype=torch.float64, device=z.device)
    return mask.scatter_(1, idx[rs], 1.0)


def mutual_knn(rows, cols, k: int) -> torch.Tensor:
    """Mean over images of |N_k^A(i) & N_k^B(i)| / k for every pair (Huh et al. 2024)."""
    n = len(rows[0])
    prep_r = [neighbours(x, k) for x in rows]
    prep_c = prep_r if cols is rows else [neighbours(y, k) for y in cols]
    return _blocked_products(prep_r, prep_c, n, _mask_block) / (n * k)


def _transposed_mask_block(prepared, rs: slice) -> torch.Tensor:
    """Rows ``rs`` of a neighbour mask's transpose: which images count row a among their k."""
    z, idx = prepared
    owner = torch.arange(len(idx), device=z.device).repeat_interleave(idx.shape[1])
    target = idx.reshape(-1)
    inside = (target >= rs.start) & (target < rs.stop)
    mask = torch.zeros(rs.stop - rs.start, len(z), dtype=torch.float64, device=z.device)
    mask[target[inside] - rs.start, owner[inside]] = 1.0
    return mask


def cknna_hsic(rows, cols, k: int, pairs: bool = True) -> torch.Tensor:
    """Unbiased HSIC of A = M * K_A and B = M * K_B, M = M_A * M_B, for every pair: K the cosine
    kernel, M_X[i, j] = 1 when j is among i's k neighbours in X (Huh et al.'s CKNNA numerator;
    with A = B, the normaliser). M is not symmetric, so the Song terms are taken as written:
    tr(AB) = sum (M M')_ij K_A K_B uses each side's mutual-neighbour mask M_X * M_X', and
    1'AB1 pairs A's column sums with B's row sums. The masks zero the diagonal."""
    n = len(rows[0])
    if not pairs:
        return torch.stack([cknna_hsic(one, one, k)[0, 0] for one in ([x] for x in rows)])
    prep_r = [neighbours(x, k) for x in rows]
    prep_c = prep_r if cols is rows else [neighbours(y, k) for y in cols]
    trace = sum_a = sum_b = cross = 0.0

    def pieces(prepared, rs):
        m = torch.stack([_mask_block(p, rs) for p in prepared])  # (P, b, n)
        mt = torch.stack([_transposed_mask_block(p, rs) for p in prepared])
        kernel = torch.stack([p[0][rs] @ p[0].T for p in prepared])
        return m, mt, kernel

    for rs in _row_blocks(n, 3 * (len(prep_r) + len(prep_c))):
        mr, mtr, kr = pieces(prep_r, rs)
        mc, mtc, kc = (mr, mtr, kr) if cols is rows else pieces(prep_c, rs)
        trace = trace + torch.einsum("ian,jan->ij", mr * mtr * kr, mc * mtc * kc)
        col_a = torch.einsum("ian,jan->ija", mtr * kr, mtc)  # column sums of A (K_A symmetric)
        row_b = torch.einsum("ian,jan->ija", mr, mc * kc)  # row sums of B
        sum_a, sum_b = sum_a + col_a.sum(2), sum_b + row_b.sum(2)
        cross = cross + (col_a * row_b).sum(2)
    return (trace + sum_a * sum_b / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


# --- the matrix ---------------------------------------------------------------------------------
@dataclass
class SelfTerms:
    """Each point's normaliser (HSIC with itself): unchanged when the other side's images are
    permuted, so a null computes it once."""

    rows: torch.Tensor | None
    cols: torch.Tensor | None


def _hsic(measure: Measure, rows, cols, pairs: bool = True) -> torch.Tensor:
    if measure.name == "cka-rbf":
        return rbf_hsic(rows, cols, measure.rbf_threshold, pairs)
    if measure.name == "cknna":
        return cknna_hsic(rows, cols, measure.k, pairs)
    return linear_hsic(rows, cols, unbiased=measure.name != "cka", pairs=pairs)


def self_terms(measure: Measure, rows, cols) -> SelfTerms:
    if measure.name == "mknn":
        return SelfTerms(None, None)
    if measure.name == "cka-minibatch":
        batches = _batches(len(rows[0]), measure.batch_size)
        r = sum(linear_hsic([x[b] for x in rows], None, True, pairs=False) for b in batches)
        c = r if cols is rows else sum(
            linear_hsic([y[b] for y in cols], None, True, pairs=False) for b in batches)
        return SelfTerms(r, c)
    r = _hsic(measure, rows, None, pairs=False)
    return SelfTerms(r, r if cols is rows else _hsic(measure, cols, None, pairs=False))


def _batches(n: int, size: int) -> list[slice]:
    """Equal batches of ``size`` images (one batch of all when n <= size; the rest left out)."""
    size = min(size, n)
    return [slice(i, i + size) for i in range(0, n - size + 1, size)]


def matrix(measure: Measure, rows: Sequence[torch.Tensor], cols: Sequence[torch.Tensor] | None = None,
           selfs: SelfTerms | None = None) -> torch.Tensor:
    """The (rows x cols) similarity matrix, all pairs at once; ``cols`` None: rows x rows.

    Rows and columns must hold the same images in the same order (n rows each)."""
    cols = rows if cols is None else cols
    n = len(rows[0])
    if any(len(x) != n for x in [*rows, *cols]):
        raise UsageError("every feature point must hold the same images (same row count)")
    if measure.name == "mknn":
        return mutual_knn(rows, cols, measure.k)
    selfs = selfs or self_terms(measure, rows, cols)
    if measure.name == "cka-minibatch":
        cross = 0.0
        for b in _batches(n, measure.batch_size):
            part = [x[b] for x in rows]
            cross = cross + linear_hsic(part, part if cols is rows else [y[b] for y in cols], True)
    else:
        cross = _hsic(measure, rows, cols)
    denom = (selfs.rows[:, None] * selfs.cols[None, :]).clamp_(min=0).sqrt_()
    return cross / denom


def pair(measure: Measure, x, y, device: str = "cpu") -> float:
    """One pair's similarity (features (n, ...) each)."""
    a, b = as_points([x, y], device)
    return float(matrix(measure, [a], [b])[0, 0])


# --- uncertainty ----------------------------------------------------------------------------------
@dataclass
class NullResult:
    """A permutation null of every cell: p = (1 + #null >= observed) / (B + 1), and its mean."""

    p: torch.Tensor
    mean: torch.Tensor
    permutations: int


def permutation_null(measure: Measure, rows, cols, observed: torch.Tensor, permutations: int,
                     seed: int = 0) -> NullResult:
    """Permute the images of the column side, the same B permutations for the whole matrix."""
    cols = rows if cols is None else cols
    selfs = self_terms(measure, rows, cols)
    generator = np.random.default_rng(seed)
    exceed = torch.zeros_like(observed)
    total = torch.zeros_like(observed)
    for _ in range(permutations):
        perm = torch.as_tensor(generator.permutation(len(rows[0])), device=rows[0].device)
        null = matrix(measure, rows, [y[perm] for y in cols], selfs)
        exceed += (null >= observed).to(observed.dtype)
        total += null
    return NullResult((1 + exceed) / (permutations + 1), total / max(permutations, 1), permutations)


INTERVALS = ("jackknife", "subsample", "none")


@dataclass
class Interval:
    """A 95% interval per cell over images, and how it was made."""

    low: torch.Tensor
    high: torch.Tensor
    method: str
    draws: int


def interval(measure: Measure, rows, cols, observed: torch.Tensor, method: str = "jackknife",
             draws: int = 20, seed: int = 0) -> Interval | None:
    """95% interval over images, never by resampling with replacement (a duplicated image
    inflates biased CKA). ``jackknife``: delete-a-group jackknife over ``draws`` random groups,
    normal interval with the jackknife standard error. ``subsample``: ``draws`` subsets of n/2
    images without replacement, Politis-Romano interval (deviations scaled by sqrt(m/n))."""
    if method == "none":
        return None
    if method not in INTERVALS:
        raise UsageError(f"interval {method!r}: use one of {', '.join(INTERVALS)}")
    cols = rows if cols is None else cols
    n = len(rows[0])
    if draws < 2 or (method == "jackknife" and draws > n):
        raise UsageError(f"an interval needs 2 to n (= {n}) draws, got {draws}")
    generator = np.random.default_rng(seed)
    order = generator.permutation(n)
    if method == "jackknife":
        groups = np.array_split(order, draws)
        keeps = [np.setdiff1d(order, g) for g in groups]
    else:
        keeps = [np.sort(generator.choice(n, n // 2, replace=False)) for _ in range(draws)]
    values = []
    for keep in keeps:
        index = torch.as_tensor(keep, device=rows[0].device)
        part = [x[index] for x in rows]
        values.append(matrix(measure, part, part if cols is rows else [y[index] for y in cols]))
    stack = torch.stack(values)
    if method == "jackknife":
        se = ((draws - 1) / draws * (stack - stack.mean(0)).square().sum(0)).sqrt()
        return Interval(observed - 1.959964 * se, observed + 1.959964 * se, method, draws)
    scale = (n // 2 / n) ** 0.5
    deviations = stack - observed
    lo_q, hi_q = torch.quantile(deviations, torch.tensor([0.025, 0.975], dtype=stack.dtype,
                                                          device=stack.device), dim=0)
    return Interval(observed - scale * hi_q, observed - scale * lo_q, method, draws)
