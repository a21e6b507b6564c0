"""Peak memory of the linear grid probe on a cached split larger than its memory budget.

Writes a synthetic split (default 250,000 x 2,048 fp16, 1.0 GB on disk, 1,000 classes, with
val and test a tenth of its size each) through the real cache (``FeatureCache`` /
``CacheEntry.write_shard``), then runs ``bench.protocol.evaluate`` with the linear grid (25
points, successive halving) on the memory-mapped entries in a child process under
``--memory-budget``, so the writer's memory does not count. The child prints its peak RSS
(``resource.getrusage``) and what it is made of: the interpreter with torch loaded (measured
before the probe), the grid's state (weights, AdamW moments, gradients: computed), the feature
buffers the budget allowed (computed by the reader) and the rest (step temporaries, allocator).

A full 40-epoch grid at this size is hours on a small CPU, and memory does not grow with steps
(the reader holds the same windows whatever the epoch), so ``--epochs`` and ``--steps`` (training
minibatches per epoch; 0: all) bound the run; the output says exactly what ran. The statistics
pass, every validation checkpoint, the refit and the test pass run in full.

The peak is measured with glibc's default allocator (no ``MALLOC_*`` variable set): what a user
gets. Beside it, the same probe with ``MALLOC_MMAP_THRESHOLD_=1048576`` (every block of 1 MB or
more mapped alone and returned on free) shows what heap fragmentation adds; and with
``--baseline REV`` (default ``main``) the ``bench/`` of that git revision runs the same probe on
the same split, so the two codes' peaks are compared side by side in one run.

Run: python benchmarks/probe_memory.py [--rows 250000] [--dim 2048] [--classes 1000]
[--memory-budget 512MB] [--epochs 4] [--steps 8] [--threads 2] [--baseline main]
Last line: ``peak RSS N.N GB for a D.D GB split (budget B GB)`` (default allocator).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

GB = 1e9
TUNED = {"MALLOC_MMAP_THRESHOLD_": "1048576"}  # blocks >= 1 MB mapped alone: no fragmentation


def write_split(root: str, rows: int, dim: int, classes: int, shard_size: int,
                seed: int = 0) -> dict[str, str]:
    """Train, val and test entries of Gaussian classes (class-sorted rows, as ImageNet's files),
    written a shard at a time; split -> entry path."""
    from tqdm.auto import tqdm

    from bench.features.cache import FeatureCache

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32) * 0.15
    cache, paths = FeatureCache(root), {}
    for split, n in (("train", rows), ("val", rows // 10), ("test", rows // 10)):
        labels = np.sort(rng.integers(0, classes, n))
        entry = cache.entry({"benchmark": "probe_memory", "split": split, "rows": n, "dim": dim})
        entry.create({"split": split}, labels, shard_size)
        for i, start in enumerate(tqdm(range(0, n, shard_size), desc=f"write {split}",
                                       unit="shard", leave=False)):
            y = labels[start : start + shard_size]
            x = centres[y] + rng.standard_normal((len(y), dim), dtype=np.float32)
            entry.write_shard(i, x.astype(np.float16), [])
        paths[split] = str(entry.path)
    return paths


def child(spec: dict) -> None:
    """The probe alone, in a fresh process: prints one JSON line of what it measured."""
    import itertools
    import resource

    import torch

    import bench
    from bench.features.cache import CacheEntry
    from bench.heads.probe import GridProbeTrainer, ProbeConfig
    from bench.precision import resolve_device, resolve_precision
    from bench.protocol import ProbeData, evaluate

    torch.set_num_threads(spec["threads"])
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    features, labels = {}, {}
    for split, path in spec["entries"].items():
        features[split], labels[split], _ = CacheEntry(Path(path), Path(path).name).open()
    data = ProbeData(features, labels, spec["classes"], memory_budget=spec["budget"])
    device = resolve_device(spec["device"])
    held, steps = {}, []

    class Bounded(GridProbeTrainer):
        """The grid trainer with at most ``steps`` training minibatches per epoch."""

        def _batches(self, data, splits, *args, **kwargs):
            batches = super()._batches(data, splits, *args, **kwargs)
            held["+".join(splits)] = (batches.mode, batches.held)
            if splits != ["test"] and spec["steps"]:
                epoch = batches.epoch

                def bounded(gen):
                    for batch in itertools.islice(epoch(gen), spec["steps"]):
                        steps.append(time.perf_counter())
                        yield batch
                batches.epoch = bounded
            return batches

        def search(self, data):
            records = super().search(data)
            phases["search"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return records

    phases: dict[str, int] = {}
    cfg = ProbeConfig(epochs=spec["epochs"], eval_every=1)
    trainer = Bounded(cfg, device, resolve_precision("auto", device.type))
    start = time.perf_counter()
    result = evaluate(trainer, data)
    seconds = time.perf_counter() - start
    grid = len(cfg.lrs) * len(cfg.weight_decays)
    gaps = np.diff(steps)
    print(json.dumps({
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline": baseline, "seconds": seconds, "held": held, "grid": grid,
        "peak_after_search": phases["search"],
        # weights, AdamW's two moments and the gradients, float32 (biases too)
        "grid_state": 4 * 4 * grid * spec["classes"] * (spec["dim"] + 1),
        "step_seconds": float(np.median(gaps[: spec["steps"] - 1])) if len(gaps) else None,
        "steps": len(steps), "top1": result.test["top1"], "device": str(device),
        "threads": torch.get_num_threads(), "code": str(Path(bench.__file__).parent),
    }), flush=True)


def features_held(held: dict) -> int:
    """The most feature bytes held at once: train and val in the search, train+val in the
    refit, test after it."""
    def size(split: str) -> int:
        return held.get(split, (None, 0))[1]

    return max(size("train") + size("val"), size("train+val"), size("test"))


def projected(rows: int, dim: int, classes: int, budget: int, measured: dict,
              measured_dim: int) -> str:
    """Peak RSS and grid time at another size from the measured per-row and per-dim costs."""
    import torch

    from bench.heads.streaming import Batches, Rows, step_bytes

    class Shape:  # a split's shape only: the reader's plan needs no data
        def __init__(self, n: int):
            self.shape, self.dtype = (n, dim), np.dtype(np.float16)

        def __len__(self) -> int:
            return self.shape[0]

    cpu = torch.device("cpu")
    train, val = Rows([Shape(rows)]), Rows([Shape(rows // 25)])  # ImageNet: 50k val per 1.28M
    reserve = step_bytes(val, 256, torch.float32)
    if budget < 2 * reserve:
        return f"projected {rows:,} x {dim:,}: the budget is below one minibatch at this width"
    plan = Batches(train, None, 256, cpu, torch.float32, budget, reserve=reserve)
    if plan.mode == "memory":
        return f"projected {rows:,} x {dim:,}: fits the budget in memory: not a streaming case"
    val_plan = Batches(val, None, 256, cpu, torch.float32, budget - plan.held)
    grid_state = 4 * 4 * measured["grid"] * classes * (dim + 1)
    other = measured["peak"] - measured["baseline"] - measured["grid_state"] - features_held(
        measured["held"])
    peak = measured["baseline"] + grid_state + plan.held + val_plan.held + max(other, 0) * (
        dim / measured_dim)
    text = (f"projected {rows:,} x {dim:,} fp16 ({rows * dim * 2 / GB:.1f} GB on disk): peak RSS "
            f"{peak / GB:.1f} GB (grid state {grid_state / GB:.2f}, features {plan.mode} "
            f"{(plan.held + val_plan.held) / GB:.2f})")
    if measured["step_seconds"]:
        epoch = measured["step_seconds"] * dim / measured_dim * rows / 256
        text += (f"; one epoch of the full grid {epoch / 3600:.1f} h at the measured step time "
                 f"({measured['threads']} threads)")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--memory-budget", default="512MB")
    parser.add_argument("--epochs", type=int, default=4, help="grid epochs (halving from 1)")
    parser.add_argument("--steps", type=int, default=8,
                        help="training minibatches per epoch (0: every one)")
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", help="where to write the split (default: a temporary "
                        "folder)")
    parser.add_argument("--baseline", default="main",
                        help="git revision whose bench/ runs the same probe beside this "
                        "checkout's ('' for none)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    from bench.ranges import parse_size

    budget = parse_size(args.memory_budget)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.cache_dir or tmp
        start = time.perf_counter()
        entries = write_split(root, args.rows, args.dim, args.classes, args.shard_size)
        disk = sum(f.stat().st_size for f in Path(entries["train"]).glob("shard-*.npy"))
        print(f"wrote {args.rows:,} x {args.dim:,} fp16 x {args.classes:,} classes "
              f"(train {disk / GB:.2f} GB on disk, val and test {args.rows // 10:,} rows each) "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        spec = {"entries": entries, "classes": args.classes, "dim": args.dim, "budget": budget,
                "epochs": args.epochs, "steps": args.steps, "threads": args.threads,
                "device": args.device}
        codes = {"this checkout": None}
        if args.baseline:
            codes = {args.baseline: baseline_code(args.baseline, tmp), **codes}
        peaks = {}
        for code, path in codes.items():
            for allocator, env in (("default", {}), ("tuned", TUNED)):
                peaks[code, allocator] = measure(spec, path, env)
                print(f"  {code} ({peaks[code, allocator]['code']}), {allocator} allocator: "
                      f"peak RSS {peaks[code, allocator]['peak'] / GB:.2f} GB", flush=True)
    m = peaks["this checkout", "default"]
    steps = f"{args.steps} training minibatches per epoch" if args.steps else "every minibatch"
    print(f"ran: linear grid of {m['grid']} points, successive halving, {args.epochs} epochs of "
          f"{steps} (validation at every epoch; statistics pass, validation, refit and test in "
          f"full), {m['threads']} threads on {m['device']}: {m['seconds']:.0f} s, test top-1 "
          f"{m['top1']:.2f}")
    held = ", ".join(f"{split} {mode} {h / GB:.2f} GB" for split, (mode, h) in m["held"].items())
    features = features_held(m["held"])
    rest = m["peak"] - m["baseline"] - m["grid_state"] - features
    print(f"peak made of (this checkout, default allocator): interpreter + torch "
          f"{m['baseline'] / GB:.2f} GB, grid state (weights, AdamW moments, gradients) "
          f"{m['grid_state'] / GB:.2f} GB, feature buffers {features / GB:.2f} GB ({held}), the "
          f"rest (step temporaries, allocator) {rest / GB:.2f} GB")
    print(f"peak RSS by the end of the search {m['peak_after_search'] / GB:.2f} GB; by the end "
          f"(refit and test) {m['peak'] / GB:.2f} GB")
    print("peak RSS (GB)        glibc default   MALLOC_MMAP_THRESHOLD_=1048576   default / tuned")
    for code in codes:
        default, tuned = peaks[code, "default"]["peak"], peaks[code, "tuned"]["peak"]
        print(f"  {code:18s} {default / GB:13.2f}   {tuned / GB:30.2f}   {default / tuned:15.2f}x")
    if args.baseline:
        old = peaks[args.baseline, "default"]
        print(f"this checkout / {args.baseline}, default allocator: "
              f"{m['peak'] / old['peak']:.2f}x; test top-1 {m['top1']:.2f} and {old['top1']:.2f}")
    print(f"peak / on-disk size: {m['peak'] / disk:.2f}x; target peak <= 1 GB + budget = "
          f"{(GB + budget) / GB:.1f} GB: {'met' if m['peak'] <= GB + budget else 'NOT met'}")
    for rows, dim in ((1_281_167, 2048), (1_281_167, 16384)):
        print(projected(rows, dim, args.classes, budget, m, args.dim))
    print(f"peak RSS {m['peak'] / GB:.1f} GB for a {disk / GB:.1f} GB split "
          f"(budget {budget / GB:.1f} GB)")


def baseline_code(revision: str, folder: str) -> str:
    """The ``bench/`` package of git ``revision``, unpacked under ``folder`` (put first on the
    child's PYTHONPATH, it is the ``bench`` the child imports)."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "archive", revision, "bench"], cwd=repo, check=True,
                             capture_output=True).stdout
    target = Path(folder) / f"baseline-{revision.replace('/', '_')}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return str(target)


def measure(spec: dict, code: str | None, allocator: dict[str, str]) -> dict:
    """One child's measurement: this checkout's ``bench`` (or that under ``code``), under glibc's
    default allocator (every ``MALLOC_*`` variable removed) or the ``allocator`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | allocator
    if code:
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"the probe failed ({code or 'this checkout'}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
