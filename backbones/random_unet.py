"""CONTROL: a small randomly initialised diffusers U-Net. What architecture alone gives, without training.

If a trained diffusion U-Net's block features beat this by little, the "representation" is mostly
the inductive bias of convolutions and pooling. Weights are drawn from a seed (deterministic, no
file; the digest hashes the state dict); features come from the library's own forward, captured
by hooks on the down/mid/up blocks and cut short after the deepest requested block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from backbones._shared import FrozenBackbone, frozen, resize_crop
from bench.backbone import MAP, FeaturePoint
from bench.registry import register_backbone


class _Stop(Exception):
    """Raised by the hook on the deepest requested block: the rest of the U-Net is not needed."""


class RandomUNet(FrozenBackbone):
    def __init__(self, seed: int, size: int, channels: Sequence[int], timestep: int):
        from diffusers import UNet2DModel

        config = {
            "family": "random-unet",
            "seed": seed,
            "size": size,
            "channels": list(channels),
            "timestep": timestep,
            "transform": f"resize {size}, centre crop, [-1, 1]",
        }
        half = (0.5, 0.5, 0.5)
        super().__init__(
            config, resize_crop(size, 1.0, "bilinear", half, half), size, ("mid",), "2"
        )
        n = len(channels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DModel(
                sample_size=size,
                block_out_channels=tuple(channels),
                layers_per_block=1,
                down_block_types=("DownBlock2D",) * n,
                up_block_types=("UpBlock2D",) * n,
                norm_num_groups=8,
                attention_head_dim=8,
            )
        self.unet = frozen(unet)
        self.register_buffer("timestep", torch.tensor([timestep]), persistent=False)

    def blocks(self) -> dict[str, torch.nn.Module]:
        """Feature points in execution order: ``down1``.., ``mid``, ``up1``.. (1-based)."""
        unet = self.unet
        return {
            **{f"down{i}": b for i, b in enumerate(unet.down_blocks, 1)},
            "mid": unet.mid_block,
            **{f"up{i}": b for i, b in enumerate(unet.up_blocks, 1)},
        }

    def feature_points(self) -> list[FeaturePoint]:
        return [
            FeaturePoint(name, MAP, f"output of the U-Net's {name} block (random weights)")
            for name in self.blocks()
        ]

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        blocks = self.blocks()
        last = max(layers, key=list(blocks).index)
        out: dict[str, torch.Tensor] = {}

        def capture(name: str):
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                out[name] = output[0] if isinstance(output, tuple) else output  # down: (h, skips)
                if name == last:
                    raise _Stop

            return hook

        handles = [blocks[name].register_forward_hook(capture(name)) for name in set(layers)]
        try:
            self.unet(x, self.timestep)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {name: out[name] for name in layers}


@register_backbone(
    "random-unet",
    description="CONTROL: small diffusers UNet2DModel with seeded random weights (32 px, "
    "channels 32/64/64), middle-block features at timestep 0; what architecture alone gives",
    licence="none (random weights)",
)
def random_unet(
    seed: int = 0, size: int = 32, channels: Sequence[int] = (32, 64, 64), timestep: int = 0
) -> RandomUNet:
    return RandomUNet(seed, size, channels, timestep)
