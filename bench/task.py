"""The interface every task implements: labelled train / val / test splits of images.

A ``Split`` is a list of opaque items (usually paths relative to the dataset root) with integer
labels and a loader turning an item into a PIL RGB image. Its ``manifest_digest`` (items, labels
and, for file-backed items, each file's size, mtime_ns and ctime_ns) goes into the feature-cache
key, so a changed file list or a file rewritten under the same name never reuses stale features.
ctime_ns matters because no user call can set it back: an image rewritten in place with its mtime
restored (``os.utime``, ``cp --preserve=timestamps``) still gets new features. It also changes on
``chmod``/``chown`` or a copy of the dataset, which only costs a re-extraction.

Hidden files and folders (a leading ``.``, ``__MACOSX``: notebook checkpoints, macOS resource
forks) are never items or classes; ``FileTask.ignored`` lists what a listing left out.

Datasets without an official validation split get ``holdout_split``: within each class, items
are ordered by a stable hash of their name and the first fraction is held out, so everybody gets
the same split from the file names alone, whatever the file system's listing order.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError, UsageError
from bench.paths import data_root  # noqa: F401  (tasks import it from here)

SPLITS = ("train", "val", "test")


class DatasetError(BenchError, RuntimeError):
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
    root: Path | None = None  # items are file paths relative to it (their stat goes in the digest)
    sources: tuple[Path, ...] = ()  # files the items are read from when items are not files
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.items) != len(self.labels):
            raise ValueError(f"split {self.name}: {len(self.items)} items, {len(self.labels)} labels")

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


MAX_IMAGE_PIXELS_ENV = "BENCH_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own error threshold (2 x its warning limit)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


def max_image_pixels(explicit: int | None = None) -> int | None:
    """The largest image (width x height) decoded: ``explicit``, else $BENCH_MAX_IMAGE_PIXELS,
    else Pillow's limit. 0 means no limit (for datasets of huge images, on purpose)."""
    if explicit is not None:
        value = explicit
    else:
        text = os.environ.get(MAX_IMAGE_PIXELS_ENV) or str(DEFAULT_MAX_IMAGE_PIXELS)
        value = int(text) if text.strip().isdigit() else -1
    if value < 0:
        raise UsageError(f"{MAX_IMAGE_PIXELS_ENV}={os.environ.get(MAX_IMAGE_PIXELS_ENV)!r} is out "
                         "of range: it must be an integer >= 0 (0: no limit)")
    return value or None


def load_rgb(path: str | os.PathLike, max_pixels: int | None = None) -> Any:
    """Decode an image file fully (truncated files fail here, not later) as 8-bit RGB.

    Images larger than ``max_image_pixels(max_pixels)`` are refused as corrupt (a decompression
    bomb, or set the limit on purpose). Every PIL mode is converted by ``to_rgb``.
    """
    from PIL import Image, UnidentifiedImageError

    limit = max_image_pixels(max_pixels)
    Image.MAX_IMAGE_PIXELS = None  # bench applies ``limit`` itself, naming the file
    try:
        with Image.open(path) as im:
            if limit and im.width * im.height > limit:
                raise CorruptImageError(path, (
                    f"{im.width}x{im.height} = {im.width * im.height:,} pixels exceeds the limit "
                    f"of {limit:,} (a decompression bomb?). To decode large images on purpose, "
                    f"set {MAX_IMAGE_PIXELS_ENV}=N (0: no limit) or the task argument "
                    "max_image_pixels"))
            im.load()
            return to_rgb(upright(im))
    except FileNotFoundError:
        raise DatasetError(f"image file missing: {path}. Run `bench data verify` for the dataset.")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(path, str(e)) from e


# How files become pixels; part of every cache key and result identity (bench.extract, bench.spec),
# so features read before a change to it are never reused. 2: EXIF orientation applied.
IMAGE_READER = "2"


def upright(im: Any) -> Any:
    """The image as a viewer shows it: its EXIF orientation applied (phones store pictures
    sideways with a tag saying so; timm's and torchvision's readers ignore the tag)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im


def to_rgb(im: Any) -> Any:
    """8-bit RGB from any PIL mode, scaled by the mode's range rather than clipped.

    - ``I;16*``: 16-bit, divided by 257 (65535 -> 255).
    - ``I`` (32-bit integer): read as 16-bit data, which is what Pillow decodes 16-bit PNG and
      TIFF files into; divided by 257, values outside 0..65535 clipped.
    - ``F`` (float): taken as [0, 1] unless the maximum exceeds 1, then divided by the maximum;
      negatives and NaN become 0.
    - Alpha (``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, ``P``/``L``/``RGB`` with a transparency
      colour): composited on white (``BACKGROUND``).
    - ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``RGB``: Pillow's conversion.
    """
    import numpy as np
    from PIL import Image

    if im.mode.startswith("I") or im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
            peak = values.max(initial=0.0)
            scaled = values * 255.0 / (peak if peak > 1.0 else 1.0)
        else:
            scaled = values / 257.0
        grey = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode == "La":
        im = im.convert("LA")  # un-premultiplied first: Pillow converts La only to LA
    if im.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def json_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".gif")
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
    downloads: tuple[Any, ...] = ()  # bench.data.Download entries where a public source exists
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

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        """Official {"train", "test"[, "val"]}: (items, 0-based labels), and the class names."""
        raise NotImplementedError

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
                raise DatasetError("\n".join(missing))
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
        from bench.weights import file_digests

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
