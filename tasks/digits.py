"""Offline task: scikit-learn's bundled handwritten digits (1,797 8x8 grey images, 10 classes).

Real data that needs no download, for demos and tests. Images become 3-channel PIL images that
each backbone's own transform upsamples to its input size. The split is fixed and seeded:
a class-balanced holdout (``bench.task.holdout_split``) gives test (20%), then val (10% of the
rest); ``limit`` keeps the first N images per split for quick runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.registry import register_task
from bench.task import Split, Task, holdout_split


class Digits(Task):
    def __init__(self, limit: int | None = None):
        super().__init__(
            name="digits",
            num_classes=10,
            headline_metric="top1",
            class_names=[str(i) for i in range(10)],
            description="scikit-learn load_digits, 8x8 grey upsampled, fixed seeded split",
        )
        self.limit = limit

    @property
    def config(self) -> dict[str, Any]:
        return {"task": "digits", "limit": self.limit}

    def build_splits(self) -> dict[str, Split]:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = (data.images / 16.0 * 255.0).round().astype(np.uint8)  # values 0..16 -> 0..255
        labels = data.target.astype(np.int64)
        items = list(range(len(labels)))

        def loader(index: int):
            from PIL import Image

            return Image.fromarray(images[index], mode="L").convert("RGB")

        rest, test = holdout_split(items, labels, fraction=0.2, salt="digits-test")
        train_sub, val_sub = holdout_split(rest, labels[rest], fraction=0.1, salt="digits-val")
        parts = {
            "train": [rest[i] for i in train_sub],
            "val": [rest[i] for i in val_sub],
            "test": test,
        }
        splits = {}
        for name, idx in parts.items():
            idx = idx[: self.limit] if self.limit else idx
            splits[name] = Split(name, idx, labels[idx], loader)
        return splits

    def verify(self, full: bool = False) -> list[str]:
        try:
            import sklearn.datasets  # noqa: F401
        except ImportError:
            return ["scikit-learn is not installed: pip install scikit-learn"]
        return []


@register_task("digits", description="offline: scikit-learn's 8x8 handwritten digits (10 classes)")
def digits(limit: int | None = None) -> Digits:
    return Digits(limit)
