"""Control: raw pixels. What any representation must beat; needs no weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bench.backbone import MAP, Backbone, FeaturePoint
from bench.registry import register_backbone


class Pixels(Backbone):
    family = "control"

    def __init__(self, size: int = 16):
        super().__init__()
        self.input_size = size
        self.default_layers = ("image",)
        self.default_pool = str(size)

    @property
    def config(self) -> dict[str, Any]:
        return {"family": "pixels", "size": self.input_size}

    def transform(self):
        from torchvision import transforms as T

        return T.Compose([T.Resize((self.input_size, self.input_size)), T.ToTensor()])

    def feature_points(self) -> list[FeaturePoint]:
        return [FeaturePoint("image", MAP, "the resized image in [0, 1], 3 channels")]

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return {"image": x}


@register_backbone(
    "pixels",
    description="control: raw RGB pixels resized to 16x16 (no model, no weights)",
    licence="none (no weights)",
)
def pixels(size: int = 16) -> Pixels:
    return Pixels(size)
