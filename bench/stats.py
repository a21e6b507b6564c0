"""Uncertainty of benchmark numbers: per-image predictions, bootstrap intervals, paired tests, seeds.

A test accuracy is an estimate from a finite test set (CUB's 5,794 images give top-1 a standard
error of about half a point), so two backbones a few tenths apart may be indistinguishable. This
module keeps what is needed to say so after the fact:

- ``Predictions``: each test image's top-5 class ids and its label, a few KB per 10k images in an
  ``.npz``, enough to recompute top-1, top-5 and mean per-class accuracy and to compare runs.
- ``bootstrap_intervals``: percentile intervals over test images (resampled with replacement;
  within each class for mean per-class accuracy, so every class keeps its size).
- ``compare``: a paired bootstrap of the difference of two runs on the same test images, and
  McNemar's exact test on the images where exactly one of them is right at top-1.
- ``aggregate_seeds``: mean and sample standard deviation of metrics across seeds.

Metrics are percentages, as in ``bench.probe.metrics``. Only numpy (and scipy for McNemar) are
imported, so wiring this into tracking or the CLI costs no torch import.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError, UsageError

METRICS = ("top1", "top5", "mean_per_class")
_CHUNK_ELEMENTS = 1 << 24  # resample indices drawn at a time: 16M int64s = 128 MB


class DamagedPredictionsError(BenchError, ValueError):
    """A predictions file that cannot be read whole."""


@dataclass
class Predictions:
    """Each test image's top-5 predicted class ids (best first) and its true label."""

    top5: np.ndarray  # (N, min(5, num_classes)) int class ids
    labels: np.ndarray  # (N,) int
    num_classes: int

    def __post_init__(self) -> None:
        self.top5 = np.asarray(self.top5)
        self.labels = np.asarray(self.labels)
        if self.top5.ndim != 2 or self.labels.ndim != 1 or len(self.top5) != len(self.labels):
            raise ValueError(f"predictions need top5 of shape (N, k) and labels of shape (N,); got "
                             f"{self.top5.shape} and {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}); got "
                             f"[{self.labels.min()}, {self.labels.max()}]")

    @classmethod
    def from_logits(cls, logits: Any, labels: Any, num_classes: int | None = None) -> Predictions:
        """From (N, C) scores (numpy or torch; higher is better). Ties go to the lower class id."""
        scores = np.asarray(logits.detach().cpu().float() if hasattr(logits, "detach") else logits)
        num_classes = num_classes or scores.shape[1]
        k = min(5, scores.shape[1])
        top5 = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return cls(top5, np.asarray(labels), num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    def hits(self) -> tuple[np.ndarray, np.ndarray]:
        """(top-1 hit, top-5 hit) per image, as bool vectors."""
        hit1 = self.top5[:, 0] == self.labels
        hit5 = (self.top5 == self.labels[:, None]).any(axis=1)
        return hit1, hit5

    def metrics(self) -> dict[str, float]:
        return {"top1": top1(self), "top5": top5(self), "mean_per_class": mean_per_class(self)}

    def to_bytes(self) -> bytes:
        """A compressed .npz with the smallest integer type that holds the class ids."""
        import io

        dtype = np.int16 if self.num_classes <= np.iinfo(np.int16).max else np.int32
        buffer = io.BytesIO()
        np.savez_compressed(buffer, top5=self.top5.astype(dtype), labels=self.labels.astype(dtype),
                            num_classes=np.int64(self.num_classes))
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        """``DamagedPredictionsError`` when the file is not a whole predictions archive."""
        import zipfile

        try:
            with np.load(path) as data:
                return cls(data["top5"].astype(np.int64), data["labels"].astype(np.int64),
                           int(data["num_classes"]))
        except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
            raise DamagedPredictionsError(f"{path} is damaged or not a predictions archive "
                                          f"({type(e).__name__}: {e})") from e


def top1(predictions: Predictions) -> float:
    return 100.0 * float(predictions.hits()[0].mean())


def top5(predictions: Predictions) -> float:
    return 100.0 * float(predictions.hits()[1].mean())


def mean_per_class(predictions: Predictions) -> float:
    """Top-1 accuracy averaged over the classes present in the labels."""
    hit1 = predictions.hits()[0]
    counts = np.bincount(predictions.labels, minlength=predictions.num_classes)
    correct = np.bincount(predictions.labels, weights=hit1, minlength=predictions.num_classes)
    present = counts > 0
    return 100.0 * float((correct[present] / counts[present]).mean())


# ----------------------------------------------------------------------------- bootstrap


@dataclass
class Intervals:
    """Point estimates and percentile bootstrap intervals per metric, in percent."""

    point: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    confidence: float
    resamples: int

    def mlflow_metrics(self, prefix: str = "test") -> dict[str, float]:
        """``{prefix}_top1_ci95_low``, ``{prefix}_top1_ci95_high``, ... for every metric."""
        tag = f"ci{round(100 * self.confidence)}"
        out = {}
        for name in self.point:
            out[f"{prefix}_{name}_{tag}_low"] = self.low[name]
            out[f"{prefix}_{name}_{tag}_high"] = self.high[name]
        return out


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
        out.append(np.stack([np.take(c, index).sum(axis=1, dtype=np.int64) / n for c in columns],
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
        sums = np.add.reduceat(drawn, layout.starts, axis=1, dtype=np.int64)
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
    """Percentile bootstrap intervals over test images for top1, top5 and mean per-class accuracy.

    top1 and top5 share one resample of the images; mean per class resamples within each class.
    Seeded, so the same predictions always give the same interval.
    """
    _check_bootstrap_args(resamples, confidence)
    if len(predictions) == 0:
        raise ValueError("cannot bootstrap an empty prediction set")
    rng = np.random.default_rng(seed)
    hit1, hit5 = predictions.hits()
    hit1, hit5 = hit1.astype(np.int8), hit5.astype(np.int8)
    topk = 100.0 * _plain_means([hit1, hit5], resamples, rng)
    per_class = 100.0 * _stratified_class_means(hit1, predictions.labels, resamples, rng)
    low, high = _percentiles(np.column_stack([topk, per_class]), confidence)
    return Intervals(
        point=predictions.metrics(),
        low={name: float(v) for name, v in zip(METRICS, low)},
        high={name: float(v) for name, v in zip(METRICS, high)},
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
        """True when the interval of the difference excludes 0."""
        return self.low > 0.0 or self.high < 0.0

    def summary(self) -> str:
        level = f"{round(100 * self.confidence)}%"
        verdict = (f"{self.name_a if self.difference > 0 else self.name_b} is better: the "
                   f"{level} interval excludes 0" if self.distinguishable else
                   f"not distinguishable: the {level} interval contains 0")
        return (
            f"{self.name_a} vs {self.name_b} on {self.n} test images, {self.metric}: "
            f"{self.value_a:.2f} vs {self.value_b:.2f}, difference {self.difference:+.2f} points "
            f"({level} paired bootstrap interval [{self.low:+.2f}, {self.high:+.2f}], "
            f"{self.resamples} resamples, p = {self.p_value:.3g}); {verdict}. At top-1, "
            f"{self.only_a_right} images are right only for {self.name_a} and {self.only_b_right} "
            f"only for {self.name_b} (exact McNemar p = {self.mcnemar_p:.3g})."
        )


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

    Both runs are resampled with the same image indices (within each class for mean per class),
    so what they get right together cancels. The p-value inverts the percentile interval:
    twice the smaller bootstrap tail beyond 0, with a +1 correction so it is never exactly 0.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    _check_bootstrap_args(resamples, confidence)
    _check_paired(a, b)
    rng = np.random.default_rng(seed)
    column = 1 if metric == "top5" else 0
    hits_a, hits_b = a.hits()[column], b.hits()[column]
    diff = hits_a.astype(np.int8) - hits_b.astype(np.int8)  # +1, 0 or -1 per image
    if metric == "mean_per_class":
        samples = 100.0 * _stratified_class_means(diff, a.labels, resamples, rng)
    else:
        samples = 100.0 * _plain_means([diff], resamples, rng)[:, 0]
    low, high = _percentiles(samples, confidence)
    tail = min(int((samples <= 0).sum()), int((samples >= 0).sum()))
    value_a, value_b = a.metrics()[metric], b.metrics()[metric]
    hit1_a, hit1_b = a.hits()[0], b.hits()[0]
    only_a, only_b = int((hit1_a & ~hit1_b).sum()), int((~hit1_a & hit1_b).sum())
    return Comparison(
        name_a=names[0], name_b=names[1], metric=metric, value_a=value_a, value_b=value_b,
        difference=value_a - value_b, low=float(low), high=float(high), confidence=confidence,
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

    def as_metrics(self) -> dict[str, float]:
        """``{metric}_mean`` and ``{metric}_std`` for every metric, e.g. for MLflow."""
        out = {}
        for name in self.mean:
            out[f"{name}_mean"] = self.mean[name]
            out[f"{name}_std"] = self.std[name]
        return out


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
