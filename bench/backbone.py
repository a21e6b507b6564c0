"""The interface every backbone implements, and the pooling that turns its outputs into features.

A backbone is a frozen ``torch.nn.Module`` with:

- ``transform()``: its own preprocessing, PIL image -> float tensor (C, H, W);
- ``feature_points()``: named layers, each of a kind: ``map`` (B, C, H, W), ``tokens``
  (B, N, C, first token CLS when ``has_cls``) or ``vector`` (B, D);
- ``forward_features(x, layers, sample_ids)``: raw outputs of several layers from one forward
  pass, stopping after the deepest requested layer where the model allows it. ``sample_ids``
  (one int per image: its index in the split) lets stochastic backbones (diffusion noise) draw
  the same noise for the same image on every run;
- ``config``: everything besides the weights that changes the features (JSON-able); together
  with ``weights_digest()`` it goes into the feature-cache key.

Pooling is part of the feature spec and lives here so every backbone gets the same pools.
"""

from __future__ import annotations

import hashlib
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.errors import BenchError, UsageError
from bench.points import MAP, POOLS_BY_KIND, TOKENS, VECTOR, Pool

__all__ = ["MAP", "TOKENS", "VECTOR", "Backbone", "FeaturePoint", "check_pool", "pool_features"]


class BackboneOutputError(BenchError, RuntimeError):
    """A backbone (often a plugin) returned outputs bench cannot use; the message names it."""


@dataclass(frozen=True)
class FeaturePoint:
    name: str
    kind: str  # MAP | TOKENS | VECTOR
    description: str = ""
    has_cls: bool = False  # tokens only: the first token is a CLS token


class Backbone(nn.Module, metaclass=ABCMeta):
    """Base class; subclasses set the attributes below and implement ``forward_features``."""

    name: str = ""
    family: str = ""
    input_size: int = 224
    default_layers: tuple[str, ...] = ()
    default_pool: str = "1"

    def __init__(self) -> None:
        super().__init__()
        self._digest: str | None = None

    # --- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def config(self) -> dict[str, Any]: ...

    @abstractmethod
    def transform(self) -> Callable[[Any], torch.Tensor]: ...

    @abstractmethod
    def feature_points(self) -> list[FeaturePoint]: ...

    @abstractmethod
    def forward_features(
        self,
        x: torch.Tensor,
        layers: Sequence[str],
        sample_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]: ...

    # --- shared behaviour ---------------------------------------------------------------------
    def weights_digest(self) -> str:
        """sha256 of the weights: subclasses loading a file may set ``self._digest`` to its hash."""
        if self._digest is None:
            self._digest = state_dict_digest(self)
        return self._digest

    def canonical_layer(self, layer: str) -> str:
        """The one name of a layer given any of its aliases (override to accept aliases)."""
        return layer

    def layer_groups(self, layers: Sequence[str]) -> list[list[str]]:
        """How a fusing head (DifFormer) groups these canonical layers: ``groups[g][i]`` is layer
        i of group g, and every group holds the same layers in the same order. One group by
        default; backbones with a second axis (a diffusion timestep) group along it."""
        return [list(layers)]

    def feedback_model(self, layers: Sequence[str]) -> nn.Module:
        """A trainable module around this frozen backbone returning its feedback (DifFeed)
        features of ``layers``; backbones with such wiring override this."""
        raise UsageError(f"backbone {self.name!r} has no feedback (DifFeed) wiring; use a "
                         "diffusion/adm backbone")

    def feature_point(self, layer: str) -> FeaturePoint:
        points = {p.name: p for p in self.feature_points()}
        layer = self.canonical_layer(layer)
        if layer in points:
            return points[layer]
        names = ", ".join(points)
        raise UsageError(f"backbone {self.name!r} has no layer {layer!r}; its layers: {names}")

    def extract(
        self,
        x: torch.Tensor,
        requests: Sequence[tuple[str, str]],
        sample_ids: torch.Tensor | None = None,
    ) -> dict[tuple[str, str], torch.Tensor]:
        """Pooled features for each (layer, pool), all from one forward pass.

        Layers must be canonical names (``canonical_layer``); results are keyed like requests.
        """
        for layer, pool in requests:
            check_pool(self.feature_point(layer), pool)
        layers = list(dict.fromkeys(layer for layer, _ in requests))
        raw = self.forward_features(x, layers, sample_ids)
        check_outputs(self, raw, layers, len(x))
        return {
            (layer, pool): pool_features(raw[layer], self.feature_point(layer), pool)
            for layer, pool in requests
        }


VIEW_STRIDE = 2**32  # more than any split's items: view v of item i is sample id v * VIEW_STRIDE + i


def view_sample_ids(ids: torch.Tensor, view: int) -> torch.Tensor:
    """The sample ids of view ``view`` of the items ``ids`` (their indices in the split): what a
    stochastic backbone seeds its noise by (``forward_features``' ``sample_ids``). View 0 is the
    items' own indices, so a run of one view draws the noise it always has; each later view is
    its own set of ids, so the noise of (image, view) is drawn afresh, the same on every run."""
    if view < 0:
        raise ValueError(f"view {view}: views are numbered from 0")
    return ids + view * VIEW_STRIDE


RANKS = {MAP: "4 (B, C, H, W)", TOKENS: "3 (B, N, C)", VECTOR: "2 (B, D)"}


def describe(backbone: Backbone) -> str:
    return f"backbone {backbone.name!r} ({type(backbone).__module__}.{type(backbone).__qualname__})"


def check_outputs(backbone: Backbone, raw: Any, layers: Sequence[str], batch: int) -> None:
    """``forward_features``'s result checked before pooling, so a plugin's mistake is named as
    its own (not as a pooling or cache error): a dict holding a torch.Tensor for every requested
    layer, batch first, of its feature point's rank."""
    who = describe(backbone)
    if not isinstance(raw, dict):
        raise BackboneOutputError(f"{who}: forward_features returned a {type(raw).__name__}, not "
                                  "a dict of layer name -> torch.Tensor")
    for layer in layers:
        if layer not in raw:
            raise BackboneOutputError(f"{who}: forward_features returned no {layer!r} (asked for "
                                      f"{list(layers)}, got {sorted(map(str, raw))})")
        out, kind = raw[layer], backbone.feature_point(layer).kind
        if not isinstance(out, torch.Tensor):
            raise BackboneOutputError(f"{who}: layer {layer!r} is a {type(out).__module__}."
                                      f"{type(out).__name__}, not a torch.Tensor")
        rank = int(RANKS[kind][0])
        if out.ndim != rank or out.shape[0] != batch:
            raise BackboneOutputError(
                f"{who}: layer {layer!r} ({kind}) has shape {tuple(out.shape)} for a batch of "
                f"{batch} images; it must have rank {RANKS[kind]} with the batch first")


def check_pool(point: FeaturePoint, pool: str) -> None:
    try:
        ok = Pool.parse(pool).applies(point.kind, point.has_cls)
    except UsageError:
        ok = False
    if not ok:
        raise UsageError(
            f"pool {pool!r} does not apply to layer {point.name!r} ({point.kind}); "
            f"use one of {POOLS_BY_KIND[point.kind]}"
        )


def pool_features(out: torch.Tensor, point: FeaturePoint, pool: str) -> torch.Tensor:
    """(B, ...) raw output -> (B, D) vector, or (B, C, h, w) / (B, N, C) for map/token pools."""
    if point.kind == VECTOR:
        return out.flatten(1)
    parsed = Pool.parse(pool)
    if point.kind == TOKENS:
        patches = out[:, 1:] if point.has_cls else out
        if parsed.form == "cls":
            return out[:, 0]
        if parsed.form == "mean":
            return patches.mean(1)
        if parsed.form == "cls+mean":
            return torch.cat([out[:, 0], patches.mean(1)], dim=1)
        return out  # "tokens"
    if parsed.form == "max":
        return out.amax(dim=(2, 3))
    height, width = out.shape[-2:]
    sides = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
    if parsed.keeps_map:
        side = max(p for p in sides if p <= parsed.size)
        return nn.functional.adaptive_avg_pool2d(out.float(), side)
    if parsed.size not in sides:
        raise UsageError(
            f"pool {pool!r} does not fit layer {point.name!r}: its map is {height}x{width} and a "
            f"pool must divide both sides (windows would overlap or exceed the map); valid pools: "
            f"{', '.join(map(str, sides))}, 'mapN', 'max'")
    return nn.functional.adaptive_avg_pool2d(out.float(), parsed.size).flatten(1)


def state_dict_digest(module: nn.Module) -> str:
    """sha256 over parameter names, shapes and bytes: identifies randomly initialised weights too."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

