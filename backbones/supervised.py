"""Reference rows: supervised ResNet-50 (torchvision) and DINOv2 ViT-B/14 (timm).

Every leaderboard needs a known upper reference.
"""

from __future__ import annotations

from typing import Any

from bench.backbones._resnet import ResNetBackbone, resnet50_net, torchvision_file
from bench.backbones._shared import (IMAGENET_MEAN, IMAGENET_STD, RANDOM_LICENCE,
                                     load_state_dict_file, timm_release)
from bench.backbones._vit import TimmViT, timm_vit
from bench.registry import register_backbone
from bench.features.weights import (Weights, WeightsFile, file_sha256, random_weights_file,
                                    resolve)

# torchvision's IMAGENET1K_V1 file; its name carries the first 8 hex digits of its sha256 (what
# torchvision checks), its size is published only rounded (97.781 MB): neither is stated here
RESNET50_V1 = Weights(
    (WeightsFile("https://download.pytorch.org/models/resnet50-0676ba61.pth"),),
    input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, licence="BSD-3-Clause",
    origin="torchvision.models.ResNet50_Weights.IMAGENET1K_V1",
    paper="He et al. 2016, Deep Residual Learning (arXiv 1512.03385); 76.13 top-1 (torchvision)",
    arguments=("weights", "width", "seed"))


@register_backbone(
    "resnet50-supervised",
    description="reference: torchvision ResNet-50 trained with labels on ImageNet-1k (IMAGENET1K_V1, "
    "76.1% top-1, the classical recipe), 2048-d average pool",
    released=RESNET50_V1,
)
@register_backbone(
    "resnet50-tiny",
    description="test-sized ResNet-50 (1/8 width, 32 px) with seeded random weights, saved to and "
    "reloaded from the weights dir",
    licence=RANDOM_LICENCE,
    width=0.125,
    size=32,
    seed=0,
)
def resnet50_supervised(
    weights: str = "IMAGENET1K_V1", width: float = 1.0, size: int = 224, seed: int | None = None
) -> ResNetBackbone:
    """``weights``: a torchvision ``ResNet50_Weights`` name (V1 = the classical 76.1% reference;
    V2 = the 2021 recipe, 80.9%), or a path/URL of a torchvision-format state dict."""
    from torchvision.models import ResNet50_Weights
    from torchvision.transforms._presets import ImageClassification

    config: dict[str, Any] = {"family": "resnet50-supervised", "width": width}
    if seed is not None:
        path = random_weights_file(config, seed, lambda: resnet50_net(width))
        config["weights"] = f"random seed {seed}"
        preprocess = ImageClassification(crop_size=size, resize_size=int(size / 0.875))
    elif weights in ResNet50_Weights.__members__:
        path = torchvision_file(ResNet50_Weights[weights].url)
        config["weights"] = weights
        preprocess = ResNet50_Weights[weights].transforms()
    else:
        path = resolve(weights)
        config["weights"] = weights
        preprocess = ImageClassification(crop_size=size, resize_size=int(size / 0.875))
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("fc.")}
    net = resnet50_net(width)
    net.load_state_dict(state, strict=True)
    config["transform"] = {
        "resize": preprocess.resize_size,
        "crop": preprocess.crop_size,
        "mean": preprocess.mean,
        "std": preprocess.std,
        "interpolation": preprocess.interpolation.value,
    }
    return ResNetBackbone(net, config, preprocess, preprocess.crop_size[0], file_sha256(path))


DINOV2_TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 56}


@register_backbone(
    "dinov2",
    description="reference: DINOv2 ViT-B/14 (LVD-142M) via timm at 224 px; default feature = CLS "
    "token + patch mean of the final tokens, as DINOv2's linear evaluation",
    released=timm_release(
        "vit_base_patch14_dinov2.lvd142m", "Apache-2.0",
        "https://github.com/facebookresearch/dinov2 (converted by timm)",
        "Oquab et al. 2023, DINOv2 (arXiv 2304.07193)", input_size=518),
)
@register_backbone(
    "dinov2-tiny",
    description="test-sized DINOv2 architecture (3 blocks of width 32, 56 px) with seeded random "
    "weights, saved to and reloaded from the weights dir",
    licence=RANDOM_LICENCE,
    arch=DINOV2_TINY,
    seed=0,
)
def dinov2(
    model: str = "vit_base_patch14_dinov2.lvd142m",
    weights: str | None = None,
    seed: int | None = None,
    arch: dict[str, Any] | None = None,
) -> TimmViT:
    """DINOv2's linear eval resizes to 256 and centre-crops 224 (bicubic); timm resamples the
    518-px position embedding to 224 when loading."""
    return timm_vit(
        "dinov2",
        model,
        weights,
        seed,
        {"img_size": 224, **(arch or {})},
        0.875,
        ("tokens",),
        "cls+mean",
    )
