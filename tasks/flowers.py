"""Oxford Flowers-102, official train / val / test (10 + 10 images per class, the rest test).

On disk: ``ROOT/flowers-102/`` (torchvision's ``Flowers102`` folder, so its download works too):
``jpg/image_XXXXX.jpg`` (from 102flowers.tgz), ``imagelabels.mat`` (``labels``: 1-based class of
image i at position i-1) and ``setid.mat`` (``trnid``/``valid``/``tstid``: 1-based image ids).
Headline metric: mean per-class accuracy, as the dataset's authors report it.
"""

from __future__ import annotations

from typing import Any

from bench.features.data import Download
from bench.features.filetask import FileTask, Partitions
from bench.registry import register_task
from bench.task import DatasetError, data_root

OFFICIAL = {"classes": 102, "train": 1020, "val": 1020, "test": 6149}
URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"


class Flowers(FileTask):
    required = ("jpg", "imagelabels.mat", "setid.mat")
    official_val = True
    downloads = (
        Download(URL + "102flowers.tgz", "52808999861908f626f3c1f4e79d11fa",
                 creates="flowers-102/jpg", into="flowers-102"),
        Download(URL + "imagelabels.mat", "e0620be6f572b9609742df49c70aed4d",
                 creates="flowers-102/imagelabels.mat", into="flowers-102"),
        Download(URL + "setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c",
                 creates="flowers-102/setid.mat", into="flowers-102"),
    )

    def __init__(self, root: str | None, expected_counts: dict[str, int] | None):
        base = data_root(root)
        super().__init__("flowers", base / "flowers-102", base, "Oxford Flowers-102",
                         headline_metric="mean_per_class", expected_counts=expected_counts)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "dataset": "Oxford Flowers-102"}

    def _mat(self, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
        import numpy as np
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError

        path = self.dir / name
        try:
            mat = loadmat(path)
        except (MatReadError, OSError, ValueError, TypeError) as e:
            raise DatasetError(f"cannot read {path}: {e}. Delete it. {self.fix}") from e
        missing = [k for k in keys if k not in mat]
        if missing:
            raise DatasetError(f"{path} lacks {', '.join(missing)}. Delete it. {self.fix}")
        return {k: np.asarray(mat[k]).astype(np.int64).ravel() for k in keys}

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        from torchvision.datasets import Flowers102

        labels = self._mat("imagelabels.mat", ("labels",))["labels"] - 1
        ids = self._mat("setid.mat", ("trnid", "valid", "tstid"))
        parts: Partitions = {}
        for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
            bad = [int(i) for i in ids[key] if not 1 <= i <= len(labels)]
            if bad:
                raise DatasetError(f"{self.dir / 'setid.mat'}: {key} lists image ids {bad[:5]} "
                                   f"beyond the {len(labels)} labels of imagelabels.mat. {self.fix}")
            parts[split] = ([f"jpg/image_{i:05d}.jpg" for i in ids[key]],
                            [int(labels[i - 1]) for i in ids[key]])
        num_classes = int(labels.max()) + 1 if len(labels) else 0
        return parts, list(Flowers102.classes[:num_classes])


@register_task("flowers", description="Oxford Flowers-102, 102 classes, official train/val/test")
def flowers(root: str | None = None, expected_counts: dict[str, int] | None = OFFICIAL) -> Flowers:
    """``expected_counts=None`` skips the comparison with the official counts (tiny test trees)."""
    return Flowers(root, expected_counts)
