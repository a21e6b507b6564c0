"""diffusers U-Net feature speed: early stop after the requested block vs the model's full forward.

Same model (random weights in the structure of google/ddpm-cifar10-32, saved and loaded through
``diffusers:PATH``), same noised input, same run: the first row is what
``DiffusersBackbone.denoiser_features`` runs (hooks, stop once the block has run), the second
the library's whole forward (decoder included). Prints img/s of each and their ratio.

    python benchmarks/diffusers_speed.py                        # CPU, about a minute
    python benchmarks/diffusers_speed.py --device cuda --batch-size 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backbones.diffusers_models import DiffusersBackbone, load_pipeline
from benchmarks.timing import seconds


def ddpm_cifar10_structure(folder: Path) -> None:
    """google/ddpm-cifar10-32's U-Net config (35.7M parameters) with seeded random weights."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(
        sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32, attention_head_dim=None, resnet_time_scale_shift="default",
    ).save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")


def images_per_s(
    calls: dict[str, Callable[[], object]], batch: int, iters: int, device: torch.device
) -> dict[str, float]:
    """Median img/s of each call over ``iters`` rounds after one warm-up; the calls alternate
    within each round so that load from other processes falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(iters + 1):
        for name, fn in calls.items():
            elapsed = seconds(fn, device)
            if round_:
                times[name].append(elapsed)
    return {name: batch / statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--blocks", default="down_blocks.1,mid_block,up_blocks.0")
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ddpm_cifar10_structure(Path(tmp))
        bb = DiffusersBackbone(load_pipeline(tmp)).to(device).eval()
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    t = torch.full((args.batch_size,), 90, device=device)
    calls = {"full forward": lambda: bb.denoiser(x, t)}
    for block in args.blocks.split(","):
        calls[block] = lambda b=block: bb.denoiser_features(x, t, [b])
    with torch.no_grad():
        speed = images_per_s(calls, args.batch_size, args.iters, device)
    full = speed.pop("full forward")
    print(f"{device.type}, batch {args.batch_size}, ddpm-cifar10 structure (random weights)")
    print(f"{'full forward':>14}: {full:8.1f} img/s")
    for block, fast in speed.items():
        print(f"{block:>14}: {fast:8.1f} img/s with early stop ({fast / full:.2f}x the full forward)")

if __name__ == "__main__":
    main()
