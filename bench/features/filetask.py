"""``FileTask``: the base of the image-file datasets. A subclass names its layout and reads its
official file lists; this module turns them into splits (with the val holdout) and checks what is
on disk (layout, counts, labels, files, checksums, decoding) once for every dataset.

Hidden files and folders (a leading ``.``, ``__MACOSX``: notebook checkpoints, macOS resource
forks) are never items or classes; ``FileTask.ignored`` lists what a listing left out.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any

from bench.features.images import IMAGE_EXTENSIONS, load_rgb
from bench.task import SPLITS, DatasetError, Split, Task, holdout_split, problems_error

Partitions = dict[str, tuple[list[str], list[int]]]


class FileTask(Task):
    """Base of the image-file datasets: items are paths relative to the dataset folder ``dir``.

    A subclass lists the required layout (``required``, relative to ``dir``) and reads the
    official file lists in ``read_partitions`` (raising ``DatasetError`` that names the file);
    this class turns them into splits, adding the val holdout when the dataset has no val, and
    implements ``verify`` once for all of them. ``class_names``/``num_classes`` are filled when
    the lists are first read (by ``verify`` or ``split``).
    """

    required: tuple[str, ...] = ()
    official_val = False  # the dataset publishes a val split; else holdout_split makes one
    listed = False  # True when items come from listing folders, so exist by construction
    downloads: tuple[Any, ...] = ()  # bench.features.data.Download entries where a public source exists
    max_image_pixels: int | None = None  # None: $BENCH_MAX_IMAGE_PIXELS or Pillow's limit

    def __init__(
        self,
        name: str,
        directory: Path,
        root: Path,
        description: str,
        headline_metric: str = "top1",
        expected_counts: dict[str, int] | None = None,
        val_fraction: float = 0.1,
    ):
        super().__init__(name=name, headline_metric=headline_metric, description=description)
        self.root, self.dir = Path(root), Path(directory)
        self.expected_counts = dict(expected_counts) if expected_counts else None
        self.val_fraction = val_fraction
        self.count_names: dict[str, str] = {}  # partition -> wording in count messages, if vague
        self.ignored: list[str] = []  # hidden files and folders a listing left out (under dir)
        self._partitions: Partitions | None = None

    @property
    def fix(self) -> str:
        """How to repair missing or damaged data; ends every problem message."""
        return f"Run `bench data download --task {self.name}` (it re-fetches what is missing)."

    @property
    def config(self) -> dict[str, Any]:
        val = "official" if self.official_val else f"holdout {self.val_fraction} of train"
        return {"task": self.name.split(":", 1)[0], "val": val}

    @abc.abstractmethod
    def read_partitions(self) -> tuple[Partitions, list[str]]:
        """Official {"train", "test"[, "val"]}: (items, 0-based labels), and the class names."""

    def holdout_key(self, item: str) -> str:
        """What the val holdout hashes; a layout-independent name where layouts differ."""
        return item

    def load(self, item: str) -> Any:
        return load_rgb(self.dir / item, self.max_image_pixels)

    def missing_layout(self) -> list[str]:
        return [
            f"{self.name}: missing {self.dir / rel}. {self.fix}"
            for rel in self.required
            if not (self.dir / rel).exists()
        ]

    def partitions(self) -> Partitions:
        if self._partitions is None:
            missing = self.missing_layout()
            if missing:
                raise problems_error(self.name, missing)
            parts, names = self.read_partitions()
            self.class_names, self.num_classes = list(names), len(names)
            self._partitions = parts
        return self._partitions

    def build_splits(self) -> dict[str, Split]:
        parts = dict(self.partitions())
        if not self.official_val:
            items, labels = parts["train"]
            train, val = holdout_split(
                [self.holdout_key(i) for i in items], labels, self.val_fraction
            )
            parts["train"] = ([items[i] for i in train], [labels[i] for i in train])
            parts["val"] = ([items[i] for i in val], [labels[i] for i in val])
        return {s: Split(s, parts[s][0], parts[s][1], self.load, self.dir) for s in SPLITS}

    def read_pairs(self, rel: str) -> list[tuple[str, str]]:
        """Lines 'KEY VALUE...' of a list file, split at the first blank; errors name the line."""
        path = self.dir / rel
        pairs = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise DatasetError(f"{path}:{number}: expected 'KEY VALUE', got {line!r}. {self.fix}")
            pairs.append((parts[0], parts[1].strip()))
        return pairs

    def verify(self, full: bool = False) -> list[str]:
        problems = self.missing_layout()
        if problems:
            return problems
        try:
            parts = self.partitions()
        except DatasetError as e:
            return [str(e)]
        for key, expected in (self.expected_counts or {}).items():
            found = self.num_classes if key == "classes" else len(parts.get(key, ([], []))[0])
            what = self.count_names.get(key, key if key == "classes" else f"{key} images")
            if found != expected:
                problems.append(
                    f"{self.name}: found {found:,} {what} in {self.dir}, the official dataset has "
                    f"{expected:,}. {self.fix}"
                )
        for key, (_, labels) in parts.items():
            bad = [label for label in labels if not 0 <= label < self.num_classes]
            if bad:
                problems.append(f"{self.name}: {key} has labels outside 0..{self.num_classes - 1}: "
                                f"{sorted(set(bad))[:5]}. {self.fix}")
        items = [item for its, _ in parts.values() for item in its]
        if not self.listed:
            missing = [str(self.dir / i) for i in items if not (self.dir / i).is_file()]
            problems += _summarise("missing image file", missing, self.fix)
        if full:
            problems += self.check_checksums()
            problems += _summarise("", self.decode_errors(items), "")
        return problems

    def known_checksums(self) -> dict[Path, str]:
        """md5 of files on disk where published: non-archive downloads, archives still present."""
        sums = {}
        for d in self.downloads:
            path = self.root / (d.name if d.is_archive else Path(d.into) / d.name)
            if d.md5 and (path.exists() or not d.is_archive):
                sums[path] = d.md5
        return sums

    def check_checksums(self) -> list[str]:
        from bench.features.weights import file_digests

        problems = []
        for path, md5 in self.known_checksums().items():
            if not path.exists():
                problems.append(f"{self.name}: missing {path}. {self.fix}")
            elif (digest := file_digests(path)["md5"]) != md5:
                problems.append(f"{self.name}: {path} has md5 {digest}, expected {md5}; the file "
                                f"is damaged or another version. Delete it. {self.fix}")
        return problems

    def decode_errors(self, items: list[str], chunk: int = 4096) -> list[str]:
        """Decode every image (threads: decoding releases the GIL); the errors, each naming a file."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        def error(item: str) -> str | None:
            try:
                self.load(item)
            except DatasetError as e:
                return str(e)
            return None

        errors = []
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool, tqdm(
            total=len(items), desc=f"decode {self.name}", unit="img"
        ) as bar:
            for start in range(0, len(items), chunk):
                batch = items[start : start + chunk]
                errors += [e for e in pool.map(error, batch) if e]
                bar.update(len(batch))
        return errors


def _summarise(what: str, entries: list[str], fix: str, limit: int = 10) -> list[str]:
    """At most ``limit`` problem lines, then one line counting the rest."""
    lines = [f"{what} {e}. {fix}".strip() if what else e for e in entries[:limit]]
    if len(entries) > limit:
        lines.append(f"... and {len(entries) - limit:,} more ({len(entries):,} in all)")
    return lines


def hidden(name: str) -> bool:
    """Never an item or a class: a leading ``.`` (``.ipynb_checkpoints``, ``.DS_Store``,
    ``._x.png``) or ``__MACOSX``, as torchvision's ``find_classes`` skips dot folders."""
    return name.startswith(".") or name == "__MACOSX"


def list_class_folders(folder: Path, base: Path,
                       ignored: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(items relative to ``base``, their class folder names) of FOLDER/<class>/<image>, sorted.

    Hidden class folders and files (``hidden``) are left out and, paths relative to ``base``,
    appended to ``ignored`` when given.
    """
    items, classes = [], []
    skipped: list[str] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        rel = class_dir.relative_to(base).as_posix()
        if hidden(class_dir.name):
            skipped.append(rel + "/")
            continue
        with os.scandir(class_dir) as entries:
            names = sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS))
        skipped += [f"{rel}/{n}" for n in names if hidden(n)]
        names = [n for n in names if not hidden(n)]
        items += [f"{rel}/{n}" for n in names]
        classes += [class_dir.name] * len(names)
    if ignored is not None:
        ignored += skipped
    return items, classes
