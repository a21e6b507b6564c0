"""CIFAR-10/100, DTD, Oxford-IIIT Pets and Food-101, in torchvision's folders under the data root.

A copy fetched by torchvision (``download=True`` with the same root) is used as it is; the files
are read by short readers of the official formats so that ``verify`` can name the exact file.

- ``cifar10``/``cifar100``: ``cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta),
  ``cifar-100-python/`` (train, test, meta); items are ``train/INDEX`` / ``test/INDEX``. The
  batches are pickles, read by an unpickler that builds only dicts, lists, strings, numbers and
  numpy arrays: a crafted batch cannot run code (it is refused as unreadable). The batch files'
  size, mtime and ctime go in the split manifest, as image files' do.
- ``dtd``: ``dtd/dtd/images/<class>/*.jpg`` with ``labels/{train,val,test}N.txt``, official
  partition N (``partition``, 1..10) with its own val.
- ``pets``: ``oxford-iiit-pet/images/*.jpg`` with ``annotations/{trainval,test}.txt``
  (1-based class id in the second column).
- ``food101``: ``food-101/images/<class>/<id>.jpg`` with ``meta/{train,test}.txt`` and
  ``meta/classes.txt``.
All but DTD lack a val split: val is ``bench.task.holdout_split`` of train (10% per class by name
hash, see that function), train the rest.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from bench.features.data import Download
from bench.errors import UsageError
from bench.features.filetask import FileTask, Partitions
from bench.registry import register_task
from bench.task import DatasetError, Split, data_root

VGG = "https://www.robots.ox.ac.uk/~vgg/data/"
# official counts
CIFAR10 = {"classes": 10, "train": 50000, "test": 10000}
CIFAR100 = {"classes": 100, "train": 50000, "test": 10000}
PETS = {"classes": 37, "train": 3680, "test": 3669}
FOOD101 = {"classes": 101, "train": 75750, "test": 25250}
DTD47 = {"classes": 47, "train": 1880, "val": 1880, "test": 1880}


class Cifar(FileTask):
    listed = True  # items are rows of the batch arrays, not files

    def __init__(self, root: str | None, classes: int, expected_counts: dict[str, int] | None,
                 val_fraction: float):
        base = data_root(root)
        self.classes = classes
        folder = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
        super().__init__(f"cifar{classes}", base / folder, base, f"CIFAR-{classes}",
                         expected_counts=expected_counts, val_fraction=val_fraction)
        self.batches = ({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
                        if classes == 10 else {"train": ["train"], "test": ["test"]})
        self.meta = "batches.meta" if classes == 10 else "meta"
        self.required = (*self.batches["train"], *self.batches["test"], self.meta)
        archive = f"cifar-{classes}-python.tar.gz"
        md5 = "c58f30108f718f92721af3b95e74349a" if classes == 10 else "eb9058c3a382ffc7106e4002c42a8d85"
        self.downloads = (Download(f"https://www.cs.toronto.edu/~kriz/{archive}", md5, folder),)
        self._images: dict[str, np.ndarray] = {}

    def _unpickle(self, name: str) -> dict[str, Any]:
        try:
            with open(self.dir / name, "rb") as f:
                batch = _ArraysOnly(f, encoding="latin1").load()
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
            raise DatasetError(f"cannot read {self.dir / name}: {e}. Delete it. {self.fix}") from e
        if not isinstance(batch, dict):
            raise DatasetError(f"cannot read {self.dir / name}: not a CIFAR batch (a "
                               f"{type(batch).__name__}). Delete it. {self.fix}")
        return batch

    def build_splits(self) -> dict[str, Split]:
        """Items are rows of the batch files: the files' stamps stand for the images'."""
        splits = super().build_splits()
        files = {s: self.batches["test" if s == "test" else "train"] for s in splits}
        return {s: Split(s, split.items, split.labels, split.loader, None,
                         tuple(self.dir / name for name in (*files[s], self.meta)))
                for s, split in splits.items()}

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        label_key = "labels" if self.classes == 10 else "fine_labels"
        parts: Partitions = {}
        for split, names in self.batches.items():
            data, labels = [], []
            for name in names:
                batch = self._unpickle(name)
                data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels += [int(v) for v in batch[label_key]]
            self._images[split] = np.concatenate(data).transpose(0, 2, 3, 1)
            parts[split] = ([f"{split}/{i:05d}" for i in range(len(labels))], labels)
        meta = self._unpickle(self.meta)
        return parts, list(meta["label_names" if self.classes == 10 else "fine_label_names"])

    def load(self, item: str) -> Any:
        from PIL import Image

        split, index = item.split("/")
        return Image.fromarray(self._images[split][int(index)])

    def known_checksums(self) -> dict[Path, str]:
        from torchvision.datasets import CIFAR10, CIFAR100

        dataset = CIFAR10 if self.classes == 10 else CIFAR100
        files = [*dataset.train_list, *dataset.test_list, [dataset.meta["filename"], dataset.meta["md5"]]]
        return {**super().known_checksums(), **{self.dir / name: md5 for name, md5 in files}}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that refuses every global but the few numpy needs to rebuild an array
    (and ``_codecs.encode``, which Python 2 pickles use for bytes): loading cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")),
               *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core"))}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR batch holds only "
                                         "arrays and lists, this file would run code")
        return super().find_class(module, name)


class DTD(FileTask):
    official_val = True

    def __init__(self, root: str | None, partition: int, expected_counts: dict[str, int] | None):
        if not 1 <= partition <= 10:
            raise UsageError(f"dtd: partition must be 1..10, got {partition}")
        base = data_root(root)
        super().__init__("dtd", base / "dtd" / "dtd", base, "Describable Textures (DTD)",
                         expected_counts=expected_counts)
        self.partition = partition
        self.required = ("images", *(f"labels/{s}{partition}.txt" for s in ("train", "val", "test")))
        self.downloads = (Download(VGG + "dtd/download/dtd-r1.0.1.tar.gz",
                                   "fff73e5086ae6bdbea199a49dfb8a4c1", "dtd/dtd", into="dtd"),)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "partition": self.partition}

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        lists = {s: (self.dir / f"labels/{s}{self.partition}.txt").read_text().split()
                 for s in ("train", "val", "test")}
        names = sorted({line.split("/", 1)[0] for lines in lists.values() for line in lines})
        index = {name: i for i, name in enumerate(names)}
        parts = {s: ([f"images/{line}" for line in lines], [index[line.split("/", 1)[0]] for line in lines])
                 for s, lines in lists.items()}
        return parts, names


class Pets(FileTask):
    required = ("images", "annotations/trainval.txt", "annotations/test.txt")
    downloads = (
        Download(VGG + "pets/data/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c",
                 "oxford-iiit-pet/images", into="oxford-iiit-pet"),
        Download(VGG + "pets/data/annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f",
                 "oxford-iiit-pet/annotations", into="oxford-iiit-pet"),
    )

    def __init__(self, root: str | None, expected_counts: dict[str, int] | None, val_fraction: float):
        base = data_root(root)
        super().__init__("pets", base / "oxford-iiit-pet", base, "Oxford-IIIT Pets",
                         expected_counts=expected_counts, val_fraction=val_fraction)
        self.count_names = {"train": "trainval images"}

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        parts: Partitions = {}
        breeds: dict[int, str] = {}
        for split, rel in (("train", "annotations/trainval.txt"), ("test", "annotations/test.txt")):
            pairs = self.read_pairs(rel)
            labels = [int(rest.split()[0]) - 1 for _, rest in pairs]
            for (image_id, _), label in zip(pairs, labels):
                breeds[label] = " ".join(w.title() for w in image_id.rsplit("_", 1)[0].split("_"))
            parts[split] = ([f"images/{image_id}.jpg" for image_id, _ in pairs], labels)
        count = max(breeds) + 1 if breeds else 0
        return parts, [breeds.get(i, str(i)) for i in range(count)]


class Food101(FileTask):
    required = ("images", "meta/train.txt", "meta/test.txt", "meta/classes.txt")
    downloads = (Download("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                          "85eeb15f3717b99a5da872d97d918f87", "food-101"),)

    def __init__(self, root: str | None, expected_counts: dict[str, int] | None, val_fraction: float):
        base = data_root(root)
        super().__init__("food101", base / "food-101", base, "Food-101",
                         expected_counts=expected_counts, val_fraction=val_fraction)

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        names = (self.dir / "meta/classes.txt").read_text().split()
        index = {name: i for i, name in enumerate(names)}
        parts: Partitions = {}
        for split in ("train", "test"):
            lines = (self.dir / f"meta/{split}.txt").read_text().split()
            unknown = sorted({line.split("/", 1)[0] for line in lines} - set(index))
            if unknown:
                raise DatasetError(f"{self.dir}/meta/{split}.txt names classes missing from "
                                   f"meta/classes.txt: {', '.join(unknown[:5])}. {self.fix}")
            parts[split] = ([f"images/{line}.jpg" for line in lines],
                            [index[line.split("/", 1)[0]] for line in lines])
        return parts, names


@register_task("cifar10", description="CIFAR-10, 10 classes, 32 px; val = 10% holdout of train")
def cifar10(root: str | None = None,
            expected_counts: dict[str, int] | None = CIFAR10,
            val_fraction: float = 0.1) -> Cifar:
    return Cifar(root, 10, expected_counts, val_fraction)


@register_task("cifar100", description="CIFAR-100 (fine labels), 100 classes, 32 px; val = 10% "
               "holdout of train")
def cifar100(root: str | None = None,
             expected_counts: dict[str, int] | None = CIFAR100,
             val_fraction: float = 0.1) -> Cifar:
    return Cifar(root, 100, expected_counts, val_fraction)


@register_task("dtd", description="Describable Textures, 47 classes, official split 1 of 10 "
               "(train/val/test)")
def dtd(root: str | None = None, partition: int = 1,
        expected_counts: dict[str, int] | None = DTD47) -> DTD:
    return DTD(root, partition, expected_counts)


@register_task("pets", description="Oxford-IIIT Pets, 37 breeds; val = 10% holdout of trainval")
def pets(root: str | None = None,
         expected_counts: dict[str, int] | None = PETS,
         val_fraction: float = 0.1) -> Pets:
    return Pets(root, expected_counts, val_fraction)


@register_task("food101", description="Food-101, 101 classes; val = 10% holdout of train")
def food101(root: str | None = None,
            expected_counts: dict[str, int] | None = FOOD101,
            val_fraction: float = 0.1) -> Food101:
    return Food101(root, expected_counts, val_fraction)
