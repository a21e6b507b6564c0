"""The interface every task implements: labelled train / val / test splits of images.

A ``Split`` is a list of opaque items (usually paths relative to the dataset root) with integer
labels and a loader turning an item into a PIL RGB image. Its ``manifest_digest`` (items, labels
and, for file-backed items, each file's size, mtime_ns and ctime_ns) goes into the feature-cache
key, so a changed file list or a file rewritten under the same name never reuses stale features.
ctime_ns matters because no user call can set it back: an image rewritten in place with its mtime
restored (``os.utime``, ``cp --preserve=timestamps``) still gets new features. It also changes on
``chmod``/``chown`` or a copy of the dataset, which only costs a re-extraction.

Datasets without an official validation split get ``holdout_split``: within each class, items
are ordered by a stable hash of their name and the first fraction is held out, so everybody gets
the same split from the file names alone, whatever the file system's listing order.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.errors import BenchError
from bench.paths import data_root  # noqa: F401  (tasks import it from here)

SPLITS = ("train", "val", "test")


class DatasetError(BenchError, RuntimeError):
    """Missing or malformed data; the message says what is wrong and how to fix it."""


class ManualDownloadError(DatasetError):
    """Data that only a person can fetch (a licence to accept, a dead URL): ``instructions`` say
    how, over several lines, and ``bench data download`` prints them before this one-line error."""

    def __init__(self, task: str, instructions: str):
        super().__init__(f"{task}: the data must be fetched by hand, as the instructions of "
                         f"`bench data download --task {task}` say")
        self.instructions = instructions


def problems_error(task: str, problems: list[str]) -> DatasetError:
    """One error, one line, for ``verify``'s problems: the first, and where to read them all."""
    first, *rest = problems[0].splitlines()
    if len(problems) > 1 or rest:
        more = f"{len(problems) - 1} more problem(s); " if len(problems) > 1 else ""
        first += f" ({more}`bench data verify --task {task}` shows them all)"
    return DatasetError(first)


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
    root: Path | None = None  # items are file paths relative to it (their stat goes in the digest)
    sources: tuple[Path, ...] = ()  # files the items are read from when items are not files
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.items) != len(self.labels):
            raise ValueError(f"split {self.name}: {len(self.items)} items, {len(self.labels)} labels")
        if len(set(self.items)) != len(self.items):  # the manifest and the cache rows key on them
            seen: set[Any] = set()
            twice = next(item for item in self.items if item in seen or seen.add(item))
            raise DatasetError(f"split {self.name}: item {twice!r} is listed twice; every item "
                               "of a split must be named once (fix the task's file lists)")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Any:
        return self.loader(self.items[index])

    def manifest_digest(self) -> str:
        """sha256 of items and labels, plus size, mtime_ns and ctime_ns of each file when items
        are files, and of each of ``sources``.

        Computed once per Split (one stat per file), however many cache entries ask for it.
        """
        if self._digest is None:
            h = hashlib.sha256()
            for item, label in zip(self.items, self.labels.tolist()):
                h.update(f"{item}\t{label}{self._file_stamp(item)}\n".encode())
            for source in self.sources:
                h.update(f"{source.name}{_stamp(source)}\n".encode())
            self._digest = h.hexdigest()
        return self._digest

    def _file_stamp(self, item: Any) -> str:
        return "" if self.root is None else _stamp(self.root / item)

    def subset(self, indices: Sequence[int], name: str | None = None) -> Split:
        idx = list(indices)
        return Split(name or self.name, [self.items[i] for i in idx], self.labels[idx], self.loader,
                     self.root, self.sources)


def _stamp(path: Path) -> str:
    try:
        stat = os.stat(path)
    except OSError:
        return "\tmissing"  # the loader names the file when it is needed
    return f"\t{stat.st_size}\t{stat.st_mtime_ns}\t{stat.st_ctime_ns}"


@dataclass
class Task(abc.ABC):
    """Base class: subclasses fill ``splits`` lazily through ``build_splits``."""

    name: str = ""
    num_classes: int = 0
    headline_metric: str = "top1"  # or "mean_per_class"
    class_names: list[str] = field(default_factory=list)
    description: str = ""
    arguments: dict[str, Any] = field(default_factory=dict, repr=False)  # set by the registry
    # arguments that change no data: where the files are (the manifests identify them), and what
    # ``verify`` expects to find
    identity_excludes: ClassVar[tuple[str, ...]] = ("root", "expected_counts")

    def __post_init__(self) -> None:
        self._splits: dict[str, Split] | None = None

    @property
    def config(self) -> dict[str, Any]:
        """What the task states about its data besides the file manifests (JSON-able)."""
        return {"task": self.name}

    @property
    def identity(self) -> dict[str, Any]:
        """What identifies the task's data in cache keys and results: ``config`` and every
        argument its factory was called with, defaults applied (``registry.create`` records
        them), but ``identity_excludes``. An argument a task forgets to list in ``config``
        therefore still separates its caches."""
        arguments = {k: v for k, v in self.arguments.items() if k not in self.identity_excludes}
        return {**self.config, "arguments": arguments}

    @abc.abstractmethod
    def build_splits(self) -> dict[str, Split]:
        """The task's train, val and test ``Split``s (read once, on first use)."""

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


def check_classes(task: Task) -> list[str]:
    """Refuse (``DatasetError``) a task whose scores would say nothing: fewer than two classes,
    or a split holding images of fewer than two (every score on it would be perfect), naming the
    classes it lacks. Returns one line per split that lacks some classes but not all, naming
    them: its scores leave them out. Reads the splits' labels only (no image)."""
    name = task.name or type(task).__name__
    if task.num_classes < 2:
        raise DatasetError(f"task {name!r} has {task.num_classes} class"
                           f"{'' if task.num_classes == 1 else 'es'}: a classification task "
                           "needs at least 2 (every score would be perfect)")
    names = list(task.class_names) or [str(c) for c in range(task.num_classes)]
    counts = {s: np.bincount(task.split(s).labels, minlength=task.num_classes) for s in SPLITS}
    notes = []
    for split in SPLITS:
        absent = np.flatnonzero(counts[split][: task.num_classes] == 0)
        if not len(absent):
            continue
        shown = [f"{names[c]!r} ({', '.join(f'{s} {counts[s][c]}' for s in SPLITS)})"
                 for c in absent[:5]]
        listed = ", ".join(shown) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        present = task.num_classes - len(absent)
        if present < 2:
            raise DatasetError(
                f"task {name!r}: the {split} split holds images of {present} class only, so "
                f"every score on it would be perfect; no image there of {listed}. Give every "
                "class images in train, val and test (a class split by a holdout needs at least "
                "3 images)")
        notes.append(f"task {name!r}: the {split} split has no image of {len(absent)} "
                     f"class{'es' * (len(absent) > 1)}: {listed}; its scores leave "
                     f"{'them' if len(absent) > 1 else 'it'} out")
    return notes


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
