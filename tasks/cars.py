"""Stanford Cars (196 classes): 8,144 train / 8,041 test. The official URL is dead, so no download.

Two layouts are read, whichever is under the data root (torchvision's first):

- torchvision ``StanfordCars``: ``ROOT/stanford_cars/`` with ``cars_train/``, ``cars_test/``
  (Kaggle's nested ``cars_train/cars_train/`` is accepted too), ``devkit/cars_meta.mat``
  (``class_names``), ``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat``
  (``annotations`` structs: ``fname``, 1-based ``class``);
- the Kaggle class-folder copy (jutrera/stanford-car-dataset-by-classes-folder):
  ``ROOT/stanford-car-dataset-by-classes-folder/`` with ``names.csv`` (one class name a line),
  ``anno_train.csv``/``anno_test.csv`` (``fname,x1,y1,x2,y2,class``, 1-based, no header) and
  ``car_data/car_data/{train,test}/<class name>/<fname>``. Labels come from the csv files, not
  from the folder names (which lose characters such as '/').

There is no val: val is ``bench.task.holdout_split`` of train keyed on the image FILE NAME
(``00001.jpg``, the same in both layouts), so both layouts give the same split.
"""

from __future__ import annotations

import csv
from typing import Any

from bench.features.filetask import FileTask, Partitions
from bench.registry import register_task
from bench.task import DatasetError, data_root

OFFICIAL = {"classes": 196, "train": 8144, "test": 8041}
TORCHVISION, KAGGLE = "stanford_cars", "stanford-car-dataset-by-classes-folder"
LAYOUTS = {
    TORCHVISION: ("cars_train", "cars_test", "devkit/cars_meta.mat", "devkit/cars_train_annos.mat",
                  "cars_test_annos_withlabels.mat"),
    KAGGLE: ("names.csv", "anno_train.csv", "anno_test.csv", "car_data/car_data/train",
             "car_data/car_data/test"),
}

INSTRUCTIONS = """Stanford Cars cannot be downloaded automatically: its official URL is dead
(https://github.com/pytorch/vision/issues/7545). Put ONE of these layouts under {root}:

A) torchvision's layout, {root}/stanford_cars/:
   1. images: the Kaggle bundle jessicali9530/stanford-cars-dataset, e.g.
        kaggle datasets download jessicali9530/stanford-cars-dataset --unzip -p {root}/stanford_cars
      giving cars_train/ and cars_test/ (the nested cars_train/cars_train/ is fine);
   2. devkit/ (cars_meta.mat, cars_train_annos.mat): car_devkit.tgz attached to that issue,
        https://github.com/pytorch/vision/files/11644847/car_devkit.tgz
        tar xzf car_devkit.tgz -C {root}/stanford_cars
   3. test labels: cars_test_annos_withlabels.mat, linked from
        https://github.com/pytorch/vision/issues/7545#issuecomment-1631441616
      saved as {root}/stanford_cars/cars_test_annos_withlabels.mat

B) the Kaggle class-folder copy, {root}/stanford-car-dataset-by-classes-folder/:
        kaggle datasets download jutrera/stanford-car-dataset-by-classes-folder --unzip \\
            -p {root}/stanford-car-dataset-by-classes-folder
   (names.csv, anno_train.csv, anno_test.csv, car_data/car_data/{{train,test}}/<class>/*.jpg)

Then check it with `bench data verify --task cars`."""


class Cars(FileTask):
    def __init__(self, root: str | None, expected_counts: dict[str, int] | None, val_fraction: float):
        base = data_root(root)
        self.layout = TORCHVISION if (base / TORCHVISION).exists() or not (base / KAGGLE).exists() else KAGGLE
        super().__init__("cars", base / self.layout, base, "Stanford Cars",
                         expected_counts=expected_counts, val_fraction=val_fraction)
        self.required = LAYOUTS[self.layout]
        self.instructions = INSTRUCTIONS.format(root=base)

    @property
    def fix(self) -> str:
        return "See `bench data download --task cars` for where to get the files."

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "dataset": "Stanford Cars", "layout": self.layout}

    def holdout_key(self, item: str) -> str:
        return item.rsplit("/", 1)[-1]

    def missing_layout(self) -> list[str]:
        if not self.dir.exists():
            return [f"cars: found neither {self.root / TORCHVISION} nor {self.root / KAGGLE}.\n"
                    + self.instructions]
        return super().missing_layout()

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        return self._read_torchvision() if self.layout == TORCHVISION else self._read_kaggle()

    def _image_folder(self, name: str) -> str:
        nested = f"{name}/{name}"
        return nested if (self.dir / nested).is_dir() else name

    def _read_torchvision(self) -> tuple[Partitions, list[str]]:
        import numpy as np
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError

        def read(rel: str, key: str) -> Any:
            try:
                return np.atleast_1d(loadmat(self.dir / rel, squeeze_me=True)[key])
            except (MatReadError, OSError, ValueError, TypeError, KeyError) as e:
                raise DatasetError(
                    f"cannot read {key!r} from {self.dir / rel}: {e}. {self.fix}"
                ) from e

        names = [str(n) for n in read("devkit/cars_meta.mat", "class_names")]
        parts: Partitions = {}
        for split, rel in (("train", "devkit/cars_train_annos.mat"),
                           ("test", "cars_test_annos_withlabels.mat")):
            annotations = read(rel, "annotations")
            if "class" not in (annotations.dtype.names or ()):
                raise DatasetError(f"{self.dir / rel} has no 'class' labels (cars_test_annos.mat "
                                   f"without labels?). {self.fix}")
            folder = self._image_folder(f"cars_{split}")
            parts[split] = ([f"{folder}/{a['fname']}" for a in annotations],
                            [int(a["class"]) - 1 for a in annotations])
        return parts, names

    def _read_kaggle(self) -> tuple[Partitions, list[str]]:
        names = [line.strip() for line in (self.dir / "names.csv").read_text().splitlines()
                 if line.strip()]
        parts: Partitions = {}
        for split in ("train", "test"):
            folder = self.dir / "car_data/car_data" / split
            found = {p.name: p.relative_to(self.dir).as_posix() for p in folder.glob("*/*")}
            items, labels, missing = [], [], []
            csv_path = self.dir / f"anno_{split}.csv"
            with open(csv_path, newline="") as f:
                for number, row in enumerate(csv.reader(f), 1):
                    if len(row) != 6 or not row[5].strip().isdigit():
                        raise DatasetError(f"{csv_path}:{number}: expected fname,x1,y1,x2,y2,class, "
                                           f"got {row!r}. {self.fix}")
                    fname = row[0].strip()
                    if fname not in found:
                        missing.append(fname)
                    items.append(found.get(fname, ""))
                    labels.append(int(row[5]) - 1)
            if missing:
                raise DatasetError(f"{len(missing):,} image(s) listed in {csv_path} are in no class "
                                   f"folder of {folder}: {', '.join(missing[:10])}. {self.fix}")
            parts[split] = (items, labels)
        return parts, names


@register_task("cars", description="Stanford Cars, 196 classes (manual download: torchvision or "
               "Kaggle layout); val = 10% holdout of train")
def cars(root: str | None = None, expected_counts: dict[str, int] | None = OFFICIAL,
         val_fraction: float = 0.1) -> Cars:
    """``expected_counts=None`` skips the comparison with the official counts (tiny test trees)."""
    return Cars(root, expected_counts, val_fraction)
