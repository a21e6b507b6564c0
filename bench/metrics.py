"""Per-image predictions with one tie rule, and the registry of the metrics computed from them.

Every number bench reports about a head's predictions comes from a ``Predictions``: the test
metrics, their bootstrap intervals, paired comparisons, the confusion matrix and per-class
accuracy, the ``predictions.npz`` artifact, and the validation scores the grid is selected on.
The tie rule is the one of ``numpy.argsort(-scores, kind="stable")``: among equal scores the
lower class id ranks first (as scikit-learn's ``argmax``).

A metric is a function of ``Predictions`` returning one score in [0, 1] per image, and whether
its average is taken within each class first (``stratified``: mean per-class accuracy), so a
bootstrap resamples images within classes for it. Metrics register with ``@metric(name)``, or
from an installed package through the entry-point group ``bench.metrics`` (a module that
registers, or a ``Metric``). The record, the leaderboard and the CLI read ``names()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.registry import Registry

TOP = 5  # class ids kept per image


class DamagedPredictionsError(BenchError, ValueError):
    """A predictions file that cannot be read whole."""


@dataclass
class Predictions:
    """Each image's ``TOP`` best class ids (best first, ties to the lower id) and its label."""

    top5: np.ndarray  # (N, min(TOP, num_classes)) int class ids
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
        """From (N, C) scores (numpy or torch; higher is better); ties go to the lower class id."""
        scores = np.asarray(logits.detach().float().cpu() if hasattr(logits, "detach") else logits)
        num_classes = num_classes or scores.shape[1]
        order = np.argsort(-scores, axis=1, kind="stable")[:, :min(TOP, scores.shape[1])]
        return cls(order, np.asarray(labels).astype(np.int64), num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def predicted(self) -> np.ndarray:
        """(N,) the top-1 class of each image."""
        return self.top5[:, 0]

    def hits(self) -> tuple[np.ndarray, np.ndarray]:
        """(top-1 hit, top-5 hit) per image, as bool vectors."""
        return self.top5[:, 0] == self.labels, (self.top5 == self.labels[:, None]).any(axis=1)

    def metrics(self, names_: list[str] | None = None) -> dict[str, float]:
        """Every registered metric (or those named), in percent."""
        return {name: get(name).value(self) for name in (names_ or names())}

    def confusion(self) -> np.ndarray:
        """(C, C) counts: true class x predicted class."""
        out = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        np.add.at(out, (self.labels, self.predicted), 1)
        return out

    def per_class(self) -> np.ndarray:
        """Top-1 accuracy of each class in percent (NaN for a class with no image)."""
        confusion = self.confusion()
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * np.diag(confusion) / confusion.sum(1)

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


@dataclass(frozen=True)
class Metric:
    """A per-image score in [0, 1] and how it is averaged (within classes first when stratified)."""

    name: str
    per_image: Callable[[Predictions], np.ndarray]
    stratified: bool = False
    description: str = ""

    def value(self, predictions: Predictions) -> float:
        """The metric in percent."""
        return 100.0 * average(self.per_image(predictions).astype(np.float64),
                               predictions.labels if self.stratified else None)


def average(scores: np.ndarray, labels: np.ndarray | None) -> float:
    """The mean of ``scores``, or with ``labels`` the mean over present classes of class means."""
    if labels is None:
        return float(scores.mean())
    counts = np.bincount(labels)
    sums = np.bincount(labels, weights=scores, minlength=len(counts))
    present = counts > 0
    return float((sums[present] / counts[present]).mean())


METRICS: Registry[Metric] = Registry("metric", Metric, key=lambda metric: metric.name)
add = METRICS.add  # register a Metric (entry points in the group ``bench.metrics`` land here)
names = METRICS.names
get = METRICS.get


def metric(name: str, *, stratified: bool = False, description: str = ""
           ) -> Callable[[Callable[[Predictions], np.ndarray]], Callable[[Predictions], np.ndarray]]:
    """Decorator: register a per-image score function under ``name``."""

    def decorator(fn: Callable[[Predictions], np.ndarray]) -> Callable[[Predictions], np.ndarray]:
        add(Metric(name, fn, stratified, description or (fn.__doc__ or "").strip()))
        return fn

    return decorator


@metric("top1", description="top-1 accuracy")
def _top1(p: Predictions) -> np.ndarray:
    return p.hits()[0]


@metric("top5", description="top-5 accuracy")
def _top5(p: Predictions) -> np.ndarray:
    return p.hits()[1]


@metric("mean_per_class", stratified=True, description="top-1 accuracy averaged over classes")
def _mean_per_class(p: Predictions) -> np.ndarray:
    return p.hits()[0]
