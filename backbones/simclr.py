"""SimCLR v1 (Chen et al. 2020) ResNet-50 1x/2x/4x from public PyTorch conversions, our own key conversion.

The official weights are TensorFlow checkpoints (google-research/simclr, gs://simclr-checkpoints/
simclrv1); they are used through PyTorch conversions, in one of these formats:

- ``simclr-converter``: tonylins/simclr-converter's output, ``{'state_dict': <torchvision ResNet
  keys>}`` (``conv1.weight``, ``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``,
  ``fc.*``), channels scaled by 1/2/4. Re-hosted by Lightly on the Hugging Face Hub
  (lightly-ai/simclrv1-imagenet1k-resnet50-{1x,2x,4x}, files ``resnet50-{1x,2x,4x}.pth``, the
  preset URLs below). A bare state dict with the same keys (optionally ``module.``-prefixed) is
  accepted too. These weights expect inputs in [0, 1] WITHOUT ImageNet normalisation (the TF
  models were trained that way; the converter reports 68.9 / 74.1 / 76.4% vs TF 69.1 / 74.2 / 76.6).
- ``vissl``: a VISSL model-zoo checkpoint (``classy_state_dict.base_model.model.trunk`` with
  ``_feature_blocks.`` keys), e.g. https://dl.fbaipublicfiles.com/vissl/model_zoo/
  simclr_rn50_1000ep_simclr_8node_resnet_16_07_20.afe428c7/model_final_checkpoint_phase999.torch.
  These are VISSL's own PyTorch re-training (not the official weights) and expect ImageNet
  normalisation, which is the default for this format.

The classifier (``fc``, the converter's supervised head) is dropped: features are the ResNet's.
Evaluation preprocessing follows SimCLR's TF code: central crop of 87.5% of the short side,
resized to 224 (bicubic), i.e. resize to 256 and centre-crop 224.
"""

from __future__ import annotations

from typing import Any

from bench.backbones._resnet import ResNetBackbone, resnet50_net
from bench.backbones._shared import IMAGENET_MEAN, IMAGENET_STD, RANDOM_LICENCE, load_state_dict_file, resize_crop
from bench.registry import register_backbone
from bench.errors import UsageError
from bench.features.weights import (Weights, WeightsError, WeightsFile, file_sha256,
                                    random_weights_file, resolve)

HUB = "https://huggingface.co/lightly-ai/simclrv1-imagenet1k-resnet50-{w}x/resolve/main/resnet50-{w}x.pth"
NORMALISED_FORMATS = {"simclr-converter": False, "vissl": True}
# width -> Lightly's copy of the converted official weights (inputs in [0, 1], no normalisation);
# sizes and digests are not published: unknown
RELEASED = {width: Weights(
    (WeightsFile(HUB.format(w=width)),), input_size=224, licence="Apache-2.0",
    origin="https://github.com/google-research/simclr (converted by tonylins/simclr-converter)",
    paper="Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual "
          "Representations (arXiv 2002.05709), Table 6 (linear evaluation)",
    arguments=("weights", "width", "seed")) for width in (1, 2, 4)}


def convert_state_dict(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(torchvision ResNet state dict without ``fc``, source format) from a converted checkpoint."""
    if "classy_state_dict" in checkpoint:
        state = checkpoint["classy_state_dict"]["base_model"]["model"]["trunk"]
        prefix, source = "_feature_blocks.", "vissl"
    else:
        state = checkpoint.get("state_dict", checkpoint)
        prefix, source = "module.", "simclr-converter"
    if not isinstance(state, dict) or "conv1.weight" not in {k.removeprefix(prefix) for k in state}:
        keys = ", ".join(list(state)[:5]) if isinstance(state, dict) else type(state).__name__
        raise WeightsError(
            f"not a SimCLR checkpoint in a known format (simclr-converter or VISSL); first keys: "
            f"{keys}. See backbones/simclr.py for the accepted formats."
        )
    converted = {k.removeprefix(prefix): v for k, v in state.items()}
    return {k: v for k, v in converted.items() if not k.startswith("fc.")}, source


@register_backbone(
    "simclr",
    description="SimCLR v1 ResNet-50 (1x), official TF weights converted to PyTorch; 2048-d "
    "average pool, inputs in [0, 1] without ImageNet normalisation",
    released=RELEASED[1],
)
@register_backbone(
    "simclr-2x",
    description="SimCLR v1 ResNet-50 (2x), converted official weights; 4096-d average pool",
    released=RELEASED[2],
    width=2,
)
@register_backbone(
    "simclr-4x",
    description="SimCLR v1 ResNet-50 (4x), converted official weights; 8192-d average pool",
    released=RELEASED[4],
    width=4,
)
@register_backbone(
    "simclr-tiny",
    description="test-sized SimCLR ResNet-50 (1/8 width, 32 px) with seeded random weights, saved "
    "to and reloaded from the weights dir through the key conversion",
    licence=RANDOM_LICENCE,
    width=0.125,
    size=32,
    seed=0,
)
def simclr(
    weights: str | None = None,
    width: float = 1,
    size: int = 224,
    normalize: bool | None = None,
    seed: int | None = None,
) -> ResNetBackbone:
    """``weights``: path or URL of a converted checkpoint (default: Lightly's copy of the converted
    official weights for ``width``); ``normalize``: ImageNet mean/std, default per source format."""
    config: dict[str, Any] = {"family": "simclr", "width": width}
    if seed is not None:
        path = random_weights_file(config, seed, lambda: resnet50_net(width))
        config["weights"] = f"random seed {seed}"
    else:
        if weights is None and width not in RELEASED:
            raise UsageError(f"SimCLR has no released weights of width {width} (released: "
                             f"{', '.join(map(str, RELEASED))}); pass weights=PATH or URL")
        config["weights"] = weights or RELEASED[width].url
        path = resolve(config["weights"])
    state, source = convert_state_dict(load_state_dict_file(path))
    net = resnet50_net(width)
    net.load_state_dict(state, strict=True)
    normalize = NORMALISED_FORMATS[source] if normalize is None else normalize
    config.update(
        source_format=source,
        normalize=normalize,
        size=size,
        crop_pct=0.875,
        interpolation="bicubic",
    )
    stats = (IMAGENET_MEAN, IMAGENET_STD) if normalize else (None, None)
    transform = resize_crop(size, 0.875, "bicubic", *stats)
    return ResNetBackbone(net, config, transform, size, file_sha256(path))
