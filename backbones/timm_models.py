"""Any timm model as a backbone: ``timm:NAME`` (``timm:vit_base_patch16_224.mae``, ``timm:resnet50``).

Layers are the model's own feature-info modules (``blocks.11`` for ViTs, ``stages.3`` for ConvNeXt,
``layer4`` for ResNets: ``bench`` lists them per model), taken from timm's ``forward_intermediates``
exactly as timm returns them (raw block outputs, no final norm), plus ``pre-logits``:
``forward_head(forward_features(x), pre_logits=True)``, the pooled feature timm's classifier reads.
Transformers that report prefix tokens give tokens (CLS first when the model has one; register
tokens dropped), other models give (B, C, H, W) maps.

Weights: ``weights="pretrained"`` (default) loads the tag in the name (or timm's default tag) from
the Hugging Face Hub through its cache; ``weights=PATH`` or URL loads a file; ``weights=none`` is
random initialisation seeded by ``seed``, saved to and reloaded from the weights dir like real
weights. Preprocessing is timm's own data config for the model (``resolve_data_config`` +
``create_transform``, evaluation mode). The licence comes from the tag's ``pretrained_cfg``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.backbones._shared import RANDOM_LICENCE, FrozenBackbone, frozen, hub_file
from bench.errors import UsageError
from bench.backbone import MAP, TOKENS, VECTOR, FeaturePoint
from bench.registry import register_backbone
from bench.features.weights import WeightsError, file_sha256, random_weights_file, reading_checkpoint, resolve

PRE_LOGITS = "pre-logits"
UNKNOWN_LICENCE = "unknown: see the model card"


class TimmModel(FrozenBackbone):
    """A timm model's ``forward_intermediates`` layers and pre-logits, from one forward pass."""

    def __init__(self, net: nn.Module, config: dict[str, Any], transform: Any, size: int,
                 digest: str, licence: str):
        super().__init__(config, transform, size, (PRE_LOGITS,), "none", digest)
        self.net = frozen(net)
        self.licence = licence
        self.layer_names = [info["module"] for info in net.feature_info]
        parameters = inspect.signature(net.forward_intermediates).parameters
        self.tokens = "return_prefix_tokens" in parameters
        self.has_cls = self.tokens and getattr(net, "cls_token", None) is not None

    def feature_points(self) -> list[FeaturePoint]:
        what = "tokens (CLS first)" if self.has_cls else "tokens" if self.tokens else "feature map"
        points = [
            FeaturePoint(name, TOKENS if self.tokens else MAP,
                         f"{what} of {name} from forward_intermediates (no final norm; "
                         f"{info['num_chs']} channels, stride {info['reduction']})",
                         has_cls=self.has_cls)
            for name, info in zip(self.layer_names, self.net.feature_info)
        ]
        dim = self.net.num_features
        points.append(FeaturePoint(PRE_LOGITS, VECTOR,
                                   f"forward_head(pre_logits=True): the classifier's input ({dim}-d)"))
        return points

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        wanted = [n for n in self.layer_names if n in layers]
        final = PRE_LOGITS in layers
        out: dict[str, torch.Tensor] = {}
        if wanted:
            options: dict[str, Any] = {"output_fmt": "NLC", "return_prefix_tokens": True} \
                if self.tokens else {}
            result = self.net.forward_intermediates(
                x, indices=[self.layer_names.index(n) for n in wanted], norm=False,
                stop_early=not final, intermediates_only=not final, **options)
            x, intermediates = result if final else (None, result)
            for name, value in zip(wanted, intermediates):
                out[name] = self._tokens(value) if self.tokens else value
        elif final:
            x = self.net.forward_features(x)
        if final:
            out[PRE_LOGITS] = self.net.forward_head(x, pre_logits=True)
        return out

    def _tokens(self, value: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        patches, prefix = value
        if self.has_cls and prefix is not None:
            return torch.cat([prefix[:, :1], patches], dim=1)
        return patches


def tag_licence(model: str) -> str:
    """The licence timm records for a tag's weights (``pretrained_cfg['license']``)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model)
    return (cfg.license if cfg is not None else None) or UNKNOWN_LICENCE


def pretrained_file(model: str) -> Path:
    """The file of a timm tag: from the Hugging Face Hub through its cache, else its URL."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None:
        raise WeightsError(f"timm has no pretrained weights for {model!r}: `timm.list_pretrained("
                           f"'{model.split('.')[0]}*')` lists its tags; or pass weights=PATH or "
                           "weights=none (random)")
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        return hub_file(cfg.hf_hub_id, names + ["model.safetensors", "pytorch_model.bin"])
    if cfg.url:
        return resolve(cfg.url)
    raise WeightsError(f"timm's tag {model!r} has no download source; pass weights=PATH")


@register_backbone(
    "timm",
    description="timm:NAME, any timm model (tag in the name, e.g. timm:vit_base_patch16_224.mae); "
    "layers from forward_intermediates (blocks.N, stages.N, ...) and pre-logits; "
    "weights=pretrained|PATH|none",
    licence="per model: timm's pretrained_cfg licence, else unknown: see the model card",
    argument="model",
)
def timm_model(
    model: str,
    weights: str = "pretrained",
    seed: int = 0,
    model_args: dict[str, Any] | None = None,
) -> TimmModel:
    """``model``: a timm name with optional tag; ``model_args``: extra ``timm.create_model`` keyword
    arguments (``{"img_size": 32, "depth": 2}``); ``seed``: the random weights of ``weights=none``."""
    import timm
    from timm.data import create_transform, resolve_data_config

    if not timm.is_model(model):
        raise UsageError(f"timm has no model {model!r}: `timm.list_models('*{model.split('.')[0]}*')`"
                         " lists close names")
    model_args = dict(model_args or {})

    def create(**kwargs: Any) -> nn.Module:
        return timm.create_model(model, num_classes=0, **model_args, **kwargs)

    config: dict[str, Any] = {"family": "timm", "model": model, "model_args": model_args}
    licence = UNKNOWN_LICENCE
    if weights == "none":
        path = random_weights_file(config, seed, create)
        config["weights"] = f"random seed {seed}"
        licence = RANDOM_LICENCE
    elif weights == "pretrained":
        path = pretrained_file(model)
        config["weights"] = f"pretrained {model}"
        licence = tag_licence(model)
    else:
        path = resolve(weights)
        config["weights"] = weights
    with reading_checkpoint(path, f"timm {model}"):
        net = create(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    data = resolve_data_config(model=net)
    if "img_size" in model_args:  # the data config is the tag's; the model was built at another size
        side = model_args["img_size"]
        data["input_size"] = (3, *(side if isinstance(side, (list, tuple)) else (side, side)))
    config["transform"] = data
    return TimmModel(net, config, create_transform(**data), data["input_size"][-1],
                     file_sha256(path), licence)
