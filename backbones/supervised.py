"""Reference rows (supervised ResNet-50, DINOv2 ViT-B/14) and the pieces the comparison families share.

Every leaderboard needs a known upper reference; the same two wrappers serve the self-supervised
families: ``ResNetBackbone`` (torchvision ResNet-50, also SimCLR) and ``TimmViT`` (timm ViTs, also
MAE). Weights always reach the model through a file, whether downloaded, given by path or, for the
test-sized presets, seeded random weights written once under ``bench.weights.weights_dir()``, so the
tests exercise the same loading code as real weights and the digest is always the file's sha256.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.backbone import MAP, TOKENS, VECTOR, Backbone, FeaturePoint
from bench.registry import register_backbone
from bench.weights import WeightsError, file_sha256, offline, random_weights_file, resolve

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
        f"https://huggingface.co/{repo_id}/resolve/main/{filenames[0]} and pass its path as weights=."
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Any]:
    """The object stored in a weights file: safetensors, or a torch pickle of tensors only."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


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


# --- torchvision ResNet-50 (supervised reference, SimCLR) ---------------------------------------
STAGES = ("layer1", "layer2", "layer3", "layer4")


def resnet50_net(width: float = 1.0) -> nn.Module:
    """torchvision's ResNet-50 with every channel count scaled by ``width``, classifier removed.

    SimCLR's 2x/4x widen all layers (stem and block outputs too), unlike torchvision's
    ``wide_resnet50_2``, which widens only the bottlenecks; fractional widths give test-sized nets.
    """
    from torchvision.models import resnet50
    from torchvision.models.resnet import Bottleneck

    def c(n: int) -> int:
        return max(1, int(n * width))

    with torch.device("meta"):  # a free skeleton: every layer with weights is rebuilt below
        net = resnet50()
    net.inplanes = c(64)
    net.conv1 = nn.Conv2d(3, c(64), kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(c(64))
    for i, (name, blocks) in enumerate(zip(STAGES, (3, 4, 6, 3))):
        setattr(net, name, net._make_layer(Bottleneck, c(64 * 2**i), blocks, stride=min(i + 1, 2)))
    net.fc = nn.Identity()
    return net


class ResNetBackbone(FrozenBackbone):
    """A torchvision ResNet run stage by stage, stopping after the deepest requested stage."""

    def __init__(
        self, net: nn.Module, config: dict[str, Any], transform: Callable, size: int, digest: str
    ):
        super().__init__(config, transform, size, ("avgpool",), "none", digest)
        self.net = frozen(net)

    def feature_points(self) -> list[FeaturePoint]:
        stride = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
        dim = self.net.layer4[-1].conv3.out_channels
        return [
            *(FeaturePoint(s, MAP, f"output of stage {s} (stride {stride[s]})") for s in STAGES),
            FeaturePoint(
                "avgpool",
                VECTOR,
                f"global average pool of layer4 ({dim}-d): the "
                "standard linear-probe feature (= the model's forward without fc)",
            ),
        ]

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        net = self.net
        deepest = 4 if "avgpool" in layers else max(STAGES.index(layer) + 1 for layer in layers)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        out = {}
        for stage in STAGES[:deepest]:
            x = getattr(net, stage)(x)
            if stage in layers:
                out[stage] = x
        if "avgpool" in layers:
            out["avgpool"] = torch.flatten(net.avgpool(x), 1)
        return out


def torchvision_file(url: str) -> Path:
    """A torchvision weights file: torch hub's cache ($TORCH_HOME) if it is there, else bench's."""
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return cached if cached.is_file() else resolve(url)


@register_backbone(
    "resnet50-supervised",
    description="reference: torchvision ResNet-50 trained with labels on ImageNet-1k (IMAGENET1K_V1, "
    "76.1% top-1, the classical recipe), 2048-d average pool",
    licence="BSD-3-Clause",
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


# --- timm ViTs (DINOv2 reference, MAE) -----------------------------------------------------------
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
            raise ValueError(
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
        path = hub_file(repo, ["model.safetensors", "pytorch_model.bin"])
        config["weights"] = f"hf-hub:{repo}"
    net = create(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    size = net.patch_embed.img_size[0]
    data = {**resolve_data_config(model=net), "input_size": (3, size, size), "crop_pct": crop_pct}
    config["transform"] = data
    return TimmViT(
        net, config, create_transform(**data), size, default_layers, default_pool, file_sha256(path)
    )


DINOV2_TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 56}


@register_backbone(
    "dinov2",
    description="reference: DINOv2 ViT-B/14 (LVD-142M) via timm at 224 px; default feature = CLS "
    "token + patch mean of the final tokens, as DINOv2's linear evaluation",
    licence="Apache-2.0",
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
