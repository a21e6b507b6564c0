"""The paper's attention head and the DifFormer fusion head, trained on cached feature maps.

Both heads read maps cached with pool ``map16`` (adaptive average pool to at most 16 x 16, the
paper's ``AdaptiveAvgPool2d(min(size, 16))``), so the frozen backbone runs once per image instead
of once per training step as in the reference code.

- ``attention`` (docs/paper.md, "Heads"): per block LayerNorm([C, H, W]) -> 1x1 conv to ``dim`` ->
  tokens; a zero-initialised CLS token is prepended (no positional embedding); ``depth`` pre-LN
  transformer blocks (``heads`` heads, MLP ratio 4, no qkv bias, GELU, no dropout); the CLS output
  goes straight to a Linear classifier (no final LayerNorm, as in the paper and its code).
- ``difformer`` (the follow-up): the same for several blocks at several timesteps. Each block has
  one LayerNorm + 1x1 conv and there is one transformer, both shared across timesteps; each
  timestep's tokens (all its blocks, plus CLS) pass through it separately and the CLS outputs of
  all timesteps are concatenated before the classifier.

Each layer's maps are divided by one number, their typical scale on the training split
(``map_scales``), before the head's LayerNorm: its epsilon (1e-5) is then relative, so the head's
numbers do not depend on the features' overall scale.

Training follows ``bench.protocol.evaluate``: each learning rate of the grid is trained with
validation checkpoints every ``eval_every`` epochs, the best (lr, epochs) on validation is retrained
on train+val identically and evaluated on test once. Recipes: ``paper`` is the released scripts'
SGD (no momentum, no weight decay), StepLR(7, 0.1), 28 epochs, lr 5e-2, batch 128; ``adamw`` is
AdamW with a cosine schedule over a small lr grid.

Cache bytes per image (fp16, maps pooled to at most 16 x 16; shapes checked against the 256x256
unconditional U-Net): the attention head on block 24 (1024 x 16 x 16, kept as is) needs
1024 * 256 * 2 B = 512 KiB; DifFormer on blocks 19 (1024 x 8 x 8 -> 128 KiB), 24 (512 KiB) and
30 (512 x 64 x 64, pooled to 512 x 16 x 16 -> 256 KiB) is 896 KiB per timestep, 2688 KiB
(2.625 MiB) for t in {90, 150, 300}. For ImageNet's 1,281,167 training images that is about
626 GiB and 3.2 TiB.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UsageError
from bench.precision import FP32, PrecisionPolicy, require
from bench.heads.memory import HostBuffers, Inputs, MemoryPlan, Source, inputs_of
from bench.heads.streaming import ViewCycle, epoch_order
from bench.ranges import COUNT, NON_NEGATIVE, POSITIVE, check_settings, setting
from bench.protocol import (ProbeData, ProbeResult, checkpoints, evaluate, top_classes,
                            top_predictions)

ARCHITECTURES = ("attention", "difformer")  # what this trainer builds (heads: bench.heads.kinds)
RECIPES = ("paper", "adamw")
MAX_SIDE = 16  # the paper pools every block to at most 16 x 16 before its attention head
DEFAULT_LRS = {"paper": (5e-2,), "adamw": (1e-4, 3e-4, 1e-3)}
DEFAULT_WEIGHT_DECAY = {"paper": 0.0, "adamw": 0.05}


class TransformerBlock(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)); qkv without bias, GELU, no dropout."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        if dim % heads:
            raise UsageError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """(B, n, dim) -> (B, n, dim); with ``first_only`` the first token's output (B, 1, dim)
        alone: it needs every token's keys and values but one query, one attention row and one
        MLP (the head's last block, whose CLS output is all it uses)."""
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if first_only:
            q, x = q[:, :, :1], x[:, :1]
        # The fused kernel never materialises the (B, heads, n, n) weights: on the CPU it was 2x
        # faster than softmax(q k^T) v written out and far steadier on a busy machine. Under
        # torch.vmap (the lr grid) it has no batching rule and runs once per head, which is the
        # same work (``HeadGrid`` silences the warning).
        attended = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attended.transpose(1, 2).reshape(x.shape))
        return x + self.mlp(self.norm2(x))


class MapTokens(nn.Module):
    """(B, C, H, W) map -> (B, H*W, dim) tokens: LayerNorm over [C, H, W], then a 1x1 conv."""

    def __init__(self, shape: tuple[int, int, int], dim: int):
        super().__init__()
        channels, height, width = shape
        if height > MAX_SIDE or width > MAX_SIDE:
            raise UsageError(
                f"map {shape} is larger than {MAX_SIDE}x{MAX_SIDE}: cache it with pool 'map16'"
            )
        self.norm = nn.LayerNorm([channels, height, width])
        self.conv = nn.Conv2d(channels, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The 1x1 conv as a matmul over tokens: the same numbers, and under torch.vmap (the
        # batched lr grid) a batched matmul rather than a slow grouped convolution.
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        return F.linear(tokens, self.conv.weight.flatten(1), self.conv.bias)


class AttentionHead(nn.Module):
    """The paper's attention head over the maps of one or more layers (their tokens concatenated)."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, int, int]],
        num_classes: int,
        dim: int = 1024,
        heads: int = 8,
        depth: int = 2,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        self.layers = list(shapes)
        self.embed = nn.ModuleList(MapTokens(tuple(s), dim) for s in shapes.values())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.classifier = nn.Linear(dim, num_classes)

    def embed_inputs(self, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The map each embedding reads, in order."""
        return [x[name] for name in self.layers]

    def encode(self, maps: Sequence[torch.Tensor] | None,
               tokens: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """CLS output (B, dim) for one map per embedding, in order; ``tokens``: the embeddings'
        outputs when already computed (``HeadGrid`` computes them for all heads at once), and
        then ``maps`` is not read."""
        if tokens is None:
            tokens = [embed(m) for embed, m in zip(self.embed, maps)]
        cls = self.cls_token.expand(len(tokens[0]), -1, -1).to(tokens[0].dtype)
        x = torch.cat([cls, *tokens], dim=1)
        if not len(self.blocks):
            return x[:, 0]
        for block in self.blocks[:-1]:
            x = block(x)
        return self.blocks[-1](x, first_only=True)[:, 0]

    def forward(self, x: dict[str, torch.Tensor],
                tokens: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        return self.classifier(self.encode(self._maps(x, tokens), tokens))

    def _maps(self, x: dict[str, torch.Tensor], tokens: Sequence[torch.Tensor] | None):
        """The embeddings' inputs, unless their tokens are given (no copy of the maps then)."""
        return self.embed_inputs(x) if tokens is None else None


class DifFormerHead(AttentionHead):
    """Attention head shared across groups (timesteps); CLS outputs concatenated, then classified.

    ``groups[g][i]`` is block i at timestep g: position i has one embedding for all timesteps,
    so every group must list the same blocks (same map shapes) in the same order.
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, int, int]],
        groups: list[list[str]],
        num_classes: int,
        dim: int = 1024,
        heads: int = 8,
        depth: int = 2,
        mlp_ratio: int = 4,
    ):
        first = {name: tuple(shapes[name]) for name in groups[0]}
        for group in groups[1:]:
            if [tuple(shapes[name]) for name in group] != list(first.values()):
                raise UsageError(f"group {group} does not match {groups[0]} block for block")
        super().__init__(first, num_classes, dim, heads, depth, mlp_ratio)
        self.groups = [list(g) for g in groups]
        self.classifier = nn.Linear(len(groups) * dim, num_classes)

    def embed_inputs(self, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        # All timesteps go through the shared transformer as one batch (G*B sequences).
        return [torch.cat([x[g[i]] for g in self.groups]) for i in range(len(self.groups[0]))]

    def forward(self, x: dict[str, torch.Tensor],
                tokens: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        cls = self.encode(self._maps(x, tokens), tokens)
        g, b = len(self.groups), len(cls) // len(self.groups)
        return self.classifier(cls.view(g, b, -1).transpose(0, 1).reshape(b, -1))


@dataclass
class HeadConfig:
    head: str = "attention"
    recipe: str = "paper"
    # None: (5e-2,) for paper, (1e-4, 3e-4, 1e-3) for adamw
    lrs: tuple[float, ...] | None = setting(None, POSITIVE)
    # None: 0 for paper (it has none), 0.05 for adamw
    weight_decay: float | None = setting(None, NON_NEGATIVE)
    epochs: int = setting(28, COUNT)
    eval_every: int = setting(7, COUNT)  # validation checkpoints: every N epochs, and the last
    batch_size: int = setting(128, COUNT)
    dim: int = setting(1024, COUNT)
    heads: int = setting(8, COUNT)
    depth: int = setting(2, COUNT)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in ARCHITECTURES:
            raise UsageError(f"the attention trainer builds {', '.join(ARCHITECTURES)}, not "
                             f"{self.head!r}")
        if self.recipe not in RECIPES:
            raise UsageError(f"unknown recipe {self.recipe!r}; recipes: {', '.join(RECIPES)}")
        self.lrs = tuple(self.lrs) if self.lrs is not None else DEFAULT_LRS[self.recipe]
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.recipe]
        if self.recipe == "paper" and self.weight_decay != 0:
            raise UsageError("the paper recipe has no weight decay; use recipe='adamw'")
        if self.epochs < 1 or self.eval_every < 1 or not self.lrs:
            raise UsageError("head needs epochs >= 1, eval_every >= 1 and a non-empty lr grid")
        check_settings(self)

    def checkpoints(self) -> list[int]:
        return checkpoints(self.epochs, self.eval_every)


def make_optimizer(
    params, cfg: HeadConfig, lr: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimizer and its scheduler, stepped once per epoch."""
    if cfg.recipe == "paper":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)


class _Maps:
    """Maps of one or more splits, on the host in their stored dtype (fp16 stays fp16) and moved
    to the device a minibatch at a time: ImageNet-sized caches do not fit in GPU memory. Read
    into memory once in mode ``memory``, else left memory-mapped and read a minibatch at a time
    (``attention_memory``, the one memory policy's plan), through two reused host buffers per
    layer: the minibatch training and the one gathered ahead."""

    def __init__(self, parts: list[dict[str, np.ndarray]], labels: list[np.ndarray],
                 mode: str = "memory", scales: dict[str, float] | None = None):
        """``scales``: each layer's maps are divided by it on the device (``map_scales``)."""
        self.scales = scales or {}
        self.bounds = np.cumsum([0] + [len(y) for y in labels])
        self.labels = np.concatenate(labels).astype(np.int64)
        if mode == "memory":
            parts = [{name: np.asarray(a) for name, a in part.items()} for part in parts]
        self.parts = parts
        self.buffers: dict[str, HostBuffers] = {}  # layer -> its two minibatch slots
        self.copied: dict[int, torch.cuda.Event] = {}  # slot -> its last copy to the device

    def __len__(self) -> int:
        return len(self.labels)

    def _gather(self, index: np.ndarray, layers: Sequence[str], slot: int, pin: bool):
        """Rows ``index`` (sorted: fast on memory-mapped arrays) copied once, into buffer
        ``slot`` (pinned on CUDA so the transfer can run asynchronously)."""
        index = np.sort(index)
        cuts = np.searchsorted(index, self.bounds)
        if slot in self.copied:  # the slot's last minibatch must be on the device by now
            self.copied.pop(slot).synchronize()
        maps = {}
        for layer in layers:
            first = self.parts[0][layer]
            if layer not in self.buffers:
                self.buffers[layer] = HostBuffers(first.shape[1:], first.dtype, pin=pin)
            out = self.buffers[layer].get(slot, len(index))
            view = out.numpy()
            for part, lo, a, b in zip(self.parts, self.bounds, cuts[:-1], cuts[1:]):
                # mode="clip" writes straight into ``out`` (the default buffers); rows are valid.
                np.take(part[layer], index[a:b] - lo, axis=0, out=view[a:b], mode="clip")
            maps[layer] = out
        return maps, torch.from_numpy(self.labels[index])

    def batches(
        self, chunks: Sequence[np.ndarray], layers: Sequence[str], device: torch.device
    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """(maps, labels) on ``device`` per chunk of row indices; the next chunk is gathered on
        the host while the current one trains (host reads were 2/3 of a step on an H100)."""
        pin = device.type == "cuda"
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._gather, chunks[0], layers, 0, pin) if len(chunks) else None
            for i in range(len(chunks)):
                maps, y = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(self._gather, chunks[i + 1], layers, (i + 1) % 2, pin)
                # In the default dtype: float32, or float64 where a test asks for exactness.
                real = torch.get_default_dtype()
                moved = {k: _divided(v.to(device, non_blocking=True).to(real),
                                     self.scales.get(k, 1.0)) for k, v in maps.items()}
                if pin:
                    self.copied[i % 2] = torch.cuda.Event()
                    self.copied[i % 2].record()
                yield moved, y.to(device)


def _divided(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x if scale == 1.0 else x / scale


SCALE_ROWS = 1024  # training maps a layer's scale is measured on (evenly spread)


def map_scales(maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Each layer's typical map scale: the root mean per-map variance of up to ``SCALE_ROWS``
    training maps spread evenly over the split (1 where nothing varies). Maps divided by it
    reach the head's LayerNorm with unit variance, so its epsilon (1e-5, the paper's) is
    relative: the head's numbers do not depend on the features' overall scale, and a map
    constant in every position still normalises to 0."""
    out = {}
    for layer, array in maps.items():
        rows = np.unique(np.linspace(0, len(array) - 1, min(len(array), SCALE_ROWS)).astype(int))
        x = np.asarray(array[rows], dtype=np.float64).reshape(len(rows), -1)
        out[layer] = float(np.sqrt(x.var(axis=1).mean())) or 1.0
    return out


def attention_memory(cfg: HeadConfig, inputs: Inputs, budget: int | None) -> MemoryPlan:
    """The head's reads within ``budget`` (``bench.heads.memory``): train's maps held in their
    stored type if they fit beside one minibatch of val, then val in what is left; the refit's
    train+val; then test. One step: the minibatch training and the one gathered ahead, as
    stored, and the first in float32 on the device."""
    def source(name: str) -> Source:
        rows = inputs.rows_of(name)
        batch = min(cfg.batch_size, rows)
        per = 2 * inputs.stored + 4
        return Source(name, rows * inputs.dims * inputs.stored, batch * inputs.dims * per,
                      f"{batch:,} maps x {inputs.dims:,} numbers x {per} B [2 x {inputs.stored} "
                      "stored + 4 float32]", what="attention-head minibatch")

    return MemoryPlan.of(budget, {"search": [source("train"), source("val")],
                                  "refit": [source("train+val")], "test": [source("test")]})


def attention_state(cfg: HeadConfig, inputs: Inputs) -> tuple[int, str]:
    """Bytes of the lr grid's parameters, gradients and (AdamW) moments, float32; activations
    are not counted."""
    channels = sum(shape[0] for shape in inputs.shapes)
    dim, layers = cfg.dim, max(len(inputs.shapes), 1)
    params = (2 * inputs.dims + channels * dim + layers * dim + dim
              + cfg.depth * (12 * dim * dim + 13 * dim) + (dim + 1) * inputs.classes)
    copies = 4 if cfg.recipe == "adamw" else 2
    return (len(cfg.lrs) * params * 4 * copies,
            f"{len(cfg.lrs)} x {params:,} parameters x 4 B x {copies} (activations not counted)")


class HeadGrid:
    """G copies of one head, one per learning rate, held as stacked parameters (G, ...) and
    evaluated together with ``torch.func.functional_call`` under ``torch.vmap``: every minibatch
    is read once for all G heads.

    The embeddings (LayerNorm over [C, H, W], then a 1x1 conv to ``dim``) of all G heads are
    computed together, outside vmap, when that is cheaper (``dim`` no larger than the batch): the
    normalisation is the same for every head, and each head's affine is folded into its conv
    weight per position, so one matmul over shared normalised maps serves all heads and no
    per-head pass over the (B, C, H, W) maps is made, forward or backward (``grid_tokens``).
    """

    def __init__(self, build: Callable[[], nn.Module], count: int, seed: int,
                 device: torch.device):
        models = []
        for _ in range(count):
            with torch.random.fork_rng(devices=[]):  # same initial weights for every head
                torch.manual_seed(seed)
                models.append(build().to(device))
        params, self.buffers = torch.func.stack_module_state(models)
        self.names = list(params)
        self.params = [params[n] for n in self.names]
        self.template = models[0].to("meta")

    def _embeddings(self, maps: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """(G, B, h*w, dim) tokens of every embedding for all heads, or None where folding the
        affine into the conv would cost more than applying it to the maps."""
        embeds = self.template.embed
        if embeds[0].conv.out_channels > len(maps[0]):
            return None
        params = dict(zip(self.names, self.params))
        out = []
        for i, (embed, m) in enumerate(zip(embeds, maps)):
            prefix = f"embed.{i}."
            out.append(grid_tokens(m, params[prefix + "norm.weight"], params[prefix + "norm.bias"],
                                   params[prefix + "conv.weight"], params[prefix + "conv.bias"],
                                   embed.norm.eps))
        return out

    def __call__(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """(G, B, classes) logits of every head on one shared minibatch."""
        tokens = self._embeddings(self.template.embed_inputs(maps))

        def one(params: tuple[torch.Tensor, ...], buffers: dict[str, torch.Tensor], tokens):
            state = {**dict(zip(self.names, params)), **buffers}
            return torch.func.functional_call(self.template, state, (maps,), {"tokens": tokens})

        per_head = None if tokens is None else 0
        with warnings.catch_warnings():
            # scaled_dot_product_attention has no vmap batching rule: it runs once per head.
            warnings.filterwarnings("ignore", message=".*batching rule.*scaled_dot_product")
            return torch.vmap(one, in_dims=(0, 0, per_head))(tuple(self.params), self.buffers,
                                                             tokens)


def grid_tokens(maps: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                conv_weight: torch.Tensor, conv_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``MapTokens`` of G heads on one (B, C, H, W) batch: (G, B, H*W, K) tokens.

    LayerNorm([C, H, W]) then a 1x1 conv is, per position p,
    ``W (gamma_p * x_hat_p + beta_p) + bias = (W * gamma_p) x_hat_p + (W beta_p + bias)``, with
    ``x_hat`` the same for every head: one (B, C) x (C, G*K) matmul per position.
    Parameters are stacked: (G, C, H, W), (G, C, H, W), (G, K, C, 1, 1), (G, K).
    """
    batch, channels = maps.shape[:2]
    heads, dim = conv_weight.shape[:2]
    positions = maps[0, 0].numel()
    # nn.LayerNorm's normalisation without its affine; each map then transposed to (P, C), which
    # the GEMMs read as (P, B, C) with channels contiguous (half the time of a (P, B, C) copy).
    x_hat = F.layer_norm(maps, maps.shape[1:], eps=eps).flatten(2).transpose(1, 2)
    by_position = x_hat.contiguous().transpose(0, 1)
    w = conv_weight.view(heads, dim, channels)
    gamma, beta = norm_weight.view(heads, channels, positions), norm_bias.view(heads, channels, -1)
    # (P, C, G, K) built in the layout the GEMM reads (gamma, which is small, made contiguous).
    folded = gamma.permute(2, 1, 0).contiguous().unsqueeze(-1) * w.permute(2, 0, 1)
    folded = folded.view(positions, channels, heads * dim)
    shift = torch.einsum("gkc,gcp->pgk", w, beta) + conv_bias.unsqueeze(0)
    tokens = torch.baddbmm(shift.reshape(positions, 1, heads * dim), by_position, folded)
    return tokens.view(positions, batch, heads, dim).permute(2, 1, 0, 3)


class _GridOptimizer:
    """The recipe's optimizer and schedule for stacked parameters, each head at its own lr.

    Computes what ``make_optimizer`` builds from torch.optim for one head (SGD + StepLR(7, 0.1),
    or AdamW + cosine over ``cfg.epochs``), with the learning rate a (G,) tensor.
    """

    def __init__(self, params: list[torch.Tensor], cfg: HeadConfig, lrs: Sequence[float]):
        self.params, self.cfg = params, cfg
        self.base_lrs = [float(lr) for lr in lrs]
        self.epoch = 0
        self.steps = 0
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]

    def lrs(self) -> torch.Tensor:
        """Each head's learning rate in the current epoch (computed in float64, as torch.optim)."""
        if self.cfg.recipe == "paper":
            factor = 0.1 ** (self.epoch // 7)
        else:
            factor = 0.5 * (1 + math.cos(math.pi * self.epoch / self.cfg.epochs))
        return torch.tensor([lr * factor for lr in self.base_lrs], device=self.params[0].device)

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        lrs = self.lrs()
        for p, (m, v) in zip(self.params, self.moments):
            lr = lrs.view(-1, *[1] * (p.dim() - 1))
            if self.cfg.recipe == "paper":
                p.addcmul_(p.grad, lr, value=-1.0)
                continue
            beta1, beta2, eps = 0.9, 0.999, 1e-8
            p.mul_(1 - lr * self.cfg.weight_decay)
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = v.sqrt().div_(math.sqrt(1 - beta2**self.steps)).add_(eps)
            p.sub_(m.div(denom).mul_(lr / (1 - beta1**self.steps)))

    def end_epoch(self) -> None:
        self.epoch += 1


def _autocast(device: torch.device, kind: str):
    """The policy's head autocast (``PrecisionPolicy.heads``)."""
    from bench.precision import autocast

    return autocast(kind, device)


@torch.no_grad()
def _chunk_logits(grid: HeadGrid, data: _Maps, layers: Sequence[str], device: torch.device,
                  batch_size: int, autocast_kind: str = "fp32") -> Iterator[torch.Tensor]:
    """(G, n, classes) logits of every head of the grid on ``data``, chunk by chunk, in order."""
    chunks = [np.arange(i, min(i + batch_size, len(data))) for i in range(0, len(data), batch_size)]
    for maps, _ in data.batches(chunks, layers, device):
        with _autocast(device, autocast_kind):
            yield grid(maps).to(torch.get_default_dtype())


def _logits(grid: HeadGrid, data: _Maps, layers: Sequence[str], device: torch.device,
            batch_size: int, autocast_kind: str = "fp32") -> torch.Tensor:
    """(G, N, classes) logits of every head of the grid on ``data``, in order."""
    return torch.cat([c.cpu() for c in _chunk_logits(grid, data, layers, device, batch_size,
                                                     autocast_kind)], dim=1)


def _top(grid: HeadGrid, data: _Maps, layers: Sequence[str], device: torch.device,
         batch_size: int, autocast_kind: str = "fp32") -> torch.Tensor:
    """(G, N, 5) best classes of every head (``top_classes``), never (G, N, classes)."""
    return torch.cat([top_classes(c).cpu() for c in _chunk_logits(
        grid, data, layers, device, batch_size, autocast_kind)], dim=1)


def train_grid(
    build: Callable[[], nn.Module],
    data: _Maps | ViewCycle[_Maps],
    layers: Sequence[str],
    cfg: HeadConfig,
    lrs: Sequence[float],
    device: torch.device,
    evaluate_at: dict[int, Callable[[HeadGrid], None]],
    stop_at: int,
    progress: bool,
    autocast_kind: str = "fp32",
) -> HeadGrid:
    """Train one head per learning rate in ``lrs``, all at once, for ``stop_at`` of the
    schedule's ``cfg.epochs`` epochs; call ``evaluate_at[epoch](grid)`` at checkpoints.

    Identical to training each head alone from the same initial weights (``cfg.seed``) on the
    same minibatch order (seeded by ``cfg.seed``), with ``make_optimizer``'s recipe. ``data``: a
    ``ViewCycle`` of augmented train views (``--views``): epoch e reads view e mod V.
    """
    views = data if isinstance(data, ViewCycle) else ViewCycle(lambda _: data)
    grid = HeadGrid(build, len(lrs), cfg.seed, device)
    optimizer = _GridOptimizer(grid.params, cfg, lrs)
    gen = torch.Generator().manual_seed(cfg.seed)
    from tqdm.auto import tqdm

    for epoch in tqdm(range(1, stop_at + 1), desc=f"{cfg.head} x{len(lrs)} lrs", unit="epoch",
                      disable=not progress, leave=False):
        maps_of_epoch = views(epoch - 1)
        order = epoch_order(len(maps_of_epoch), gen)
        chunks = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        for maps, y in maps_of_epoch.batches(chunks, layers, device):
            with _autocast(device, autocast_kind):
                logits = grid(maps).to(torch.get_default_dtype())
            # The sum over heads of each head's mean loss: head g's gradient is its own.
            losses = F.cross_entropy(logits.transpose(1, 2), y.expand(len(lrs), -1),
                                     reduction="none")
            loss = losses.mean(1).sum()
            for p in grid.params:
                p.grad = None
            loss.backward()
            optimizer.step()
        optimizer.end_epoch()
        if epoch in evaluate_at:
            evaluate_at[epoch](grid)
    return grid


class AttentionTrainer:
    """The attention and DifFormer heads as a ``bench.protocol`` trainer: one model per learning
    rate, validation checkpoints every ``eval_every`` epochs.

    ``features[split][layer]`` is an (N, C, h, w) map with h, w <= 16. The attention head uses every
    layer given; DifFormer needs ``groups`` (``groups[g][i]``: block i at timestep g), which the
    backbone provides (``Backbone.layer_groups``).
    """

    def __init__(self, cfg: HeadConfig, device: torch.device | str, precision: PrecisionPolicy,
                 progress: bool = False, groups: list[list[str]] | None = None):
        if cfg.head == "attention" and groups is not None and len(groups) > 1:
            raise UsageError("groups apply to the difformer head only")
        self.cfg, self.device, self.progress, self.groups = cfg, torch.device(device), progress, groups
        self.autocast = require(precision).heads
        self._scales: tuple[dict, dict[str, float]] | None = None  # (train maps, their scales)

    def _prepare(self, data: ProbeData) -> tuple[Callable[[], nn.Module], list[str]]:
        cfg, features = self.cfg, data.features
        layers = list(features["train"])
        shapes = {name: tuple(features["train"][name].shape[1:]) for name in layers}
        for split in ("val", "test"):
            if {n: tuple(a.shape[1:]) for n, a in features[split].items()} != shapes:
                raise UsageError(f"split {split!r} does not have the train split's layers and shapes")
        if any(len(s) != 3 for s in shapes.values()):
            raise UsageError(f"heads need (N, C, h, w) maps (pool 'map16'); got shapes {shapes}")
        if cfg.head == "attention":
            return (lambda: AttentionHead(shapes, data.num_classes, cfg.dim, cfg.heads, cfg.depth),
                    layers)
        groups = self.groups or [layers]
        used = [name for group in groups for name in group]  # read only what the head uses
        return (lambda: DifFormerHead(shapes, groups, data.num_classes, cfg.dim, cfg.heads,
                                      cfg.depth), used)

    def search(self, data: ProbeData) -> list[dict[str, float]]:
        cfg = self.cfg
        build, layers = self._prepare(data)
        train, val = self._views(data, ["train"], "search"), self._maps(data, ["val"], "search")
        records: list[dict[str, float]] = []

        def record(epoch: int) -> Callable[[HeadGrid], None]:
            def at(grid: HeadGrid) -> None:
                top = _top(grid, val, layers, self.device, cfg.batch_size, self.autocast)
                for lr, p in zip(cfg.lrs, top_predictions(top, val.labels, data.num_classes)):
                    records.append({"lr": lr, "weight_decay": cfg.weight_decay, "epochs": epoch,
                                    **p.metrics()})
            return at

        train_grid(build, train, layers, cfg, cfg.lrs, self.device,
                   {e: record(e) for e in cfg.checkpoints()}, cfg.epochs, self.progress,
                   self.autocast)
        # learning rate first, then epochs: the first maximum is the one sequential training found
        order = {lr: i for i, lr in enumerate(cfg.lrs)}
        return sorted(records, key=lambda r: (order[r["lr"]], r["epochs"]))

    def refit_predict(self, data: ProbeData, point: dict[str, float]) -> torch.Tensor:
        build, layers = self._prepare(data)
        grid = train_grid(build, self._views(data, ["train", "val"], "refit"), layers, self.cfg,
                          [point["lr"]], self.device, {}, int(point["epochs"]), self.progress,
                          self.autocast)
        return _logits(grid, self._maps(data, ["test"], "test"), layers, self.device,
                       self.cfg.batch_size, self.autocast)[0]

    def _views(self, data: ProbeData, splits: Sequence[str], phase: str) -> ViewCycle[_Maps]:
        """``_maps`` of each augmented view of train (``ProbeData.views``), one at a time."""
        return ViewCycle(lambda view: self._maps(data, splits, phase, view), data.view_count)

    def _maps(self, data: ProbeData, splits: Sequence[str], phase: str, view: int = 0) -> _Maps:
        """The maps of ``splits`` (train's view ``view``) in the plan's mode, each layer divided
        by its scale on train's first view (the same in every phase)."""
        plan = attention_memory(self.cfg, inputs_of(data, 4), data.memory_budget)
        if self._scales is None or self._scales[0] is not data.features["train"]:
            self._scales = (data.features["train"], map_scales(data.features["train"]))
        return _Maps([data.split_features(s, view) for s in splits],
                     [data.labels[s] for s in splits],
                     plan.mode(phase, "+".join(splits)), self._scales[1])


def fit_head(
    features: dict[str, dict[str, np.ndarray]],
    labels: dict[str, np.ndarray],
    num_classes: int,
    cfg: HeadConfig,
    headline: str = "top1",
    device: torch.device | str = "cpu",
    groups: list[list[str]] | None = None,
    progress: bool = False,
    precision: PrecisionPolicy = FP32,
) -> ProbeResult:
    """``bench.protocol.evaluate`` with an attention/DifFormer head trainer (``precision``: the
    policy, default fp32 on any device)."""
    trainer = AttentionTrainer(cfg, device, precision, progress=progress, groups=groups)
    return evaluate(trainer, ProbeData(features, labels, num_classes), headline)
