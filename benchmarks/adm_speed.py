"""ADM feature extraction speed: early stop + autocast (+ channels_last) + SDPA vs the full U-Net.

Same model (random weights) and inputs for every row. The reference row runs the whole U-Net in
fp32, NCHW, as the paper's code does (its decoder past the requested block included); the other
rows run what ``ADMBackbone.unet_features`` runs, with and without channels_last (the backbone's
default is without: faster on CUDA, where GroupNorm works in NCHW). Peak memory is what the call
adds on top of weights and inputs: the CUDA allocator's peak on GPU, the peak bytes of live
tensors created during the call on CPU. FLOPs are counted on the meta device. ``--compile`` adds
rows running the same truncated forward through ``bench.features.compile.StaticCompiled`` (what
``compile=True`` runs), with the compile time of its first call and the relative L2 error of its
features against the eager row's.

    python benchmarks/adm_speed.py --config 256-tiny --device cpu            # smoke, < 1 min
    python benchmarks/adm_speed.py --config 256-real-structure --device cuda --batch-size 64 --compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backbones.adm.backbone import RELEASED, TINY_FLAGS
from bench.backbones.adm.unet import ADMUNet, complete_flags
from bench.features.compile import StaticCompiled
from benchmarks.timing import seconds

CONFIGS = {"256-tiny": TINY_FLAGS, "256-real-structure": RELEASED["diffusion"].flags}


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensors created under the mode and still alive: CPU has no allocator stats."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: Counter[int] = Counter()
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if not self.refs[key]:
                    self.sizes[key] = t.untyped_storage().nbytes()
                    self.live += self.sizes[key]
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            self.live -= self.sizes.pop(key)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with LiveTensorBytes() as tracker:
        fn()
    return tracker.peak


def images_per_s(fn: Callable[[], object], batch: int, iters: int, device: torch.device) -> float:
    """From the median of single timed calls after a warm-up: robust to a busy machine."""
    fn()  # warm-up: cuDNN autotuning, oneDNN primitives, allocator
    return batch / statistics.median(seconds(fn, device) for _ in range(iters))


def run(unet: ADMUNet, x: torch.Tensor, t: torch.Tensor, blocks: list[int] | None,
        compiled: StaticCompiled | None = None) -> object:
    if blocks is None:
        return unet(x, t)
    return (compiled or unet.features)(x, t, blocks)


def relative_l2(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).norm() / b[k].float().norm()) for k in b)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtypes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=list(CONFIGS), default="256-tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, help="default: 32 on GPU, 2 on CPU")
    p.add_argument("--precision", choices=list(PRECISIONS), default="bf16")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM)")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (bench.features.compile)")
    p.add_argument("--compile-mode", default="",
                   help="comma-separated torch.compile modes, one row each (default: "
                        "bench.features.compile's choice, inductor's default)")
    p.add_argument("--blocks", default="24,19", help="comma-separated blocks to time")
    args = p.parse_args()

    device = torch.device(args.device)
    args.batch_size = args.batch_size or (32 if device.type == "cuda" else 2)
    torch.backends.cudnn.benchmark = True
    flags = complete_flags(CONFIGS[args.config])
    size = flags["image_size"]
    torch.manual_seed(0)
    with torch.device(device):
        unet = ADMUNet(**flags).eval().requires_grad_(False)
        x = torch.randn(args.batch_size, 3, size, size)
        t = torch.full((args.batch_size,), 90, dtype=torch.long)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    dtype = PRECISIONS[args.precision]

    p_name = args.precision
    blocks = [int(b) for b in args.blocks.split(",")]
    rows = [  # (label, blocks: None = the whole U-Net, precision?, channels_last?, compile mode)
        ("full U-Net, fp32, NCHW (reference)", None, False, False, None),
        (f"full U-Net, {p_name}", None, True, False, None),
    ]
    for block in blocks:
        rows += [(f"block {block}, early stop+{p_name}", [block], True, False, None),
                 (f"block {block}, early stop+{p_name}+channels_last", [block], True, True, None)]
    modes = args.compile_mode.split(",") if args.compile else []
    for block in blocks:
        rows += [(f"block {block}, early stop+{p_name}+compile" + (f"({mode})" if mode else ""),
                  [block], True, False, mode or "-") for mode in modes]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"ADM {args.config}: {params:.1f}M params, {size}px, batch {args.batch_size}, "
        f"{args.iters} iters, device {name} ({torch.get_num_threads()} CPU threads)"
    )
    if device.type == "cuda":
        print(
            f"fp32 convolutions use TF32 (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}); "
            f"FLOP/s fraction is of {args.peak_tflops:g} TFLOP/s dense bf16 peak"
        )
    head = f"{'variant':<62} {'img/s':>9} {'peak MiB':>9} {'GFLOP/img':>10} {'speedup':>8}"
    print(head + (f" {'TFLOP/s':>8} {'% peak':>7}" if device.type == "cuda" else ""))
    with torch.device("meta"):  # FLOPs from shapes (FlopCounterMode has no formula for CPU SDPA)
        meta_unet = ADMUNet(**flags)
    reference = None
    eager: dict[str, dict[int, torch.Tensor]] = {}  # features of the eager rows, by blocks
    notes = []
    with torch.no_grad():
        for label, blocks, low, cl, compiled in rows:  # compiled: a mode, "-" (default) or None
            with FlopCounterMode(display=False) as counter:
                run(meta_unet, x[:1].to("meta"), t[:1].to("meta"), blocks)
            flops = counter.get_total_flops()
            unet.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            forward = None
            if compiled:
                torch._dynamo.reset()  # each mode compiles afresh, never reusing another's graph
                forward = StaticCompiled(unet.features, True, None if compiled == "-" else compiled)
            call = partial(run, unet, x_cl if cl else x, t, blocks, forward)
            with torch.autocast(device.type, dtype=dtype, enabled=low and dtype is not None):
                if compiled:
                    start = time.perf_counter()
                    features = call()
                    error = relative_l2(features, eager[str(blocks)])
                    notes.append(f"{label}: first call (compilation) "
                                 f"{time.perf_counter() - start:.0f} s, features vs eager: "
                                 f"relative L2 {error:.2e}")
                elif blocks and not cl and low:
                    eager[str(blocks)] = call()
                speed = images_per_s(call, args.batch_size, args.iters, device)
                mem = peak_bytes(call, device) / 2**20
            reference = reference or speed
            line = (
                f"{label:<62} {speed:>9.2f} {mem:>9.0f} {flops / 1e9:>10.1f} "
                f"{speed / reference:>7.2f}x"
            )
            if device.type == "cuda":
                achieved = flops * speed / 1e12
                line += f" {achieved:>8.1f} {100 * achieved / args.peak_tflops:>6.1f}%"
            print(line, flush=True)
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
