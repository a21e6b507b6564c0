"""ImageNet-1k (ILSVRC2012): 1,281,167 train / 50,000 val images, 1000 classes. Manual download.

On disk: the dataset folder (``ROOT/imagenet/`` by default, or any folder given as
``imagenet:PATH`` or ``path=...``) holds the ILSVRC2012 folder layout ``train/nXXXXXXXX/*.JPEG``
and ``val/nXXXXXXXX/*.JPEG``. torchvision's ``ImageNet`` layout (``ILSVRC2012_devkit_t12.tar.gz``,
``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar`` in that folder) is unpacked into the same
folders by ``bench data download --task imagenet`` through torchvision's own parsing, which also
writes ``meta.bin`` (class names; without it the names are the WordNet ids).

Splits: the official 50k val is our TEST (ImageNet has no public test labels); our val is
``bench.task.holdout_split`` of the official train (per class, the 10% of files whose
sha256("bench-val/train/WNID/FILE") sorts first) and train is the rest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bench.features.filetask import FileTask, Partitions, list_class_folders
from bench.registry import register_task
from bench.task import DatasetError, ManualDownloadError, data_root

OFFICIAL = {"classes": 1000, "train": 1281167, "test": 50000}
ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")

INSTRUCTIONS = """ImageNet (ILSVRC2012) must be downloaded by hand: log in at https://image-net.org,
accept the terms of access, and from https://image-net.org/challenges/LSVRC/2012/2012-downloads.php
download into {dir}:
    ILSVRC2012_img_train.tar     (138 GB, "Training images (Task 1 & 2)")
    ILSVRC2012_img_val.tar       (6.3 GB, "Validation images (all tasks)")
    ILSVRC2012_devkit_t12.tar.gz (2.5 MB, "Development kit (Task 1 & 2)")
then run `bench data download --task imagenet` again to unpack them there (needs ~150 GB more).
An existing ILSVRC2012 folder tree (train/nXXXXXXXX/*.JPEG, val/nXXXXXXXX/*.JPEG) works as it is:
pass its folder as `--task imagenet:/path/to/it`, or place it at {dir}."""


class ImageNet(FileTask):
    required = ("train", "val")
    listed = True
    identity_excludes = ("root", "path", "expected_counts")  # path: where the tree is

    def __init__(self, root: str | None, path: str | None, expected_counts: dict[str, int] | None,
                 val_fraction: float):
        base = data_root(root)
        directory = Path(path).expanduser() if path else base / "imagenet"
        super().__init__("imagenet", directory, base, "ImageNet-1k (ILSVRC2012)",
                         expected_counts=expected_counts, val_fraction=val_fraction)
        self.instructions = INSTRUCTIONS.format(dir=directory)
        self.count_names = {"test": "val/ images (the official val, our test)"}

    @property
    def fix(self) -> str:
        return "See `bench data download --task imagenet` for how to get or unpack the files."

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "dataset": "ILSVRC2012", "test": "official val"}

    def missing_layout(self) -> list[str]:
        missing = super().missing_layout()
        if missing and all((self.dir / a).is_file() for a in ARCHIVES):
            return [(f"imagenet: the archives in {self.dir} are not unpacked yet; run "
                     "`bench data download --task imagenet` to unpack them.")]
        if missing and not self.dir.exists():
            return [f"imagenet: {self.dir} does not exist.\n{self.instructions}"]
        return missing

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        train_items, train_wnids = list_class_folders(self.dir / "train", self.dir, self.ignored)
        test_items, test_wnids = list_class_folders(self.dir / "val", self.dir, self.ignored)
        wnids = sorted(set(train_wnids))
        index = {w: i for i, w in enumerate(wnids)}
        unknown = sorted(set(test_wnids) - set(wnids))
        if unknown:
            raise DatasetError(f"imagenet: {self.dir / 'val'} has class folders missing from "
                               f"train/: {', '.join(unknown[:5])}. {self.fix}")
        if not test_items and any(f.is_file() for f in os.scandir(self.dir / "val")):
            raise DatasetError(f"imagenet: {self.dir / 'val'} holds images directly, not in "
                               f"nXXXXXXXX class folders; sort them (torchvision's layout does "
                               f"this when unpacking ILSVRC2012_img_val.tar). {self.fix}")
        parts = {"train": (train_items, [index[w] for w in train_wnids]),
                 "test": (test_items, [index[w] for w in test_wnids])}
        return parts, self._class_names(wnids)

    def _class_names(self, wnids: list[str]) -> list[str]:
        """First WordNet lemma from torchvision's meta.bin when present, else the WordNet id."""
        if not (self.dir / "meta.bin").is_file():
            return wnids
        from torchvision.datasets.imagenet import load_meta_file

        names = load_meta_file(str(self.dir))[0]
        return [names[w][0] if w in names else w for w in wnids]

    def known_checksums(self) -> dict[Path, str]:
        from torchvision.datasets.imagenet import ARCHIVE_META

        sums = {self.dir / name: md5 for name, md5 in ARCHIVE_META.values()}
        return {path: md5 for path, md5 in sums.items() if path.is_file()}

    def prepare(self) -> None:
        """Unpack the three archives with torchvision's parsing, each folder renamed into place
        only when complete; without the archives, raise with the download instructions."""
        if not all((self.dir / name).is_file() for name in ARCHIVES):
            raise ManualDownloadError(self.name, self.instructions)
        from torchvision.datasets import imagenet

        root = str(self.dir)
        if not (self.dir / "meta.bin").is_file():
            imagenet.parse_devkit_archive(root)
        for split, parse in (("val", imagenet.parse_val_archive),
                             ("train", imagenet.parse_train_archive)):
            if (self.dir / split).is_dir():
                continue
            partial = self.dir / f".{split}.partial"
            if partial.exists():  # left by an interrupted run
                shutil.rmtree(partial)
            parse(root, folder=partial.name)
            os.replace(partial, self.dir / split)


@register_task("imagenet", argument="path", description="ImageNet-1k (manual download); test = "
               "official val, val = 10% holdout of train; imagenet:PATH for an existing tree")
def imagenet(root: str | None = None, path: str | None = None,
             expected_counts: dict[str, int] | None = OFFICIAL, val_fraction: float = 0.1) -> ImageNet:
    """``expected_counts=None`` skips the comparison with the official counts (tiny test trees)."""
    return ImageNet(root, path, expected_counts, val_fraction)
