"""Images/s of loading alone (JPEG decode + resize + to-tensor) through a torch DataLoader.

Extraction must not wait on loading: compare these numbers with a backbone's images/s. The tree is
synthetic (CUB-like 500x375 JPEGs, quality 90, in class folders) and read through the tasks'
loader (``bench.features.images.load_rgb``: full decode, RGB), then the usual eval transform: resize the
short side to 256 (bicubic), centre-crop 224, to tensor, normalise. No model runs.
Run: python benchmarks/loading_speed.py [--images 600] [--workers 0,1,2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def make_tree(folder: Path, images: int, size: tuple[int, int], classes: int = 10) -> None:
    """Smooth random images (gradients plus noise) compress like photos, unlike pure noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height = size
    ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(0, 1, height)[:, None, None]
    for i in range(images):
        colour = rng.uniform(0, 255, (1, 1, 3))
        noise = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(colour * ramp + (255 - colour) * (1 - ramp) + noise, 0, 255)
        path = folder / f"class{i % classes:02d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)


class Loaded:
    """A split's images through ``transform``: what extraction's DataLoader does before the model."""

    def __init__(self, split, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.transform(self.split.load(index))


def images_per_second(split, workers: int, batch_size: int) -> float:
    import torch
    from torchvision import transforms as T

    transform = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    loader = torch.utils.data.DataLoader(Loaded(split, transform), batch_size=batch_size,
                                         num_workers=workers)
    start, seen = time.perf_counter(), 0
    for batch in loader:  # worker start-up included: extraction pays it too
        seen += len(batch)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the synthetic JPEGs")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dir", help="folder for the synthetic tree (kept; default: temporary)")
    args = parser.parse_args()

    import torch

    from bench.features.images import load_rgb
    from bench.task import Split

    torch.set_num_threads(1)  # as in a DataLoader worker: one image pipeline per process
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp) / f"loading-{args.size}-{args.images}"
        if not folder.exists():
            make_tree(folder, args.images, size)
        items = sorted(str(p) for p in folder.glob("*/*.jpg"))
        split = Split("all", items, [0] * len(items), load_rgb)
        print(f"{len(split)} JPEGs of {args.size} in {folder}, batch {args.batch_size}")
        print(f"{'workers':>7}  {'images/s':>9}  {'ms/image':>8}")
        for workers in (int(w) for w in args.workers.split(",")):
            rate = images_per_second(split, workers, args.batch_size)
            print(f"{workers:>7}  {rate:>9.1f}  {1000 / rate:>8.2f}")


if __name__ == "__main__":
    main()
