"""What the comparison families share: a frozen-backbone base, weight-file helpers, transforms.

Weights always reach a model through a file (downloaded, given by path or, for test-sized presets,
seeded random weights written once under ``bench.features.weights.weights_dir()``), so tests exercise the
same loading code as real weights and the digest is always the file's sha256.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.backbone import TOKENS, Backbone, FeaturePoint
from bench.features.weights import Weights, WeightsError, WeightsFile, load_checkpoint, offline

RANDOM_LICENCE = "none (random weights)"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- shared by the families of this package ------------------------------------------------------
class FrozenBackbone(Backbone):
    """A backbone whose config and preprocessing are fixed when it is built (weights loaded)."""

    def __init__(
        self,
        config: dict[str, Any],
        transform: Callable[[Any], torch.Tensor],
        input_size: int,
        default_layers: tuple[str, ...],
        default_pool: str,
        digest: str | None = None,
    ):
        super().__init__()
        self.family = config["family"]
        self._config = config
        self._transform = transform
        self.input_size = input_size
        self.default_layers = default_layers
        self.default_pool = default_pool
        self._digest = digest

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def transform(self) -> Callable[[Any], torch.Tensor]:
        return self._transform


def frozen(module: nn.Module) -> nn.Module:
    """Inference mode for good: eval statistics, no gradients."""
    return module.eval().requires_grad_(False)


TIMM_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's Hub repos hold, in that order


def timm_release(tag: str, licence: str, origin: str, paper: str, input_size: int = 224,
                 arguments: tuple[str, ...] = ("model", "weights", "seed", "arch")) -> Weights:
    """The release of a timm tag: its Hub repo ``timm/TAG`` (the ``hf_hub_id`` of timm's
    pretrained config), ImageNet normalisation; sizes are not published: unknown."""
    return Weights((WeightsFile(TIMM_FILES[0], alternatives=TIMM_FILES[1:]),),
                   hub_id=f"timm/{tag}", input_size=input_size, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD, licence=licence, origin=origin, paper=paper,
                   arguments=arguments)


def hub_file(repo_id: str, filenames: Sequence[str]) -> Path:
    """A weights file of a Hugging Face Hub repo (the first of ``filenames`` it has), via HF's cache."""
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except Exception as e:  # offline-and-not-cached, missing file, network: try the next name
            errors.append(f"{filename}: {type(e).__name__}")
    mode = " and downloads are off (HF_HUB_OFFLINE=1)" if offline() else ""
    raise WeightsError(
        f"weights of {repo_id} are not in the Hugging Face cache{mode} ({'; '.join(errors)}). "
        f"On a machine with network run `huggingface-cli download {repo_id} {filenames[0]}` and "
        f"copy the cache ($HF_HOME, default ~/.cache/huggingface), or download "
        f"https://huggingface.co/{repo_id}/resolve/main/{filenames[0]} and pass its path as weights=.",
        source=f"https://huggingface.co/{repo_id}/resolve/main/{filenames[0]}")


def load_state_dict_file(path: str | os.PathLike, kind: str = "PyTorch") -> dict[str, Any]:
    """The object stored in a weights file: safetensors, or a torch pickle of tensors only.

    A damaged or unsafe file raises ``WeightsError`` naming it (``bench.features.weights.load_checkpoint``).
    """
    return load_checkpoint(path, kind)


def resize_crop(
    size: int,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Callable[[Any], torch.Tensor]:
    """Resize the short side to size / crop_pct, centre-crop size, to [0, 1], then normalise if given."""
    from torchvision import transforms as T

    mode = T.InterpolationMode(interpolation)
    steps: list[Any] = [T.Resize(int(size / crop_pct), mode), T.CenterCrop(size), T.ToTensor()]
    if mean is not None:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def block_points(depth: int, what: str) -> list[FeaturePoint]:
    """``block1`` .. ``block{depth}``: token outputs of each transformer block (1-based)."""
    return [
        FeaturePoint(f"block{i}", TOKENS, f"tokens after block {i} of {depth} {what}", has_cls=True)
        for i in range(1, depth + 1)
    ]


def block_numbers(layers: Sequence[str]) -> list[int]:
    """The sorted 1-based block numbers among requested ``block{i}`` layers."""
    return sorted({int(layer[5:]) for layer in layers if layer.startswith("block")})
