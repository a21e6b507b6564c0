"""Attention head's learning-rate grid: one batched computation vs one head after another.

Writes a real cache entry of fp16 feature maps (memory-mapped shards, as ``bench run`` leaves
them), then trains the same 4 learning rates as a batched grid (``bench.heads.attention.train_grid``: one
minibatch read per step for all heads) and one lr after another the plain way: the head module's
own forward and ``make_optimizer``'s torch.optim recipe (``train_one_by_one``, the reference the
grid is tested equal to). All runs use the same seeds, minibatch order and steps. Also timed: the
grid with one lr (what a refit runs). Both arms run the same head module, whose speed-ups
(fused attention, a CLS-only last block) the plain way gets too: the ratio is the grid's alone.
Run: python benchmarks/heads_speed.py [--n 1024]
Prints seconds of each and, last, the speed ratio measured in this one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def write_cache_entry(root: str, n: int, channels: int, side: int, classes: int):
    """A complete cache entry of (n, channels, side, side) fp16 maps, opened memory-mapped."""
    from bench.features.cache import FeatureCache

    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    entry = FeatureCache(root).entry({"benchmark": "heads_speed", "n": n, "channels": channels})
    shard_size = 256
    entry.create({"benchmark": "heads_speed"}, labels, shard_size)
    for index, start in enumerate(range(0, n, shard_size)):
        count = min(shard_size, n - start)
        maps = rng.standard_normal((count, channels, side, side), dtype=np.float32)
        entry.write_shard(index, maps.astype(np.float16), [])
    maps, labels, _ = entry.open()
    return maps, labels


def train_one_by_one(build, data, layers, cfg, lr: float, epochs: int, device=None):
    """One head at a time: the module's forward and ``make_optimizer``'s recipe, with the
    grid's seeds and minibatch order (``cfg.seed``)."""
    import torch

    from bench.heads.attention import make_optimizer
    from bench.heads.streaming import epoch_order

    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = build().to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer, scheduler = make_optimizer(model.parameters(), cfg, lr)
    for _ in range(epochs):
        order = epoch_order(len(data), gen)
        chunks = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        for maps, y in data.batches(chunks, layers, device):
            loss = torch.nn.functional.cross_entropy(model(maps), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--side", type=int, default=16)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--recipe", default="adamw", choices=["paper", "adamw"])
    args = parser.parse_args()
    import torch

    from bench.heads.attention import AttentionHead, HeadConfig, _Maps, train_grid

    classes, lrs = 10, (1e-4, 3e-4, 1e-3, 3e-3)
    cfg = HeadConfig(recipe=args.recipe, lrs=lrs, epochs=args.epochs, dim=args.dim, heads=2,
                     depth=1)
    shapes = {"block": (args.channels, args.side, args.side)}

    def build():
        return AttentionHead(shapes, classes, cfg.dim, cfg.heads, cfg.depth)

    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as root:
        maps, labels = write_cache_entry(root, args.n, args.channels, args.side, classes)
        data = _Maps([{"block": maps}], [labels])
        print(f"{args.n} maps of {args.channels}x{args.side}x{args.side} fp16 "
              f"({maps.dtype}, memory-mapped), attention head dim {cfg.dim}, "
              f"{args.epochs} epochs, recipe {args.recipe}, {torch.get_num_threads()} threads")
        start = time.perf_counter()
        train_grid(build, data, ["block"], cfg, lrs, device, {}, cfg.epochs, progress=False)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        train_grid(build, data, ["block"], cfg, lrs[:1], device, {}, cfg.epochs, progress=False)
        grid_of_one = time.perf_counter() - start
        start = time.perf_counter()
        for lr in lrs:
            train_one_by_one(build, data, ["block"], cfg, lr, cfg.epochs)
        sequential = time.perf_counter() - start
    print(f"batched {batched:.2f} s, sequential {sequential:.2f} s "
          f"({sequential / len(lrs):.2f} s per lr; the grid with one lr: {grid_of_one:.2f} s)")
    print(f"batched grid of {len(lrs)} learning rates: {sequential / batched:.2f}x faster "
          "than sequential")


if __name__ == "__main__":
    main()
