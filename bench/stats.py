"""Uncertainty of benchmark numbers: per-image predictions, bootstrap intervals, paired tests, seeds.

A test accuracy is an estimate from a finite test set (CUB's 5,794 images give top-1 a standard
error of about half a point), so two backbones a few tenths apart may be indistinguishable. This
module keeps what is needed to say so after the fact:

- ``Predictions`` (``bench.metrics``): each test image's top-5 class ids and its label, a few KB
  per 10k images in an ``.npz``, enough to recompute every registered metric and compare runs.
- ``bootstrap_intervals``: percentile intervals over test images (resampled with replacement;
  within each class for stratified metrics such as mean per-class accuracy, so every class keeps
  its size).
- ``compare``: a paired bootstrap of the difference of two runs on the same test images, with
  one decision rule (``Comparison.distinguishable``: two-sided p < 1 - confidence) that
  ``bench compare`` and the leaderboard's ``≈`` both use, and McNemar's exact test on the images
  where exactly one of them is right at top-1.
- ``aggregate_seeds``: mean and sample standard deviation of metrics across seeds.

Metrics are percentages, from the registry of ``bench.metrics``. Only numpy (and scipy for
McNemar) are imported, so wiring this into tracking or the CLI costs no torch import.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bench.errors import UsageError
from bench.metrics import Predictions, get, names

__all__ = ["Predictions", "Intervals", "bootstrap_intervals", "Comparison", "compare",
           "mcnemar_exact", "SeedAggregate", "aggregate_seeds"]

_CHUNK_ELEMENTS = 1 << 24  # resample indices drawn at a time: 16M int64s = 128 MB


# ----------------------------------------------------------------------------- bootstrap


@dataclass
class Intervals:
    """Point estimates and percentile bootstrap intervals per metric, in percent."""

    point: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    confidence: float
    resamples: int


class _ClassLayout:
    """Images grouped by class, for resampling within each class (stratified bootstrap)."""

    def __init__(self, labels: np.ndarray):
        self.order = np.argsort(labels, kind="stable")  # positions of images, class by class
        counts = np.bincount(labels)
        self.counts = counts[counts > 0]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        # per sorted position: where its class starts and how many images the class has
        self.start_of = np.repeat(self.starts, self.counts).astype(np.int64)
        self.count_of = np.repeat(self.counts, self.counts).astype(np.float32)


def _scores(per_image: np.ndarray) -> np.ndarray:
    """Per-image scores as resampled: hits as int8 (exact integer sums), others as float64."""
    per_image = np.asarray(per_image)
    return per_image.astype(np.int8) if per_image.dtype == bool else per_image.astype(np.float64)


def _sum_type(column: np.ndarray) -> type:
    return np.int64 if column.dtype.kind in "iub" else np.float64


def _chunks(resamples: int, n: int) -> Iterator[int]:
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, resamples, per_chunk):
        yield min(per_chunk, resamples - start)


def _plain_means(columns: Sequence[np.ndarray], resamples: int,
                 rng: np.random.Generator) -> np.ndarray:
    """(resamples, M) bootstrap means of M per-image int8 vectors, all resampled alike."""
    n = len(columns[0])
    out = []
    for size in _chunks(resamples, n):
        index = rng.integers(0, n, size=(size, n), dtype=np.int32 if n < 2**31 else np.int64)
        out.append(np.stack([np.take(c, index).sum(axis=1, dtype=_sum_type(c)) / n for c in columns],
                            axis=1))
    return np.concatenate(out)


def _stratified_class_means(column: np.ndarray, labels: np.ndarray, resamples: int,
                            rng: np.random.Generator) -> np.ndarray:
    """(resamples,) bootstrap per-class averages of a per-image int8 vector.

    Each class's images are resampled among themselves, so class sizes stay fixed and every
    present class is scored in every resample.
    """
    layout = _ClassLayout(labels)
    grouped = column[layout.order]
    n = len(column)
    out = []
    for size in _chunks(resamples, n):
        offsets = (rng.random((size, n), dtype=np.float32) * layout.count_of).astype(np.int64)
        offsets = np.minimum(offsets, layout.count_of.astype(np.int64) - 1)  # float rounding
        drawn = np.take(grouped, layout.start_of + offsets)  # (size, N)
        sums = np.add.reduceat(drawn, layout.starts, axis=1, dtype=_sum_type(column))
        out.append((sums / layout.counts).mean(axis=1))
    return np.concatenate(out)


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    return low, high


def _check_bootstrap_args(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def bootstrap_intervals(predictions: Predictions, resamples: int = 1000, confidence: float = 0.95,
                        seed: int = 0) -> Intervals:
    """Percentile bootstrap intervals over test images for every registered metric.

    Unstratified metrics share one resample of the images; each stratified one (mean per class)
    resamples within each class. Seeded, so the same predictions always give the same interval.
    """
    _check_bootstrap_args(resamples, confidence)
    if len(predictions) == 0:
        raise ValueError("cannot bootstrap an empty prediction set")
    rng = np.random.default_rng(seed)
    metrics = [get(name) for name in names()]
    plain = [m for m in metrics if not m.stratified]
    samples = {}
    if plain:
        columns = [_scores(m.per_image(predictions)) for m in plain]
        drawn = 100.0 * _plain_means(columns, resamples, rng)
        samples = {m.name: drawn[:, i] for i, m in enumerate(plain)}
    for m in metrics:
        if m.stratified:
            samples[m.name] = 100.0 * _stratified_class_means(
                _scores(m.per_image(predictions)), predictions.labels, resamples, rng)
    low, high = _percentiles(np.column_stack([samples[m.name] for m in metrics]), confidence)
    return Intervals(
        point={m.name: m.value(predictions) for m in metrics},
        low={m.name: float(v) for m, v in zip(metrics, low)},
        high={m.name: float(v) for m, v in zip(metrics, high)},
        confidence=confidence,
        resamples=resamples,
    )


# ----------------------------------------------------------------------------- paired comparison


@dataclass
class Comparison:
    """Two runs scored on the same test images: the difference ``a - b`` and whether it is real."""

    name_a: str
    name_b: str
    metric: str
    value_a: float
    value_b: float
    difference: float  # value_a - value_b, in points
    low: float  # bootstrap interval of the difference
    high: float
    confidence: float
    p_value: float  # two-sided, paired bootstrap
    only_a_right: int  # top-1 discordant pairs: a right, b wrong
    only_b_right: int
    mcnemar_p: float  # exact McNemar test (binomial on the discordant pairs), top-1
    n: int
    resamples: int

    @property
    def distinguishable(self) -> bool:
        """The one rule for "different" (``bench compare``, the leaderboard's ``≈``): two-sided
        p < 1 - confidence. The interval is built from the same resamples (``_tail_interval``),
        so it excludes 0 exactly when this holds."""
        return self.p_value < 1.0 - self.confidence

    def p_text(self) -> str:
        """``p = 0.0123``, or ``p < 0.002`` (with 1000 resamples) when no resample crossed 0:
        the bootstrap cannot resolve a smaller p than 2 / (resamples + 1)."""
        floor = 2.0 / (self.resamples + 1)
        return f"p < {floor:.2g}" if self.p_value <= floor else f"p = {self.p_value:.3g}"

    def summary(self) -> str:
        level = f"{round(100 * self.confidence)}%"
        alpha = f"{1 - self.confidence:.2g}"
        verdict = (f"{self.name_a if self.difference > 0 else self.name_b} is better (p < "
                   f"{alpha}; the {level} interval excludes 0)" if self.distinguishable else
                   f"not distinguishable (p >= {alpha}; the {level} interval contains 0)")
        return (
            f"{self.name_a} vs {self.name_b} on {self.n} test images, {self.metric}: "
            f"{self.value_a:.2f} vs {self.value_b:.2f}, difference {self.difference:+.2f} points "
            f"({level} paired bootstrap interval [{self.low:+.2f}, {self.high:+.2f}], "
            f"{self.resamples} resamples, {self.p_text()}); {verdict}. At top-1, "
            f"{self.only_a_right} images are right only for {self.name_a} and {self.only_b_right} "
            f"only for {self.name_b} (exact McNemar p = {self.mcnemar_p:.3g})."
        )


def _tail_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The interval [s_(j), s_(B-1-j)] of the sorted resamples, j the largest tail count whose
    p-value 2 (j + 1) / (B + 1) is below 1 - confidence: it excludes 0 exactly when ``compare``'s
    p-value is below 1 - confidence (about the 2.5% and 97.5% percentiles at 95%)."""
    ordered = np.sort(samples)
    j = max(0, math.ceil((1.0 - confidence) * (len(ordered) + 1) / 2.0) - 2)
    return float(ordered[j]), float(ordered[len(ordered) - 1 - j])


def _check_paired(a: Predictions, b: Predictions) -> None:
    if a.num_classes != b.num_classes:
        raise UsageError(f"cannot compare predictions over {a.num_classes} and {b.num_classes} "
                         "classes: they come from different tasks")
    if len(a) != len(b) or not np.array_equal(a.labels, b.labels):
        raise UsageError(
            f"cannot compare: the two prediction sets do not have the same test labels in the "
            f"same order ({len(a)} vs {len(b)} images). A paired comparison needs both runs "
            "scored on the same test split; re-run both on the same task and split.")


def mcnemar_exact(only_a_right: int, only_b_right: int) -> float:
    """Two-sided exact McNemar p-value: binomial(1/2) test on the discordant pairs."""
    discordant = only_a_right + only_b_right
    if discordant == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(only_a_right, discordant, 0.5).pvalue)


def compare(a: Predictions, b: Predictions, metric: str = "top1", names: tuple[str, str] = ("A", "B"),
            resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Paired bootstrap of ``metric(a) - metric(b)`` over the same test images, and McNemar.

    Both runs are resampled with the same image indices (within each class for a stratified
    metric), so what they get right together cancels. The p-value is twice the smaller count of
    resamples at or beyond 0, plus one, over resamples + 1 (never exactly 0); the interval is
    read from the same sorted resamples, so both say the same thing.
    """
    chosen = get(metric)
    _check_bootstrap_args(resamples, confidence)
    _check_paired(a, b)
    rng = np.random.default_rng(seed)
    diff = _scores(chosen.per_image(a)) - _scores(chosen.per_image(b))  # per image
    if chosen.stratified:
        samples = 100.0 * _stratified_class_means(diff, a.labels, resamples, rng)
    else:
        samples = 100.0 * _plain_means([diff], resamples, rng)[:, 0]
    low, high = _tail_interval(samples, confidence)
    tail = min(int((samples <= 0).sum()), int((samples >= 0).sum()))
    value_a, value_b = chosen.value(a), chosen.value(b)
    hit1_a, hit1_b = a.hits()[0], b.hits()[0]
    only_a, only_b = int((hit1_a & ~hit1_b).sum()), int((~hit1_a & hit1_b).sum())
    return Comparison(
        name_a=names[0], name_b=names[1], metric=metric, value_a=value_a, value_b=value_b,
        difference=value_a - value_b, low=low, high=high, confidence=confidence,
        p_value=min(1.0, 2.0 * (tail + 1) / (resamples + 1)),
        only_a_right=only_a, only_b_right=only_b, mcnemar_p=mcnemar_exact(only_a, only_b),
        n=len(a), resamples=resamples,
    )


# ----------------------------------------------------------------------------- seeds


@dataclass
class SeedAggregate:
    """Mean and sample standard deviation (ddof=1) of each metric over ``seeds`` runs."""

    mean: dict[str, float]
    std: dict[str, float]  # NaN with a single seed: a spread needs two runs
    seeds: int


def aggregate_seeds(runs: Sequence[Mapping[str, float]]) -> SeedAggregate:
    """Mean and sample std per metric across runs that differ only in their seed."""
    if not runs:
        raise ValueError("aggregate_seeds needs at least one run's metrics")
    names = list(runs[0])
    for i, run in enumerate(runs):
        if set(run) != set(names):
            raise ValueError(f"run {i} has metrics {sorted(run)}, run 0 has {sorted(names)}; "
                             "aggregate runs of the same protocol only")
    values = {name: np.array([run[name] for run in runs], dtype=np.float64) for name in names}
    return SeedAggregate(
        mean={name: float(v.mean()) for name, v in values.items()},
        std={name: float(v.std(ddof=1)) if len(v) > 1 else math.nan for name, v in values.items()},
        seeds=len(runs),
    )
