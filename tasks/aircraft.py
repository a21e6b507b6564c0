"""FGVC-Aircraft 2013b at the variant level (100 classes), official train / val / test.

On disk: ``ROOT/fgvc-aircraft-2013b/`` as the official tarball extracts (torchvision's
``FGVCAircraft`` folder): ``data/variants.txt`` (class order), ``data/images_variant_{train,val,
test}.txt`` ("IMAGE_ID VARIANT NAME" lines) and ``data/images/IMAGE_ID.jpg``.
Every image carries a 20-pixel copyright banner at the bottom, which the dataset's README asks
users to remove; ``crop_banner=True`` (the default, recorded in ``config``) crops it. torchvision
does not, so set ``crop_banner=False`` to compare with numbers computed through torchvision.
Headline metric: mean per-class accuracy, the dataset's official measure.
"""

from __future__ import annotations

from typing import Any

from bench.features.data import Download
from bench.features.filetask import FileTask, Partitions
from bench.features.images import load_rgb
from bench.registry import register_task
from bench.task import DatasetError, data_root

OFFICIAL = {"classes": 100, "train": 3334, "val": 3333, "test": 3333}
BANNER = 20  # pixels


class Aircraft(FileTask):
    required = ("data/variants.txt", "data/images_variant_train.txt",
                "data/images_variant_val.txt", "data/images_variant_test.txt", "data/images")
    official_val = True
    downloads = (
        Download(
            "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
            md5=None,  # published only on an HTML page; layout, counts and --full decoding check it
            creates="fgvc-aircraft-2013b",
        ),
    )

    def __init__(self, root: str | None, crop_banner: bool, expected_counts: dict[str, int] | None):
        base = data_root(root)
        super().__init__("aircraft", base / "fgvc-aircraft-2013b", base, "FGVC-Aircraft 2013b",
                         headline_metric="mean_per_class", expected_counts=expected_counts)
        self.crop_banner = crop_banner

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "dataset": "FGVC-Aircraft 2013b", "level": "variant",
                "crop_banner": self.crop_banner}

    def load(self, item: str) -> Any:
        image = load_rgb(self.dir / item)
        if self.crop_banner:
            image = image.crop((0, 0, image.width, image.height - BANNER))
        return image

    def read_partitions(self) -> tuple[Partitions, list[str]]:
        names = [line.strip() for line in (self.dir / "data/variants.txt").read_text().splitlines()
                 if line.strip()]
        index = {name: i for i, name in enumerate(names)}
        parts: Partitions = {}
        for split in ("train", "val", "test"):
            rel = f"data/images_variant_{split}.txt"
            items, labels = [], []
            for image_id, variant in self.read_pairs(rel):
                if variant not in index:
                    raise DatasetError(f"{self.dir / rel}: variant {variant!r} of image {image_id} "
                                       f"is not in data/variants.txt. {self.fix}")
                items.append(f"data/images/{image_id}.jpg")
                labels.append(index[variant])
            parts[split] = (items, labels)
        return parts, names


@register_task("aircraft", description="FGVC-Aircraft 2013b variants, 100 classes, official "
               "train/val/test, 20 px banner cropped")
def aircraft(root: str | None = None, crop_banner: bool = True,
             expected_counts: dict[str, int] | None = OFFICIAL) -> Aircraft:
    """``expected_counts=None`` skips the comparison with the official counts (tiny test trees)."""
    return Aircraft(root, crop_banner, expected_counts)
