"""ADM (OpenAI guided-diffusion) backbones: the paper's diffusion features, and the other checkpoints.

Presets: ``diffusion`` (256x256 unconditional, block 24 at t=90, pool 2: the paper's best linear
probe), ``diffusion-fg`` (block 19 at t=150, pool 4: its best on CUB), the class-conditional
``adm-64/128/256/512`` (label ``class_label``, default 0, for every image), ``adm`` for any
checkpoint given ``flags=`` and ``weights=``, and ``diffusion-tiny``: the 256 structure at 64 px
with seeded random weights, for offline tests. Override any default: ``t=150``, ``noise_seed=1``,
``noise_draws=4``, ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.backbones.adm.backbone import LICENCE, RELEASED, TINY_FLAGS, ADMBackbone, random_weights
from bench.errors import UsageError
from bench.registry import register_backbone


def _preset(name: str, **defaults: Any) -> dict[str, Any]:
    checkpoint = RELEASED[name]
    return dict(flags=checkpoint.flags, weights=checkpoint.weights.url,
                schedule=checkpoint.schedule, released=checkpoint.weights, **defaults)


LAYER_TEMPLATE = "block{block}@t{t}"  # sweep axes block= and t= -> layer name
_CONDITIONAL = {
    "t": 90,
    "layers": ("output_blocks.4",),
    "pool": "2",
}  # 16x16 decoder block, as block 24


@register_backbone(
    "diffusion",
    description="ADM 256x256 unconditional (guided-diffusion), block 24 at t=90, pool 2: the "
    "paper's best ImageNet linear probe",
    layer_template=LAYER_TEMPLATE,
    **_preset("diffusion", t=90, layers=("block24",), pool="2"),
)
@register_backbone(
    "diffusion-fg",
    description="ADM 256x256 unconditional, block 19 at t=150, pool 4: the paper's best on CUB",
    layer_template=LAYER_TEMPLATE,
    **_preset("diffusion", t=150, layers=("block19",), pool="4"),
)
@register_backbone(
    "adm-64",
    description="ADM 64x64 class-conditional (cosine schedule), output_blocks.4 (block 22) at t=90",
    layer_template=LAYER_TEMPLATE,
    **_preset("adm-64", **_CONDITIONAL),
)
@register_backbone(
    "adm-128",
    description="ADM 128x128 class-conditional, output_blocks.4 (block 21) at t=90",
    layer_template=LAYER_TEMPLATE,
    **_preset("adm-128", **_CONDITIONAL),
)
@register_backbone(
    "adm-256",
    description="ADM 256x256 class-conditional, block 24 at t=90",
    layer_template=LAYER_TEMPLATE,
    **_preset("adm-256", **_CONDITIONAL),
)
@register_backbone(
    "adm-512",
    description="ADM 512x512 class-conditional, output_blocks.4 (block 27) at t=90",
    layer_template=LAYER_TEMPLATE,
    **_preset("adm-512", **_CONDITIONAL),
)
@register_backbone(
    "adm",
    description="any guided-diffusion checkpoint: flags={create_model flags}, weights=PATH or URL",
    licence=LICENCE,
    layer_template=LAYER_TEMPLATE,
)
def adm(
    flags: Mapping[str, Any] | None = None, weights: str | None = None, **kwargs: Any
) -> ADMBackbone:
    if flags is None or weights is None:
        raise UsageError(
            "backbone 'adm' needs flags={...guided-diffusion create_model flags...} and "
            f"weights=PATH or URL; released checkpoints have presets: {', '.join(RELEASED)}, "
            "diffusion-fg"
        )
    return ADMBackbone(flags, weights, **kwargs)


@register_backbone(
    "diffusion-tiny",
    description="tiny 256-structured ADM (37 blocks, 64 px, 8M params) with seeded random "
    "weights: offline tests and demos",
    licence="none (random weights)",
    layer_template=LAYER_TEMPLATE,
    flags=TINY_FLAGS,
    seed=0,
    t=90,
    layers=("block24",),
    pool="2",
)
def diffusion_tiny(flags: Mapping[str, Any], seed: int = 0, **kwargs: Any) -> ADMBackbone:
    """Random weights are saved to the weights cache and loaded like a downloaded checkpoint."""
    return ADMBackbone(flags, random_weights(flags, seed), **kwargs)
