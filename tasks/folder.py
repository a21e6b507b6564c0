"""Any ImageFolder tree as a task: ``folder:PATH``. Class names are the folder names, sorted.

Layouts, by which of train/, val/, test/ exist under PATH:

- ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``, with ``PATH/val/<class>/*`` as val when
  present, else val = ``holdout_split`` of train (``val_fraction``);
- ``PATH/train/`` and ``PATH/val/`` only (the ILSVRC convention): val/ is the test set and val
  is a holdout of train;
- ``PATH/<class>/*`` only: test = ``holdout_split`` of everything (``test_fraction``, salt
  "bench-test"), val = holdout of the rest.
Holdouts hash the path relative to PATH, so they do not depend on where the tree lives.
Hidden files and folders (``.ipynb_checkpoints/``, ``.x.png``, ``__MACOSX/``) are never items or
classes; ``bench data verify`` lists them once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.features.filetask import FileTask, Partitions, hidden, list_class_folders
from bench.features.images import IMAGE_EXTENSIONS
from bench.registry import register_task
from bench.task import DatasetError, holdout_split


class Folder(FileTask):
    listed = True

    def __init__(self, root: str, val_fraction: float, test_fraction: float,
                 max_image_pixels: int | None = None):
        path = Path(root).expanduser().resolve()
        super().__init__("folder", path, path, f"image folders under {path}", val_fraction=val_fraction)
        self.test_fraction = test_fraction
        self.max_image_pixels = max_image_pixels
        has = {d: (path / d).is_dir() for d in ("train", "val", "test")}
        self.layout = ("flat" if not has["train"] else "train/test" if has["test"] else
                       "train/val" if has["val"] else "train")
        self.official_val = self.layout == "train/test" and has["val"]
        self.required = ("test",) if self.layout == "train" else ()  # train/ alone: no test

    @property
    def fix(self) -> str:
        return f"Check the folder tree under {self.dir} (see `bench data verify --task folder:PATH`)."

    @property
    def config(self) -> dict[str, Any]:
        extra = {"test": f"holdout {self.test_fraction}"} if self.layout == "flat" else {}
        return {**super().config, "path": str(self.dir), "layout": self.layout, **extra}

    def missing_layout(self) -> list[str]:
        if not self.dir.is_dir():
            return [f"folder: {self.dir} is not a folder. Give an ImageFolder tree: folder:PATH."]
        return super().missing_layout()

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        self.ignored = []
        if self.layout == "flat":
            items, classes = list_class_folders(self.dir, self.dir, self.ignored)
            names = sorted(set(classes))
            index = {name: i for i, name in enumerate(names)}
            labels = [index[c] for c in classes]
            rest, test = holdout_split(items, labels, self.test_fraction, salt="bench-test")
            parts = {"train": ([items[i] for i in rest], [labels[i] for i in rest]),
                     "test": ([items[i] for i in test], [labels[i] for i in test])}
        else:
            folders = {"train": "train", "test": "test" if self.layout == "train/test" else "val"}
            if self.official_val:
                folders["val"] = "val"
            listed = {s: list_class_folders(self.dir / f, self.dir, self.ignored)
                      for s, f in folders.items()}
            names = sorted(set(listed["train"][1]))
            index = {name: i for i, name in enumerate(names)}
            parts = {}
            for split, (items, classes) in listed.items():
                unknown = sorted(set(classes) - set(names))
                if unknown:
                    raise DatasetError(f"folder: {self.dir / folders[split]} has classes that "
                                       f"train/ lacks: {', '.join(unknown[:5])}. {self.fix}")
                parts[split] = (items, [index[c] for c in classes])
        if not parts["train"][0]:
            raise DatasetError(f"folder: no images in class folders under {self.dir}. {self.fix}")
        empty = _empty_class_folders(self.dir if self.layout == "flat" else
                                     [self.dir / f for f in folders.values()])
        if empty:
            raise DatasetError(f"folder: class folder(s) without images: "
                               f"{', '.join(str(e) for e in empty[:5])}. Add images or remove the "
                               f"folder. {self.fix}")
        if len(names) < 2:
            raise DatasetError(f"folder: {self.dir} has {len(names)} class folder ({', '.join(names)}); "
                               f"a classification task needs at least 2. {self.fix}")
        return parts, names


def _empty_class_folders(parents: Path | list[Path]) -> list[Path]:
    """Class folders (children of ``parents``, hidden ones aside) holding no visible image file."""
    empty = []
    for parent in [parents] if isinstance(parents, Path) else parents:
        for class_dir in sorted(p for p in parent.iterdir() if p.is_dir() and not hidden(p.name)):
            if not any(f.name.lower().endswith(IMAGE_EXTENSIONS) and not hidden(f.name)
                       for f in class_dir.iterdir()):
                empty.append(class_dir)
    return empty


@register_task("folder", argument="root", description="folder:PATH, any ImageFolder tree "
               "(train/[val/]test/<class>/ or <class>/)")
def folder(root: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
           max_image_pixels: int | None = None) -> Folder:
    """``max_image_pixels``: largest image decoded (0: no limit; default $BENCH_MAX_IMAGE_PIXELS
    or Pillow's limit); larger images are corrupt (skippable with --skip-corrupt)."""
    if not root:
        raise DatasetError("the folder task needs a path: --task folder:PATH")
    return Folder(root, val_fraction, test_fraction, max_image_pixels)
