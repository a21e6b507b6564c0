"""CLIP image towers via open_clip, with the layer users ask about named explicitly.

Which CLIP feature a linear probe uses is a recurring confusion, so both are feature points:
``image-embedding`` is ``encode_image`` (after the projection) and ``pre-projection`` is the pooled
feature before it (CLS token after ``ln_post``). ``block{i}`` are the transformer blocks' tokens.
Preprocessing is the pretrained tag's own (resize the short side, centre crop, CLIP mean/std,
bicubic).

The reference protocols use different features. The CLIP paper's linear probes on ViTs use the
features BEFORE the projection (its appendix A.3: "the features before the linear projection to
the embedding space"): layer ``pre-projection``, unnormalised. The example in OpenAI's CLIP README
trains its logistic regression on ``encode_image`` as it is, and CLIP_benchmark's linear probe
L2-normalises ``encode_image`` first (``Featurizer`` in ``clip_benchmark/metrics/linear_probe.py``).
The default layer ``image-embedding`` is ``encode_image``: with ``normalize=false`` (default) the
README example's feature, with ``normalize=true`` CLIP_benchmark's (it normalises
``image-embedding`` and ``pre-projection``; block tokens are never normalised); ask for
``--layers pre-projection`` for the paper's.

open_clip 3.x builds a GELU model for every built-in name and only warns when a tag was trained
with QuickGELU (all ``openai`` weights): we force QuickGELU from the tag's config, or features
would be silently wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.backbones._shared import FrozenBackbone, RANDOM_LICENCE, block_numbers, block_points, frozen
from bench.backbone import VECTOR, FeaturePoint
from bench.registry import register_backbone
from bench.features.weights import (
    Weights,
    WeightsError,
    WeightsFile,
    file_sha256,
    offline,
    random_weights_file,
    reading_checkpoint,
    resolve,
)

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def openai_release(repo: str) -> Weights:
    """OpenAI's CLIP weights as open_clip fetches them: the ``hf_hub`` of its ``openai`` tag (a
    timm Hub repo), the safetensors file first; sizes are not published: unknown."""
    return Weights((WeightsFile("open_clip_model.safetensors",
                                alternatives=("open_clip_pytorch_model.bin",)),),
                   hub_id=repo, input_size=224, mean=CLIP_MEAN, std=CLIP_STD, licence="MIT",
                   origin="https://github.com/openai/CLIP",
                   paper="Radford et al. 2021, Learning Transferable Visual Models From Natural "
                         "Language Supervision (arXiv 2103.00020)",
                   arguments=("model", "pretrained", "seed", "arch"))


PREPROCESS_KEYS = {
    "mean": "image_mean",
    "std": "image_std",
    "interpolation": "image_interpolation",
    "resize_mode": "image_resize_mode",
}


class CLIPImage(FrozenBackbone):
    """The image tower of an open_clip model; ViT towers also give pre-projection and block tokens."""

    def __init__(
        self,
        visual: torch.nn.Module,
        config: dict[str, Any],
        transform: Any,
        size: int,
        digest: str,
        licence: str = "",
    ):
        super().__init__(config, transform, size, ("image-embedding",), "none", digest)
        from open_clip.transformer import VisionTransformer

        self.visual = frozen(visual)
        self.is_vit = isinstance(visual, VisionTransformer)
        self.normalize = bool(config.get("normalize", False))
        self.licence = licence

    def feature_points(self) -> list[FeaturePoint]:
        norm = "L2-normalised" if self.normalize else "unnormalised"
        points = [
            FeaturePoint(
                "image-embedding",
                VECTOR,
                f"encode_image: pooled features after the projection, {norm}",
            )
        ]
        if self.is_vit:
            points.append(
                FeaturePoint(
                    "pre-projection",
                    VECTOR,
                    "pooled features before the projection (OpenAI ViTs: CLS token after "
                    f"ln_post), {norm}",
                )
            )
            points += block_points(len(self.visual.transformer.resblocks), "(before ln_post)")
        return points

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if not self.is_vit:
            return {"image-embedding": self._normalized(self.visual(x))}
        v = self.visual
        blocks = block_numbers(layers)
        final = "image-embedding" in layers or "pre-projection" in layers
        # the steps of open_clip's VisionTransformer.forward, keeping what it discards
        h, intermediates = v.transformer.forward_intermediates(
            v._embeds(x), indices=[b - 1 for b in blocks] or 1, stop_early=not final
        )
        out = {f"block{b}": t for b, t in zip(blocks, intermediates)}
        if final:
            pooled, _ = v._pool(h)
            out["pre-projection"] = self._normalized(pooled)
            out["image-embedding"] = self._normalized(pooled @ v.proj if v.proj is not None
                                                      else pooled)
        return out

    def _normalized(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features, dim=-1) if self.normalize else features


def checkpoint(model: str, pretrained: str) -> tuple[Path, dict[str, Any]]:
    """The weights file for a tag (open_clip's own download and cache) or a path/URL, and the
    tag's preprocessing and activation settings ({} for files)."""
    import open_clip

    tag = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag:
        return resolve(pretrained), {}
    try:
        return Path(open_clip.download_pretrained(tag)), tag
    except Exception as e:  # open_clip raises plain errors when offline or unreachable
        source = tag.get("hf_hub") or tag.get("url")
        mode = " (downloads are off: HF_HUB_OFFLINE=1)" if offline() else ""
        raise WeightsError(
            f"open_clip weights {model}/{pretrained} are not cached{mode}: {e}. Download them once "
            f"with network (source: {source}; Hugging Face cache $HF_HOME, URL downloads go to "
            f"~/.cache/clip), or fetch the file and pass its path as pretrained=."
        ) from e


@register_backbone(
    "clip",
    description="CLIP ViT-B/16, OpenAI weights (open_clip); default feature = encode_image (after "
    "the projection, as CLIP_benchmark); pre-projection is the CLIP paper's ViT probe feature",
    released=openai_release("timm/vit_base_patch16_clip_224.openai"),
)
@register_backbone(
    "clip-b32",
    description="CLIP ViT-B/32, OpenAI weights (open_clip), image embedding",
    released=openai_release("timm/vit_base_patch32_clip_224.openai"),
    model="ViT-B-32",
)
@register_backbone(
    "clip-tiny",
    description="test-sized open_clip ViT (3 blocks of width 32, 32 px) with seeded random weights, "
    "saved to and reloaded from the weights dir",
    licence=RANDOM_LICENCE,
    arch=TINY,
    seed=0,
)
def clip(
    model: str = "ViT-B-16",
    pretrained: str = "openai",
    quick_gelu: bool | None = None,
    seed: int | None = None,
    arch: dict[str, Any] | None = None,
    normalize: bool = False,
) -> CLIPImage:
    """``model``/``pretrained``: any open_clip name and tag (``open_clip.list_pretrained()``), or a
    checkpoint path/URL as ``pretrained``; ``quick_gelu`` defaults to what the tag was trained with;
    ``normalize``: L2-normalise the pooled features (CLIP_benchmark's protocol; see the module).
    The weights of other tags are under their own licences (LAION: MIT; DataComp: MIT)."""
    return build_clip("clip", model, pretrained, quick_gelu, seed, arch, normalize)


def build_clip(
    family: str,
    model: str,
    pretrained: str,
    quick_gelu: bool | None,
    seed: int | None,
    arch: dict[str, Any] | None,
    normalize: bool,
    licence: str = "",
) -> CLIPImage:
    """An open_clip image tower from a tag, a file, or seeded random weights (``seed``); ``arch``
    overrides the registered model config (open_clip's ``create_model`` keyword arguments)."""
    import open_clip

    arch = dict(arch or {})
    config: dict[str, Any] = {"family": family, "model": model, "arch": arch}
    if seed is not None:
        path = random_weights_file(config, seed, lambda: open_clip.create_model(model, **arch))
        tag: dict[str, Any] = {}
        config["pretrained"] = f"random seed {seed}"
    else:
        path, tag = checkpoint(model, pretrained)
        config["pretrained"] = pretrained
    config["quick_gelu"] = tag.get("quick_gelu", False) if quick_gelu is None else quick_gelu
    if normalize:  # only when set, so the cache keys of unnormalised features stay as they were
        config["normalize"] = True
    preprocess = {arg: tag[key] for key, arg in PREPROCESS_KEYS.items() if key in tag}
    with reading_checkpoint(path, f"open_clip {model}"):
        net, _, transform = open_clip.create_model_and_transforms(
            model, pretrained=str(path), force_quick_gelu=config["quick_gelu"], **preprocess,
            **arch)
    config["transform"] = dict(net.visual.preprocess_cfg)
    size = config["transform"]["size"]
    return CLIPImage(
        net.visual, config, transform, size if isinstance(size, int) else size[0],
        file_sha256(path), licence,
    )
