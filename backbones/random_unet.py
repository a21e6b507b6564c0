"""CONTROL: a small randomly initialised diffusers U-Net. What architecture alone gives, without training.

If a trained diffusion U-Net's block features beat this by little, the "representation" is mostly
the inductive bias of convolutions and pooling. Weights are drawn from a seed (deterministic, no
file; the digest hashes the state dict); features are the outputs of the library's own down/mid/up
blocks, called in the order of ``UNet2DModel.forward`` and stopped after the deepest requested
block (a plain function without hooks, so ``compile=True`` can compile it: see ``bench.features.compile``).
"""

from __future__ import annotations

from collections.abc import Sequence
import torch

from bench.backbones._shared import FrozenBackbone, frozen, resize_crop
from bench.backbone import MAP, FeaturePoint
from bench.features.compile import StaticCompiled
from bench.registry import register_backbone


class RandomUNet(FrozenBackbone):
    def __init__(
        self, seed: int, size: int, channels: Sequence[int], timestep: int, compile: bool = False
    ):
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
        self.compiled_forward = StaticCompiled(self._truncated_forward, enabled=compile)

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
        return self.compiled_forward(x, tuple(layers))

    def _truncated_forward(self, x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """``UNet2DModel.forward`` up to the deepest of ``layers`` (as in diffusers 0.42: no class
        embedding, no input centring): the outputs of the requested blocks."""
        unet, blocks = self.unet, self.blocks()
        order = list(blocks)
        last = max(order.index(name) for name in layers)
        out: dict[str, torch.Tensor] = {}
        t_emb = unet.time_proj(self.timestep.expand(x.shape[0]))
        emb = unet.time_embedding(t_emb.to(unet.dtype))
        h = unet.conv_in(x)
        skips: tuple[torch.Tensor, ...] = (h,)
        for name in order[: last + 1]:
            block = blocks[name]
            if name.startswith("down"):
                h, residuals = block(hidden_states=h, temb=emb)
                skips += residuals
            elif name == "mid":
                h = block(h, emb)
            else:
                n = len(block.resnets)
                h, skips = block(h, skips[-n:], emb), skips[:-n]
            out[name] = h
        return {name: out[name] for name in layers}


@register_backbone(
    "random-unet",
    description="CONTROL: small diffusers UNet2DModel with seeded random weights (32 px, "
    "channels 32/64/64), middle-block features at timestep 0; what architecture alone gives",
    licence="none (random weights)",
)
def random_unet(
    seed: int = 0,
    size: int = 32,
    channels: Sequence[int] = (32, 64, 64),
    timestep: int = 0,
    compile: bool = False,
) -> RandomUNet:
    return RandomUNet(seed, size, channels, timestep, compile)
