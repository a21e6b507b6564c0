"""The bench backbone around the ADM U-Net: weights, noising, named block features.

Features of an image are block outputs of ONE U-Net pass on a noised copy of it (no denoising
loop). Layers are named ``block24@t90``: the paper's 1-based block number and the timestep; the
noise of image ``sample_id`` i in draw k comes from a generator seeded by (noise_seed, i, k) on
the CPU, so it is the same whatever the batch, the device or the other timesteps asked for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.backbones import _diffusion
from bench.backbones.adm.diffusion import NoiseSchedule
from bench.backbones.adm.unet import NUM_CLASSES, ADMUNet, complete_flags
from bench.backbone import MAP, Backbone, FeaturePoint
from bench.points import LayerName
from bench.features.compile import StaticCompiled
from bench.errors import UsageError
from bench.features.weights import (Weights, WeightsFile, file_sha256, load_checkpoint,
                                   random_weights_file, resolve)

LICENCE = "MIT (openai/guided-diffusion)"
BASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021"
_COMMON = {
    "attention_resolutions": "32,16,8",
    "learn_sigma": True,
    "resblock_updown": True,
    "use_fp16": True,
    "use_scale_shift_norm": True,
}


@dataclass(frozen=True)
class Checkpoint:
    """A released guided-diffusion checkpoint: its ``create_model`` flags (MODEL_FLAGS of
    openai/guided-diffusion's README), its noise schedule and its weights."""

    flags: dict[str, Any]
    schedule: str
    weights: Weights


def _checkpoint(file: str, schedule: str, **flags: Any) -> Checkpoint:
    """The README states no size or digest of the files: both are left unknown."""
    return Checkpoint(dict(_COMMON, **flags), schedule, Weights(
        (WeightsFile(f"{BASE_URL}/{file}"),), input_size=flags["image_size"],
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), licence=LICENCE, origin=ORIGIN,
        paper="Dhariwal & Nichol 2021, Diffusion Models Beat GANs on Image Synthesis "
              "(arXiv 2105.05233)"))


ORIGIN = "https://github.com/openai/guided-diffusion (README: Download pre-trained models)"
RELEASED: dict[str, Checkpoint] = {
    "diffusion": _checkpoint("256x256_diffusion_uncond.pt", "linear", image_size=256,
                             num_channels=256, num_head_channels=64, num_res_blocks=2,
                             class_cond=False),
    "adm-64": _checkpoint("64x64_diffusion.pt", "cosine", image_size=64, num_channels=192,
                          num_head_channels=64, num_res_blocks=3, class_cond=True, dropout=0.1,
                          use_new_attention_order=True),
    "adm-128": _checkpoint("128x128_diffusion.pt", "linear", image_size=128, num_channels=256,
                           num_heads=4, num_res_blocks=2, class_cond=True),
    "adm-256": _checkpoint("256x256_diffusion.pt", "linear", image_size=256, num_channels=256,
                           num_head_channels=64, num_res_blocks=2, class_cond=True),
    "adm-512": _checkpoint("512x512_diffusion.pt", "linear", image_size=512, num_channels=256,
                           num_head_channels=64, num_res_blocks=2, class_cond=True,
                           use_fp16=False),
}
# A 256-structured U-Net small enough for CPU tests (37 blocks, 8.1M parameters at 64 px).
TINY_FLAGS: dict[str, Any] = dict(
    _COMMON,
    image_size=64,
    num_channels=32,
    num_heads=4,
    num_head_channels=16,
    num_res_blocks=2,
    channel_mult="1,1,2,2,4,4",
    class_cond=False,
    use_fp16=False,
)
_LAYER = re.compile(r"(?:block)?(\d+)|(input_blocks\.\d+|middle_block|output_blocks\.\d+)")


class CheckpointMismatchError(UsageError):
    """A state dict that does not fit the flags; the message names the mismatch and the fix."""


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pt`` (guided-diffusion's format) or ``.safetensors`` state dict, floats upcast to fp32."""
    state = load_checkpoint(path, "guided-diffusion (ADM)")
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointMismatchError(f"{path} does not hold a state dict (name -> tensor)")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def meta_unet(flags: Mapping[str, Any]) -> ADMUNet:
    with torch.device("meta"):  # structure only: no memory, no initialisation
        return ADMUNet(**flags)


def mismatch_message(flags: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into the U-Net of ``flags`` and how to fix it; None if fine."""
    want, got = _shapes(meta_unet(flags).state_dict()), _shapes(state)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = [
        f"{k}: checkpoint {got[k]} vs flags {want[k]}"
        for k in want
        if k in got and got[k] != want[k]
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    hints = []
    if "time_embed.0.weight" in got:
        hints.append(f"num_channels={got['time_embed.0.weight'][1]}")
    hints.append(f"class_cond={'label_emb.weight' in got}")
    if "out.2.weight" in got:
        hints.append(f"learn_sigma={got['out.2.weight'][0] == 6}")
    presets = [
        name
        for name, checkpoint in RELEASED.items()
        if _shapes(meta_unet(complete_flags(checkpoint.flags)).state_dict()) == got
    ]
    fix = (
        f"the weights look like preset {' or '.join(presets)} (use it, or its flags)"
        if presets
        else ("check num_res_blocks, channel_mult, attention_resolutions and image_size")
    )
    return (
        f"checkpoint does not fit flags: {'; '.join(parts)}. From the weights: {', '.join(hints)}; "
        f"{fix}. (Head count and attention order are not visible in the weights: take them from "
        "the checkpoint's published MODEL_FLAGS.)"
    )


def load_unet(flags: Mapping[str, Any], path: Path) -> ADMUNet:
    """The U-Net of ``flags`` holding the weights at ``path``; a clear error if they do not fit."""
    state = load_state_dict(path)
    problem = mismatch_message(flags, state)
    if problem:
        raise CheckpointMismatchError(f"{path}: {problem}")
    unet = meta_unet(flags)
    unet.load_state_dict(state, strict=True, assign=True)
    return unet


class ADMBackbone(Backbone):
    """Frozen ADM U-Net features: block outputs at chosen timesteps of the forward noising.

    Numeric precision is the caller's: bench runs the forward under its precision policy's
    autocast (``--precision``), the one place it is decided; under fp32 on CUDA, PyTorch's TF32
    setting for convolutions applies (on by default: about 1e-3 relative difference to exact fp32).
    ``channels_last`` is off by default: PyTorch's CUDA GroupNorm works in NCHW, so on an H100
    channels_last made block 24 in bf16 slower (226 vs 317 img/s). ``compile`` runs the truncated
    U-Net through ``torch.compile`` (see ``bench.features.compile``); the features are the same, so it is
    not part of ``config``.
    """

    family = "diffusion"

    def __init__(
        self,
        flags: Mapping[str, Any],
        weights: str | os.PathLike,
        *,
        schedule: str = "linear",
        diffusion_steps: int = 1000,
        t: int = 90,
        layers: Sequence[str] = ("output_blocks.4",),
        pool: str = "2",
        noise_seed: int = 0,
        noise_draws: int = 1,
        class_label: int = 0,
        channels_last: bool = False,
        interpolation: str = "bicubic",
        compile: bool = False,
    ):
        super().__init__()
        if noise_draws < 1:
            raise UsageError("noise_draws must be at least 1")
        if not 0 <= class_label < NUM_CLASSES:
            raise UsageError(f"class_label must lie in [0, {NUM_CLASSES})")
        self.flags = complete_flags(flags)
        self.schedule = NoiseSchedule(schedule, diffusion_steps)
        self._check_t(t)
        path = resolve(weights)
        self.unet = load_unet(self.flags, path)
        self._digest = file_sha256(path)
        self.unet.eval().requires_grad_(False)
        self.compiled_forward = StaticCompiled(self.unet.features, enabled=compile)
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.t = t
        self.noise_seed = noise_seed
        self.noise_draws = noise_draws
        self.class_label = class_label
        self.channels_last = channels_last
        self.interpolation = interpolation
        self.input_size = int(self.flags["image_size"])
        self._numbers = {name: i for i, name in enumerate(self.unet.block_names(), start=1)}
        self.default_layers = tuple(self.canonical_layer(layer) for layer in layers)
        self.default_pool = pool

    # --- bench interface ------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return {
            "family": "adm",
            "flags": self.flags,
            "schedule": self.schedule.schedule,
            "diffusion_steps": self.schedule.steps,
            "t": self.t,
            "noise_seed": self.noise_seed,
            "noise_draws": self.noise_draws,
            "class_label": self.class_label if self.flags["class_cond"] else None,
            "transform": self.transform_description(),
        }

    def transform_description(self) -> str:
        return _diffusion.transform_description(self.input_size, self.interpolation)

    def transform(self) -> Callable[[Any], torch.Tensor]:
        return _diffusion.transform(self.input_size, self.interpolation)

    def canonical_layer(self, layer: str) -> str:
        """``block24@t90`` from ``24``, ``block24``, ``output_blocks.4``, each with optional ``@t90``/``@90``."""
        block, t = self._parse(layer)
        return str(LayerName(f"block{block}", t))

    def layer_groups(self, layers: Sequence[str]) -> list[list[str]]:
        """One group per timestep (``block19@t90`` -> group t90), blocks in first-seen order."""
        return _diffusion.timestep_groups([self._parse(layer) for layer in layers], "block")

    def feature_points(self) -> list[FeaturePoint]:
        """Every block at the default timestep; any other ``@tT`` is accepted too."""
        return [self.feature_point(f"block{n}") for n in range(1, self.unet.num_blocks + 1)]

    def feature_point(self, layer: str) -> FeaturePoint:
        block, t = self._parse(layer)
        channels, ds = self.unet.block_shapes[block - 1]
        side = self.input_size // ds
        module = self.unet.block_names()[block - 1]
        return FeaturePoint(
            str(LayerName(f"block{block}", t)),
            MAP,
            f"{module} at t={t}: {channels}x{side}x{side} (any @tT works)",
        )

    @torch.no_grad()
    def forward_features(
        self,
        x: torch.Tensor,
        layers: Sequence[str],
        sample_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Block outputs of noised ``x`` (images in [-1, 1]), keyed like ``layers``.

        All timesteps go through the U-Net as one batch (B images x T timesteps), stopping after
        the deepest block asked for; with ``noise_draws`` K the features are averaged over K
        noises (one such pass per draw). Without ``sample_ids`` image i of the batch counts as i.
        """
        parsed = {layer: self._parse(layer) for layer in layers}
        if not parsed:
            return {}
        out = _diffusion.noised_features(
            x.float(),
            range(x.shape[0]) if sample_ids is None else sample_ids.tolist(),
            sorted({t for _, t in parsed.values()}),
            noise_seed=self.noise_seed,
            draws=self.noise_draws,
            add_noise=lambda x0, eps, t: self.schedule.q_sample(x0, t, eps),
            features=lambda x_t, t: self.unet_features(
                x_t, t, sorted({block for block, _ in parsed.values()})
            ),
        )
        return {layer: out[key] for layer, key in parsed.items()}

    # --- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def unet_features(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        blocks: Sequence[int],
        y: torch.Tensor | None = None,
    ) -> dict[int, torch.Tensor]:
        """Raw outputs of paper blocks (1-based) for already-noised ``x_t`` at timesteps ``t``.

        ``t`` is one integer timestep per image (or one for all); ``y`` defaults to
        ``class_label`` for class-conditional checkpoints. Runs in the caller's autocast, if any.
        """
        x_t, t, y = self.unet_inputs(x_t, t, y)
        return self.compiled_forward(x_t, t, [int(b) for b in blocks], y)

    def unet_inputs(
        self, x_t: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x_t in the backbone's memory format, one long timestep per image, the labels) as
        ``self.unet`` takes them: for passes that need gradients (DifFeed's second pass)."""
        t = torch.as_tensor(t, device=x_t.device).long().expand(x_t.shape[0])
        if self.flags["class_cond"] and y is None:
            y = torch.full((x_t.shape[0],), self.class_label, device=x_t.device, dtype=torch.long)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        return x_t, t, y

    def feedback_model(self, layers: Sequence[str]) -> torch.nn.Module:
        """DifFeed around this backbone (``bench.backbones.adm.diffeed``), reading ``layers``."""
        from bench.backbones.adm.diffeed import DifFeed

        return DifFeed(self, layers)

    def noise(self, sample_ids: Sequence[int], draw: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Gaussian noise per image, from its own generator: independent of the batch it is in."""
        return _diffusion.seeded_noise(self.noise_seed, sample_ids, draw, shape)

    # --- helpers ----------------------------------------------------------------------------
    def _check_t(self, t: int) -> None:
        _diffusion.check_timestep(t, self.schedule.steps)

    def _parse(self, layer: str) -> tuple[int, int]:
        base, t = _diffusion.split_timestep(layer, self.t, self.schedule.steps, "block24@t90")
        match = _LAYER.fullmatch(base)
        if match is None:
            raise UsageError(
                f"layer {layer!r}: use a block number or module name, optionally with a timestep: "
                "'24', 'block24', 'output_blocks.4', 'middle_block', each optionally '@t90' or '@90'"
            )
        n = self.unet.num_blocks
        if match.group(1) is not None:
            block = int(match.group(1))
        elif match.group(2) in self._numbers:
            block = self._numbers[match.group(2)]
        else:
            raise UsageError(
                f"layer {layer!r}: this U-Net has input_blocks.0..{len(self.unet.input_blocks) - 1}, "
                f"middle_block, output_blocks.0..{len(self.unet.output_blocks) - 1}"
            )
        if not 1 <= block <= n:
            raise UsageError(f"layer {layer!r}: blocks are numbered 1..{n}")
        return block, t


def random_weights(flags: Mapping[str, Any], seed: int = 0) -> Path:
    """A safetensors file of seeded random weights for ``flags`` in the weights cache.

    Lets tests and demos run offline through the same loading path as a real checkpoint.
    """
    flags = complete_flags(flags)
    return random_weights_file({"family": "adm", "flags": flags}, seed, lambda: ADMUNet(**flags))
