"""timm Vision Transformers: the DINOv2 reference row and MAE."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bench.backbones._shared import (TIMM_FILES, FrozenBackbone, block_numbers, block_points,
                                     frozen, hub_file)
from bench.backbone import TOKENS, VECTOR, FeaturePoint
from bench.errors import UsageError
from bench.features.weights import file_sha256, random_weights_file, reading_checkpoint, resolve

FINAL_POINTS = ("cls", "patch-mean", "tokens")


class TimmViT(FrozenBackbone):
    """A timm VisionTransformer: final CLS / patch mean / tokens and every block's tokens.

    Intermediate blocks come from timm's ``forward_intermediates``, which stops after the deepest
    requested block when no final output is needed. Register tokens (``*_reg4`` models) are dropped
    so that token outputs are always CLS followed by patch tokens.
    """

    def __init__(
        self,
        net: nn.Module,
        config: dict[str, Any],
        transform: Callable,
        size: int,
        default_layers: tuple[str, ...],
        default_pool: str,
        digest: str,
    ):
        super().__init__(config, transform, size, default_layers, default_pool, digest)
        if getattr(net, "cls_token", None) is None:
            raise UsageError(
                f"{config['model']} has no CLS token; bench's timm ViT wrapper needs one"
            )
        self.net = frozen(net)

    def feature_points(self) -> list[FeaturePoint]:
        dim = self.net.embed_dim
        return [
            FeaturePoint("cls", VECTOR, f"CLS token after the final norm ({dim}-d)"),
            FeaturePoint(
                "patch-mean", VECTOR, f"mean of the patch tokens after the final norm ({dim}-d)"
            ),
            FeaturePoint(
                "tokens", TOKENS, "all tokens after the final norm, CLS first", has_cls=True
            ),
            *block_points(len(self.net.blocks), "(before the final norm; CLS first)"),
        ]

    def _cls_and_patches(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens[:, :1], tokens[:, self.net.num_prefix_tokens :]], dim=1)

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        blocks = block_numbers(layers)
        final = any(layer in FINAL_POINTS for layer in layers)
        out: dict[str, torch.Tensor] = {}
        if blocks:
            result = self.net.forward_intermediates(
                x,
                indices=[b - 1 for b in blocks],
                return_prefix_tokens=True,
                norm=False,
                stop_early=not final,
                output_fmt="NLC",
                intermediates_only=not final,
            )
            x, intermediates = result if final else (None, result)
            for b, (patches, prefix) in zip(blocks, intermediates):
                out[f"block{b}"] = torch.cat([prefix[:, :1], patches], dim=1)
        elif final:
            x = self.net.forward_features(x)
        if final:
            tokens = self._cls_and_patches(x)
            out.update({"cls": tokens[:, 0], "patch-mean": tokens[:, 1:].mean(1), "tokens": tokens})
        return out


def timm_vit(
    family: str,
    model: str,
    weights: str | None,
    seed: int | None,
    arch: dict[str, Any] | None,
    crop_pct: float,
    default_layers: tuple[str, ...],
    default_pool: str,
) -> TimmViT:
    """Build a timm ViT and load its weights from a file: the tag's Hub file, a path/URL, or seeded
    random weights (test presets). Preprocessing is timm's data config with the input size and
    centre-crop fraction of the authors' linear evaluation (``crop_pct``)."""
    import timm
    from timm.data import create_transform, resolve_data_config

    arch = dict(arch or {})

    def create(**kwargs: Any) -> nn.Module:
        return timm.create_model(model, num_classes=0, **arch, **kwargs)

    config: dict[str, Any] = {"family": family, "model": model, "arch": arch}
    if seed is not None:
        path = random_weights_file(config, seed, create)
        config["weights"] = f"random seed {seed}"
    elif weights:
        path = resolve(weights)
        config["weights"] = weights
    else:
        repo = timm.models.get_pretrained_cfg(model).hf_hub_id
        path = hub_file(repo, TIMM_FILES)
        config["weights"] = f"hf-hub:{repo}"
    with reading_checkpoint(path, f"timm {model}"):
        net = create(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    size = net.patch_embed.img_size[0]
    data = {**resolve_data_config(model=net), "input_size": (3, size, size), "crop_pct": crop_pct}
    config["transform"] = data
    return TimmViT(
        net, config, create_transform(**data), size, default_layers, default_pool, file_sha256(path)
    )
