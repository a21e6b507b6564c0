"""Any open_clip image tower: ``open_clip:ARCH/TAG`` (``open_clip:ViT-B-16/laion2b_s34b_b88k``).

The model is built the way the ``clip`` presets are (``backbones/clip.py``: QuickGELU from the
tag, the tag's own preprocessing), with the same layers: ``image-embedding`` (``encode_image``),
``pre-projection`` and ViT blocks. ``normalize=true`` L2-normalises the pooled features as
CLIP_benchmark's linear probe does; the default keeps them as ``encode_image`` returns them, as the
CLIP paper's logistic-regression probe does.

Weights: ``weights="pretrained"`` (default) is the TAG, downloaded and cached by open_clip;
``weights=PATH`` a checkpoint file for ARCH (then no TAG is needed); ``weights=none`` seeded random
weights saved to and reloaded from the weights dir. ``model_cfg`` overrides top-level keys of the
registered config of ARCH (``embed_dim``, ``vision_cfg``, ``text_cfg``: open_clip's
``create_model(**model_kwargs)``), which is how the tests build a tiny tower.

``open_clip:hf-hub:ORG/NAME`` is a model published on the Hugging Face Hub in open_clip's own
layout (``open_clip_config.json`` with ``model_cfg`` and ``preprocess_cfg``, and
``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``), loaded by open_clip from HF's
cache (``HF_HUB_OFFLINE=1`` honoured); the snapshot's commit and the weights' sha256 identify it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.backbones._shared import RANDOM_LICENCE
from bench.backbones.clip import CLIPImage, build_clip
from bench.backbones.hf_models import UNKNOWN_LICENCE, card_licence
from bench.errors import UsageError
from bench.registry import register_backbone
from bench.features.weights import WeightsError, file_sha256

HUB = "hf-hub:"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's order


def tag_licence(arch: str, tag: str) -> str:
    """The model card's licence of a tag hosted on the Hugging Face Hub, else unknown."""
    import open_clip

    repo = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").strip("/")
    return card_licence(repo) if repo else UNKNOWN_LICENCE


@register_backbone(
    "open_clip",
    description="open_clip:ARCH/TAG, any open_clip image tower (e.g. open_clip:ViT-B-16/"
    "laion2b_s34b_b88k), or open_clip:hf-hub:ORG/NAME; image-embedding, pre-projection, blocks; normalize=true for "
    "CLIP_benchmark's L2-normalised probe",
    licence="per model: the tag's model card licence, else unknown: see the model card",
    argument="model",
)
def open_clip_model(
    model: str,
    weights: str = "pretrained",
    seed: int = 0,
    normalize: bool = False,
    quick_gelu: bool | None = None,
    model_cfg: dict[str, Any] | None = None,
) -> CLIPImage:
    """``model``: ``ARCH/TAG`` (``open_clip.list_pretrained()``), ``hf-hub:ORG/NAME``, or ``ARCH``
    with weights=PATH or weights=none; ``quick_gelu`` defaults to what the tag was trained with."""
    import open_clip

    if model.startswith(HUB):
        return hub_clip(model.removeprefix(HUB), quick_gelu, normalize)
    arch, _, tag = model.partition("/")
    if arch not in open_clip.list_models():
        raise UsageError(f"open_clip has no model {arch!r}; `open_clip.list_models()` lists them")
    if weights == "none":
        return build_clip("open_clip", arch, "", quick_gelu, seed, model_cfg, normalize,
                          RANDOM_LICENCE)
    if weights == "pretrained":
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag not in tags:
            raise UsageError(f"open_clip:{model}: give a pretrained tag as open_clip:{arch}/TAG, "
                             f"one of {', '.join(tags) or '(none)'}, or pass weights=PATH or "
                             "weights=none")
        return build_clip("open_clip", arch, tag, quick_gelu, None, model_cfg, normalize,
                          tag_licence(arch, tag))
    return build_clip("open_clip", arch, weights, quick_gelu, None, model_cfg, normalize,
                      UNKNOWN_LICENCE)


def _hub_file(repo: str, names: tuple[str, ...]) -> Path:
    """The first of ``names`` in the Hub repo, through HF's cache."""
    from huggingface_hub import hf_hub_download

    for name in names:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception:  # not in the repo, or not cached offline
            continue
    raise WeightsError(
        f"open_clip:{HUB}{repo}: none of {', '.join(names)} in the Hugging Face hub or its cache; "
        f"on a machine with network run `huggingface-cli download {repo}` and copy the cache"
    )


def hub_clip(repo: str, quick_gelu: bool | None, normalize: bool) -> CLIPImage:
    """An open_clip model in open_clip's Hub layout, built by open_clip's own ``hf-hub:`` path."""
    import json

    import open_clip

    model_cfg = json.loads(_hub_file(repo, ("open_clip_config.json",)).read_text())["model_cfg"]
    weights = _hub_file(repo, HUB_WEIGHTS)
    gelu = bool(model_cfg.get("quick_gelu", False)) if quick_gelu is None else quick_gelu
    net, _, transform = open_clip.create_model_and_transforms(
        HUB + repo, force_quick_gelu=gelu)
    config: dict[str, Any] = {"family": "open_clip", "model": HUB + repo,
                              "hub_commit": weights.parent.name, "quick_gelu": gelu,
                              "transform": dict(net.visual.preprocess_cfg)}
    if normalize:
        config["normalize"] = True
    size = config["transform"]["size"]
    return CLIPImage(net.visual, config, transform, size if isinstance(size, int) else size[0],
                     file_sha256(weights), card_licence(repo))
