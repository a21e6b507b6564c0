"""Hugging Face transformers vision encoders: ``hf:REPO_OR_PATH`` (``hf:facebook/dinov2-base``).

The model comes from ``AutoModel.from_pretrained`` and its preprocessing from
``AutoImageProcessor.from_pretrained`` (both from the Hub's cache or a local folder written by
``save_pretrained``); for two-tower models (SigLIP, CLIP) the vision tower is used. Layers:

- ``hidden_states.N``: the N-th entry of ``output_hidden_states=True`` (0 = embeddings), as the
  model returns it: tokens (CLS first where the model has one; register tokens dropped) or maps;
- ``cls``: the first token of ``last_hidden_state`` (models with a CLS token);
- ``mean``: the mean of ``last_hidden_state`` over patch tokens (or over positions for maps);
- ``pooler``: ``pooler_output`` where the model has a pooler (SigLIP's attention pool, ConvNeXt's
  pooled norm, ViT's tanh pooler).

The licence comes from the model card's metadata (``license:`` in its README) when it is cached or
in the folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.backbones._shared import FrozenBackbone, frozen
from bench.backbone import MAP, TOKENS, VECTOR, FeaturePoint
from bench.registry import register_backbone
from bench.features.weights import WeightsError, offline

UNKNOWN_LICENCE = "unknown: see the model card"


def card_licence(source: str) -> str:
    """The ``license:`` of a model card (a folder's README.md, or the Hub repo's, from its cache or
    the network), else "unknown: see the model card"."""
    readme = Path(source).expanduser() / "README.md"
    if not readme.is_file():
        try:
            from huggingface_hub import hf_hub_download

            readme = Path(hf_hub_download(source, "README.md"))
        except Exception:  # no card, offline and not cached, or not a repo id
            return UNKNOWN_LICENCE
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return UNKNOWN_LICENCE
    for line in text.split("---", 2)[1].splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")
    return UNKNOWN_LICENCE


class HFVisionEncoder(FrozenBackbone):
    """A transformers vision encoder; every layer comes from one ``output_hidden_states`` pass."""

    def __init__(self, net: nn.Module, config: dict[str, Any], transform: Callable, size: int,
                 licence: str):
        super().__init__(config, transform, size, ("cls",), "none")
        self.net = frozen(net)
        self.licence = licence
        embeddings = getattr(net, "embeddings", None)
        self.has_cls = getattr(embeddings, "cls_token", None) is not None
        self.prefix = int(self.has_cls) + int(getattr(net.config, "num_register_tokens", 0) or 0)
        with torch.no_grad():  # one tiny pass tells the number and kinds of the outputs
            probe = self.net(pixel_values=torch.zeros(1, 3, size, size), output_hidden_states=True)
        self.depth = len(probe.hidden_states)
        self.maps = probe.hidden_states[-1].dim() == 4
        self.has_pooler = getattr(probe, "pooler_output", None) is not None

    def feature_points(self) -> list[FeaturePoint]:
        kind = MAP if self.maps else TOKENS
        what = "map" if self.maps else "tokens, CLS first" if self.has_cls else "tokens"
        points = [
            FeaturePoint(f"hidden_states.{i}", kind,
                         f"output_hidden_states[{i}] ({what}; 0 = embeddings)",
                         has_cls=self.has_cls and not self.maps)
            for i in range(self.depth)
        ]
        if self.has_cls:
            points.append(FeaturePoint("cls", VECTOR, "first token of last_hidden_state"))
        points.append(FeaturePoint("mean", VECTOR, "mean of last_hidden_state over patches"))
        if self.has_pooler:
            points.append(FeaturePoint("pooler", VECTOR, "pooler_output"))
        return points

    def _tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.maps or self.prefix <= int(self.has_cls):
            return hidden
        return torch.cat([hidden[:, :1], hidden[:, self.prefix:]], dim=1)  # drop register tokens

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        result = self.net(pixel_values=x, output_hidden_states=True)
        last = result.last_hidden_state
        out: dict[str, torch.Tensor] = {}
        for layer in layers:
            if layer.startswith("hidden_states."):
                out[layer] = self._tokens(result.hidden_states[int(layer.split(".", 1)[1])])
            elif layer == "cls":
                out[layer] = last[:, 0]
            elif layer == "mean":
                out[layer] = last.mean(dim=(2, 3)) if self.maps else last[:, self.prefix:].mean(1)
            elif layer == "pooler":
                out[layer] = result.pooler_output.flatten(1)
        return out


def vision_tower(net: nn.Module) -> nn.Module:
    """The image encoder of two-tower models (SigLIP, CLIP); other models as they are."""
    return net.vision_model if hasattr(net, "vision_model") and hasattr(net, "text_model") else net


@register_backbone(
    "hf",
    description="hf:REPO_OR_PATH, a transformers vision encoder (AutoModel + AutoImageProcessor: "
    "ViT, DINOv2, SigLIP, ConvNeXt, ...); layers hidden_states.N, cls, mean, pooler",
    licence="per model: the model card's license, else unknown: see the model card",
    argument="model",
)
def hf_model(model: str, revision: str | None = None) -> HFVisionEncoder:
    """``model``: a Hub repo id (its cache is used offline) or a folder written by
    ``save_pretrained`` holding the model and its image processor; ``revision``: a Hub branch,
    tag or commit."""
    try:
        from transformers import AutoImageProcessor, AutoModel
    except ImportError as e:
        raise ImportError("hf: backbones need transformers: pip install 'frozen-bench[hf]'") from e

    try:
        net = AutoModel.from_pretrained(model, revision=revision, dtype=torch.float32)
        processor = AutoImageProcessor.from_pretrained(model, revision=revision)
    except OSError as e:  # transformers reports missing files and offline misses as OSError
        mode = " (downloads are off: HF_HUB_OFFLINE=1)" if offline() else ""
        raise WeightsError(
            f"cannot load hf:{model}{mode}: {str(e).splitlines()[0]} Download it once with "
            f"`huggingface-cli download {model}`, or save model and image processor with "
            "save_pretrained into one folder and pass the folder."
        ) from e

    def transform(image: Any) -> torch.Tensor:
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    from PIL import Image

    size = transform(Image.new("RGB", (64, 64))).shape[-1]
    config = {
        "family": "hf",
        "model": model,
        "revision": revision,
        "architecture": type(net).__name__,
        "transform": processor.to_dict(),
    }
    return HFVisionEncoder(vision_tower(net), config, transform, size, card_licence(model))
