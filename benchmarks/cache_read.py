"""What verifying every block read costs on the streamed read path (issue 31, item 5).

Writes a synthetic split (default 100,000 x 768 fp16, 154 MB) through the real cache
(``CacheEntry.write_shard``), opens it memory-mapped (``CacheEntry.open``), and reads one epoch
the three ways the streaming heads do (``bench.heads.streaming``): windows (the epoch order's
contiguous runs, ``Rows.read``), rows (each 256-row minibatch gathered alone, ``Rows.take``) and
chunks (the split in order, for scoring). Each is timed on the same open entry twice, side by
side: unverified (the shards' rows taken as they are: what a read cost before every block was
verified) and verified (every block's CRC-32 checked, ``ShardedArray`` with the entry's check),
after a warm-up pass, so both read from the page cache: the checksum's share is the largest it
can be (a cold disk read makes it smaller). Also the one-time full check of every shard
(blake2b and finite values, as before) with and without the block CRC-32s taken in that pass.

Run: python benchmarks/cache_read.py [--rows 100000] [--dim 768] [--repeats 5]
Last line: ``windows epoch: verified / unverified = R.RRx``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def write_entry(root: str, rows: int, dim: int, shard_size: int):
    from bench.features.cache import FeatureCache

    rng = np.random.default_rng(0)
    entry = FeatureCache(root).entry({"benchmark": "cache_read", "rows": rows, "dim": dim})
    entry.create({"storage": "float16"}, rng.integers(0, 1000, rows), shard_size)
    for i, start in enumerate(range(0, rows, shard_size)):
        n = min(shard_size, rows - start)
        entry.write_shard(i, rng.normal(size=(n, dim)).astype(np.float16), [])
    return entry


def epoch_reads(rows, batch: int, seed: int = 0) -> dict[str, callable]:
    from bench.heads.streaming import CHUNK_ROWS, epoch_windows

    n = len(rows)
    windows = epoch_windows(n, torch.Generator().manual_seed(seed))
    order = np.concatenate([w.rows[w.perm] for w in windows])

    def by_windows():
        for w in windows:
            out = np.empty((len(w.rows), rows.dim), rows.dtype)
            at = 0
            for a, b in w.runs():
                rows.read(a, b, out=out[at : at + b - a])
                at += b - a

    def by_rows():
        for i in range(0, n, batch):
            rows.take(order[i : i + batch])

    def by_chunks():
        for _ in rows.chunks(CHUNK_ROWS):
            pass

    return {"windows": by_windows, "rows": by_rows, "chunks": by_chunks}


def side_by_side(first, second, repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` calls of each, alternated (a shared machine's load hits both
    alike; the fastest is the least disturbed)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from bench.features.cache import ShardedArray, _Crcs, _read_npy, block_rows
    from bench.heads.streaming import Rows

    with tempfile.TemporaryDirectory() as root:
        entry = write_entry(root, args.rows, args.dim, args.shard_size)
        mapped, _, _ = entry.open()
        mapped.take(np.arange(len(mapped)))  # checks every shard once; warms the page cache
        raw = ShardedArray(mapped.shards, mapped.shard_size)  # the same files, no verification
        gb = args.rows * args.dim * 2 / 1e9
        print(f"{args.rows:,} x {args.dim} fp16 ({gb:.2f} GB) in shards of {args.shard_size:,}; "
              f"checksum blocks of {block_rows(args.dim * 2)} rows; fastest of {args.repeats}")
        print(f"{'one epoch':<10} {'unverified':>11} {'verified':>10} {'ratio':>7}")
        ratios = {}
        reads = {name: (epoch_reads(Rows([raw]), args.batch)[name],
                        epoch_reads(Rows([mapped]), args.batch)[name])
                 for name in ("windows", "rows", "chunks")}
        for name, (plain, verified) in reads.items():
            before, after = side_by_side(plain, verified, args.repeats)
            ratios[name] = after / before
            print(f"{name:<10} {before:>10.2f}s {after:>9.2f}s {ratios[name]:>6.2f}x")
        infos = entry.usable_shards()

        def full_check(crcs: bool):
            for index, info in infos.items():
                width = args.dim * 2
                pieces = [_Crcs(block_rows(width) * width), _Crcs(width)] if crcs else ()
                _read_npy(entry.shard_path(index), info.blake2b, keep=False, crcs=pieces)

        before, after = side_by_side(lambda: full_check(False), lambda: full_check(True),
                                     args.repeats)
        print(f"{'first check':<10} {before:>10.2f}s {after:>9.2f}s {after / before:>6.2f}x  "
              "(once per shard per process: blake2b + finite, then + block and row CRC-32s)")
        print(f"windows epoch: verified / unverified = {ratios['windows']:.2f}x")


if __name__ == "__main__":
    main()
