"""The ADM U-Net of OpenAI's guided-diffusion (Dhariwal & Nichol 2021), written for feature extraction.

Built from the keyword arguments of guided-diffusion's ``create_model`` (the ``MODEL_FLAGS`` of the
released checkpoints), with the original parameter names so that those checkpoints load strictly.
Differences from the original that do not change the maths: attention runs through
``scaled_dot_product_attention``, the 1x1 ``qkv``/``proj_out`` convolutions are applied as linear
maps on tokens (no copies under channels_last), and ``features`` stops after the deepest block
asked for, keeping only the encoder outputs that the decoder blocks up to there consume.
``use_fp16`` and ``use_checkpoint`` are accepted for flag compatibility only: the caller picks the
precision (autocast) and nothing here is trained. Dropout is inactive in eval mode.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UsageError

NUM_CLASSES = 1000  # ImageNet labels of the class-conditional checkpoints
GROUPS = 32
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [cos, sin] halves, zero-padded if odd."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    args = t[:, None].float() * torch.exp(exponent / half)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups whose statistics are computed in float32 whatever the input dtype.

    The kernels accumulate bf16/fp16 inputs in float32 already, so under autocast the input is
    not copied to float32 and back (the original's cast): at 256 px those copies cost more than
    the convolutions. Autocast is bypassed so that it does not insert them either.
    """

    def __init__(self, channels: int):
        super().__init__(GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        with torch.autocast(x.device.type, enabled=False):
            weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)


def _resample(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if mode == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return x


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (resblock_updown)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        dropout: float,
        scale_shift: bool,
        resample: str | None = None,
    ):
        super().__init__()
        self.scale_shift = scale_shift
        self.resample = resample
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1))
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        h = conv(_resample(act(norm(x)), self.resample))  # resample between activation and conv
        x = _resample(x, self.resample)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, *out_rest = self.out_layers
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + e)
        for layer in out_rest:
            h = layer(h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over spatial positions.

    ``qkv`` packs channels per head as [q, k, v] (legacy order) or as [all q, all k, all v]
    (``use_new_attention_order``); both orders exist among the released checkpoints.
    """

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, new_order: bool):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise UsageError(
                    f"{channels} channels are not divisible by num_head_channels={num_head_channels}"
                )
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise UsageError(f"{channels} channels are not divisible by num_heads={num_heads}")
        self.heads = num_heads
        self.new_order = new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)  # Conv1d for the checkpoint's shapes
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, L, C), a view under channels_last
        qkv = F.linear(tokens, self.qkv.weight[..., 0], self.qkv.bias)
        if self.new_order:
            q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).unbind(2)
        else:
            q, k, v = qkv.unflatten(-1, (self.heads, 3, -1)).unbind(3)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = F.linear(
            a.transpose(1, 2).flatten(2), self.proj_out.weight[..., 0], self.proj_out.bias
        )
        return x + out.transpose(1, 2).unflatten(2, (height, width))


class Downsample(nn.Module):
    """Strided 3x3 convolution (when resblock_updown is off)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution (when resblock_updown is off)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """One numbered block: its ResBlocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def parse_channel_mult(channel_mult: str | Sequence[float], image_size: int) -> tuple[float, ...]:
    if isinstance(channel_mult, str) and not channel_mult.strip():
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise UsageError(
                f"channel_mult='' has a default only for image_size in {sorted(DEFAULT_CHANNEL_MULT)}; "
                f"pass channel_mult explicitly for image_size={image_size}"
            )
        return DEFAULT_CHANNEL_MULT[image_size]
    parts = channel_mult.split(",") if isinstance(channel_mult, str) else channel_mult
    return tuple(float(p) for p in parts)


def parse_attention_resolutions(resolutions: str | Sequence[int], image_size: int) -> set[int]:
    """Entries r of the flag mean: attention where the downsampling factor is image_size // r."""
    parts = resolutions.split(",") if isinstance(resolutions, str) else resolutions
    return {image_size // int(r) for r in parts if str(r).strip()}


class ADMUNet(nn.Module):
    """The U-Net of ``create_model(**flags)``; blocks are numbered 1..N over
    ``input_blocks + [middle_block] + output_blocks`` as in the paper."""

    def __init__(
        self,
        image_size: int,
        num_channels: int,
        num_res_blocks: int,
        channel_mult: str | Sequence[float] = "",
        learn_sigma: bool = False,
        class_cond: bool = False,
        use_checkpoint: bool = False,
        attention_resolutions: str | Sequence[int] = "16,8",
        num_heads: int = 4,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        dropout: float = 0.0,
        resblock_updown: bool = False,
        use_fp16: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        mults = parse_channel_mult(channel_mult, image_size)
        attention_ds = parse_attention_resolutions(attention_resolutions, image_size)
        self.model_channels = num_channels
        self.class_cond = class_cond
        emb_dim = 4 * num_channels
        widths = [int(m * num_channels) for m in mults]
        if any(w % GROUPS for w in widths):
            raise UsageError(
                f"channel widths {widths} (num_channels x channel_mult) must be multiples of "
                f"{GROUPS}, the GroupNorm group count"
            )

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, dropout, use_scale_shift_norm, resample)

        def attention(channels: int, heads: int) -> AttentionBlock:
            return AttentionBlock(channels, heads, num_head_channels, use_new_attention_order)

        self.time_embed = nn.Sequential(
            nn.Linear(num_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if class_cond:
            self.label_emb = nn.Embedding(NUM_CLASSES, emb_dim)

        ch = widths[0]
        ds = 1
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(3, ch, 3, padding=1))])
        shapes = [(ch, ds)]  # (channels, downsampling factor) of every block's output
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if ds in attention_ds:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                shapes.append((ch, ds))
            if level < len(widths) - 1:
                down = res(ch, ch, "down") if resblock_updown else Downsample(ch)
                self.input_blocks.append(EmbedSequential(down))
                ds *= 2
                shapes.append((ch, ds))
        skip_channels = [c for c, _ in shapes]

        self.middle_block = EmbedSequential(res(ch, ch), attention(ch, num_heads), res(ch, ch))
        shapes.append((ch, ds))

        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), width)]
                ch = width
                if ds in attention_ds:
                    layers.append(attention(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, "up") if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
                shapes.append((ch, ds))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, 6 if learn_sigma else 3, 3, padding=1)
        )
        self.block_shapes: list[tuple[int, int]] = shapes

    @property
    def num_blocks(self) -> int:
        return len(self.input_blocks) + 1 + len(self.output_blocks)

    def block_names(self) -> list[str]:
        """Module name of each block, index 0 = block 1."""
        return (
            [f"input_blocks.{i}" for i in range(len(self.input_blocks))]
            + ["middle_block"]
            + [f"output_blocks.{i}" for i in range(len(self.output_blocks))]
        )

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The full model output (eps, and the variance channels with learn_sigma), as the original."""
        _, h = self._run(x, timesteps, y, set(), self.num_blocks)
        return self.out(h)

    def features(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        blocks: Iterable[int],
        y: torch.Tensor | None = None,
        added: Mapping[int, torch.Tensor] | None = None,
    ) -> dict[int, torch.Tensor]:
        """Raw outputs of the given 1-based blocks; no block after the deepest one runs.

        ``added`` maps a block to a tensor of its output's shape that is summed onto that output
        before anything reads it: the next block, the skip connection, and the block's own entry
        in the result (DifFeed's second pass adds its feedback this way).
        """
        want = set(blocks)
        if not want:
            return {}
        bad = sorted(b for b in want if not 1 <= b <= self.num_blocks)
        if bad:
            raise UsageError(
                f"blocks {bad} out of range: this U-Net has blocks 1..{self.num_blocks}"
            )
        feats, _ = self._run(x, timesteps, y, want, max(want), added)
        return feats

    def _run(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        y: torch.Tensor | None,
        want: set[int],
        last: int,
        added: Mapping[int, torch.Tensor] | None = None,
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.class_cond:
            if y is None:
                raise UsageError(
                    "this U-Net is class-conditional: pass y, one class label per image"
                )
            emb = emb + self.label_emb(y)
        n_in = len(self.input_blocks)
        # Output block j consumes input block n_in-1-j; keep only the skips the run will use.
        needed = max(0, last - n_in - 1)
        blocks = [*self.input_blocks, self.middle_block, *self.output_blocks]
        feats: dict[int, torch.Tensor] = {}
        skips: list[torch.Tensor] = []
        h = x
        for number, block in enumerate(blocks[:last], start=1):
            if number > n_in + 1:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
            if added and number in added:
                h = h + added[number].to(h.dtype)
            if n_in - needed < number <= n_in:
                skips.append(h)
            if number in want:
                feats[number] = h
        return feats, h


FLAG_DEFAULTS: dict[str, Any] = {
    name: p.default
    for name, p in inspect.signature(ADMUNet.__init__).parameters.items()
    if name != "self"
}  # required flags map to inspect.Parameter.empty


def complete_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Flags with guided-diffusion's defaults filled in; unknown or missing keys are errors."""
    unknown = sorted(set(flags) - set(FLAG_DEFAULTS))
    if unknown:
        hint = (
            " (noise_schedule/diffusion_steps are diffusion settings: pass schedule=/diffusion_steps=)"
            if {"noise_schedule", "diffusion_steps"} & set(unknown)
            else ""
        )
        raise UsageError(
            f"unknown ADM flags {unknown}{hint}; create_model's flags are: {', '.join(FLAG_DEFAULTS)}"
        )
    out = {k: flags.get(k, v) for k, v in FLAG_DEFAULTS.items()}
    missing = [k for k, v in out.items() if v is inspect.Parameter.empty]
    if missing:
        raise UsageError(f"ADM flags need {missing}")
    for key in ("channel_mult", "attention_resolutions"):  # JSON-stable string form
        if not isinstance(out[key], str):
            out[key] = ",".join(str(v) for v in out[key])
    return out
