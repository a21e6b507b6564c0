"""``--online`` speed: the truncated ADM forward alone against the forward plus 25 linear heads.

An online run (``bench.run.online``) pays, at every step, one forward of the truncated backbone
(no_grad, bf16 autocast on CUDA, optionally compiled) and one step of every head of the linear
grid from those features (``bench.heads.probe._GridHeads``: one GEMM forward, one backward, and
``_AdamW``). This times both on the same random images (no decoding or augmentation: what the
GPU does), ADM-256 (the unconditional 256x256 architecture, random weights) at batch 128, block
24, and prints images per second side by side with their ratio (the heads' overhead).

    python benchmarks/online_speed.py                    # a GPU, a few minutes
    python benchmarks/online_speed.py --compile          # the compiled truncated forward
    python benchmarks/online_speed.py --tiny             # CPU smoke: the 64-px tiny U-Net
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backbones.adm.backbone import RELEASED, TINY_FLAGS, ADMBackbone, random_weights
from bench.heads.probe import ProbeConfig, _AdamW, _GridHeads
from bench.precision import autocast
from benchmarks.timing import seconds

HEADS = 25  # the default grid: 5 learning rates x 5 weight decays
CLASSES = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny U-Net on the CPU (smoke)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--block", default="block24")
    parser.add_argument("--pool", default="2")
    parser.add_argument("--steps", type=int, help="timed steps per row (default 10; tiny 2)")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    flags = TINY_FLAGS if args.tiny else RELEASED["diffusion"].flags
    batch = args.batch_size or (4 if args.tiny else 128)
    steps = args.steps or (2 if args.tiny else 10)
    backbone = ADMBackbone(flags, random_weights(flags), compile=args.compile and cuda)
    backbone.eval().to(device)
    request = (backbone.canonical_layer(args.block), args.pool)
    side = backbone.input_size
    x = torch.randn(batch, 3, side, side, device=device)
    ids = torch.arange(batch, device=device)
    extraction = "bf16" if cuda else "fp32"

    def forward() -> torch.Tensor:
        with torch.no_grad(), autocast(extraction, device):
            return backbone.extract(x, [request], ids)[request].float().flatten(1)

    dim = forward().shape[1]
    classes = min(CLASSES, 10) if args.tiny else CLASSES
    cfg = ProbeConfig(lrs=(1e-3,) * HEADS, weight_decays=(0.0,))
    heads = _GridHeads(HEADS, dim, classes, cfg, torch.Generator().manual_seed(0),
                       torch.bfloat16 if cuda else torch.float32).to(device)
    optimizer = _AdamW(heads, torch.full((HEADS,), 1e-3), torch.zeros(HEADS), 10**6)
    labels = torch.randint(0, classes, (batch,), device=device)

    def online() -> None:
        features = forward()
        optimizer.step(heads.linear_gradients(features.to(heads.matmul), labels))

    for fn in (forward, online):  # warm-up (compilation, cuDNN autotuning, allocator)
        for _ in range(2):
            seconds(fn, device)
    alone = [batch / seconds(forward, device) for _ in range(steps)]
    trained = [batch / seconds(online, device) for _ in range(steps)]
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"ADM {'tiny (64 px)' if args.tiny else '256 uncond'}, random weights, {request[0]} "
          f"pool {request[1]} ({dim:,} dims), batch {batch}, {name}"
          f"{', compiled' if args.compile and cuda else ''}")
    print(f"{'extraction only':>22}  {'online, ' + str(HEADS) + ' linear heads':>28}  ratio")
    a, b = statistics.median(alone), statistics.median(trained)
    print(f"{a:>16,.1f} img/s  {b:>22,.1f} img/s  {b / a:.3f}")


if __name__ == "__main__":
    main()
