"""MAE (He et al. 2022): masked-autoencoder ViT encoders via timm, probed as MAE's authors probe them.

MAE's linear probe (``main_linprobe.py``) takes the CLS token after the encoder's final norm and
feeds it to ``BatchNorm1d(affine=False)`` + Linear, on images resized to 256 and centre-cropped to
224 (bicubic, ImageNet mean/std). The ``cls`` feature point is exactly that token (a 768-d vector for
ViT-B); ``patch-mean`` (average pooling, which changes results by points: mae issues 5, 186),
``tokens`` and ``block{i}`` are there to compare. timm's weights (``*.mae`` tags) are the
pre-trained encoders converted from the official checkpoints; the official files
(https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth) load too, by ``weights=URL``.
"""

from __future__ import annotations

from typing import Any

from bench.backbones._shared import RANDOM_LICENCE, timm_release
from bench.backbones._vit import TimmViT, timm_vit
from bench.registry import register_backbone

LICENCE = "CC-BY-NC 4.0"
TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 32}
PAPER = "He et al. 2022, Masked Autoencoders Are Scalable Vision Learners (arXiv 2111.06377)"
ORIGIN = "https://github.com/facebookresearch/mae (converted by timm)"


@register_backbone(
    "mae",
    description="MAE ViT-B/16 (timm vit_base_patch16_224.mae); default feature = CLS token after "
    "the final norm, as MAE's linear probe",
    released=timm_release("vit_base_patch16_224.mae", LICENCE, ORIGIN, PAPER),
)
@register_backbone(
    "mae-large",
    description="MAE ViT-L/16 (timm vit_large_patch16_224.mae), CLS token",
    released=timm_release("vit_large_patch16_224.mae", LICENCE, ORIGIN, PAPER),
    model="vit_large_patch16_224.mae",
)
@register_backbone(
    "mae-huge",
    description="MAE ViT-H/14 (timm vit_huge_patch14_224.mae), CLS token",
    released=timm_release("vit_huge_patch14_224.mae", LICENCE, ORIGIN, PAPER),
    model="vit_huge_patch14_224.mae",
)
@register_backbone(
    "mae-tiny",
    description="test-sized MAE architecture (3 blocks of width 32, 32 px) with seeded random "
    "weights, saved to and reloaded from the weights dir",
    licence=RANDOM_LICENCE,
    arch=TINY,
    seed=0,
)
def mae(
    model: str = "vit_base_patch16_224.mae",
    weights: str | None = None,
    seed: int | None = None,
    arch: dict[str, Any] | None = None,
) -> TimmViT:
    """``weights``: None = the tag's file on the Hugging Face Hub (cached by huggingface_hub), or a
    path/URL (timm format or the official ``{'model': ...}`` checkpoints)."""
    return timm_vit("mae", model, weights, seed, arch, 0.875, ("cls",), "none")
