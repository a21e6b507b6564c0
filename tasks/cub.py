"""CUB-200-2011 (200 bird species), read from the official list files (torchvision has no class).

On disk: ``ROOT/CUB_200_2011/`` as the official archive extracts: ``images.txt`` (id, path),
``image_class_labels.txt`` (id, 1-based class), ``train_test_split.txt`` (id, 1 = train),
``classes.txt`` (id, name) and ``images/``. Official split 5,994 train / 5,794 test; there is no
val, so val is ``bench.task.holdout_split`` of the official train (per class, the 10% of files
whose sha256("bench-val/" + relative path) sorts first), and train is the rest.
"""

from __future__ import annotations

from typing import Any

from bench.features.data import Download
from bench.features.filetask import FileTask, Partitions
from bench.registry import register_task
from bench.task import DatasetError, data_root

OFFICIAL = {"classes": 200, "train": 5994, "test": 5794}


class CUB(FileTask):
    required = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
                "images")
    downloads = (
        Download(
            "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
            md5="97eceeb196236b17998738112f37df78",
            creates="CUB_200_2011",
        ),
    )

    def __init__(self, root: str | None, expected_counts: dict[str, int] | None, val_fraction: float):
        base = data_root(root)
        super().__init__("cub", base / "CUB_200_2011", base, "CUB-200-2011 birds",
                         expected_counts=expected_counts, val_fraction=val_fraction)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "dataset": "CUB-200-2011"}

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        paths = dict(self.read_pairs("images.txt"))
        labels = dict(self.read_pairs("image_class_labels.txt"))
        is_train = dict(self.read_pairs("train_test_split.txt"))
        classes = self.read_pairs("classes.txt")
        names = [name.split(".", 1)[-1].replace("_", " ") for _, name in classes]
        parts: Partitions = {"train": ([], []), "test": ([], [])}
        for image_id, path in sorted(paths.items(), key=lambda kv: int(kv[0])):
            for table, file in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
                if image_id not in table:
                    raise DatasetError(f"{self.dir / file} has no line for image id {image_id} "
                                       f"(listed in images.txt). {self.fix}")
            items, targets = parts["train" if is_train[image_id] == "1" else "test"]
            items.append(f"images/{path}")
            targets.append(int(labels[image_id]) - 1)
        return parts, names


@register_task("cub", description="CUB-200-2011 birds, 200 classes; val = 10% holdout of train")
def cub(root: str | None = None, expected_counts: dict[str, int] | None = OFFICIAL,
        val_fraction: float = 0.1) -> CUB:
    """``expected_counts=None`` skips the comparison with the official counts (tiny test trees)."""
    return CUB(root, expected_counts, val_fraction)
