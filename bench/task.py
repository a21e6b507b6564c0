"""The interface every task implements: labelled train / val / test splits of images.

A ``Split`` is a list of opaque items (usually paths relative to the dataset root) with integer
labels and a loader turning an item into a PIL RGB image. Its ``manifest_digest`` (items and
labels) goes into the feature-cache key, so a changed file list never reuses stale features.

Datasets without an official validation split get ``holdout_split``: within each class, items
are ordered by a stable hash of their name and the first fraction is held out, so everybody gets
the same split from the file names alone, whatever the file system's listing order.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

SPLITS = ("train", "val", "test")


class DatasetError(RuntimeError):
    """Missing or malformed data; the message says what is wrong and how to fix it."""


class CorruptImageError(DatasetError):
    def __init__(self, item: Any, reason: str):
        super().__init__(
            f"cannot decode image {item}: {reason}. Replace the file (see `bench data verify`) "
            "or pass --skip-corrupt to leave it out and record it in the run."
        )
        self.item = item


@dataclass
class Split:
    name: str
    items: list[Any]
    labels: np.ndarray
    loader: Callable[[Any], Any]  # item -> PIL.Image in RGB

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.items) != len(self.labels):
            raise ValueError(f"split {self.name}: {len(self.items)} items, {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Any:
        return self.loader(self.items[index])

    def manifest_digest(self) -> str:
        h = hashlib.sha256()
        for item, label in zip(self.items, self.labels.tolist()):
            h.update(f"{item}\t{label}\n".encode())
        return h.hexdigest()

    def subset(self, indices: Sequence[int], name: str | None = None) -> "Split":
        idx = list(indices)
        return Split(name or self.name, [self.items[i] for i in idx], self.labels[idx], self.loader)


@dataclass
class Task:
    """Base class: subclasses fill ``splits`` lazily through ``build_splits``."""

    name: str = ""
    num_classes: int = 0
    headline_metric: str = "top1"  # or "mean_per_class"
    class_names: list[str] = field(default_factory=list)
    description: str = ""

    def __post_init__(self) -> None:
        self._splits: dict[str, Split] | None = None

    @property
    def config(self) -> dict[str, Any]:
        """What identifies the task's data besides the file manifests (JSON-able)."""
        return {"task": self.name}

    def build_splits(self) -> dict[str, Split]:
        raise NotImplementedError

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        if self._splits is None:
            self._splits = self.build_splits()
        return self._splits[name]

    def verify(self, full: bool = False) -> list[str]:
        """Problems with the data on disk, each naming the file and the fix; [] when all is well.

        The cheap check (layout, counts) runs before every ``bench run``; ``full`` also decodes
        every image and checks checksums where known.
        """
        return []


def holdout_split(
    items: Sequence[Any], labels: Sequence[int], fraction: float = 0.1, salt: str = "bench-val"
) -> tuple[list[int], list[int]]:
    """(train indices, val indices): a class-balanced, file-name-determined validation holdout.

    Within each class, items are sorted by sha256(salt + str(item)) and the first
    ``max(1, round(fraction * n_class))`` go to validation (classes with a single item stay in
    train). Independent of input order, machine and Python version.
    """
    by_class: dict[int, list[tuple[str, int]]] = {}
    for index, (item, label) in enumerate(zip(items, labels)):
        key = hashlib.sha256(f"{salt}/{item}".encode()).hexdigest()
        by_class.setdefault(int(label), []).append((key, index))
    train, val = [], []
    for members in by_class.values():
        members.sort()
        n_val = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        val += [i for _, i in members[:n_val]]
        train += [i for _, i in members[n_val:]]
    return sorted(train), sorted(val)


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """--data-root, else $BENCH_DATA, else ~/.cache/bench/data."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("BENCH_DATA"):
        return Path(os.environ["BENCH_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bench" / "data"


def load_rgb(path: str | os.PathLike) -> Any:
    """Decode an image file fully (truncated files fail here, not later) as RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image file missing: {path}. Run `bench data verify` for the dataset.")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(path, str(e)) from e


def json_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
