"""Successive halving vs the full grid: does the cheaper search select as well?

On four feature sets (digit pixels through the ``pixels`` backbone; an imbalanced set: 50
classes of 5 to 300 images, 256-d, anisotropic; a 100-class set; a low-data set: 16 images per
class, 8 of them to train) the linear probe runs twice with the same seed, once over the full grid and once with
successive halving (``ProbeConfig.halving``), each selecting on the task's headline metric. The
table gives each one's selected point, test headline metric, and the paired difference
halving - full on the same test images with its 95% paired bootstrap interval
(``bench.stats.compare``). The halving claim of docs/concepts/protocols.md and the default come
from this table.

Run: python benchmarks/halving_table.py [--epochs 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def anisotropic(counts: np.ndarray, dim: int, seed: int, spread: float = 1.0,
                shift: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes with per-dimension scales spread over two orders of magnitude."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), dim)) * shift
    scales = np.exp(rng.normal(size=dim))
    y = np.repeat(np.arange(len(counts)), counts)
    x = (centres[y] + spread * rng.normal(size=(len(y), dim))) * scales
    return x.astype(np.float32), y


def split(x: np.ndarray, y: np.ndarray, seed: int, val: float = 0.2, test: float = 0.3):
    """Within each class: train / val / test parts (every class in every split)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_val, n_test = max(1, round(val * len(members))), max(1, round(test * len(members)))
        parts["val"] += list(members[:n_val])
        parts["test"] += list(members[n_val:n_val + n_test])
        parts["train"] += list(members[n_val + n_test:])
    return ({s: x[np.array(i)] for s, i in parts.items()},
            {s: y[np.array(i)] for s, i in parts.items()})


def feature_sets() -> dict[str, tuple[dict, dict, int, str]]:
    from benchmarks.probe_speed import digits_features

    rng = np.random.default_rng(1)
    imbalanced = anisotropic(np.round(np.geomspace(5, 300, 50)).astype(int)[rng.permutation(50)],
                             256, seed=2)
    hundred = anisotropic(np.full(100, 80), 256, seed=3, shift=0.3)
    low = anisotropic(np.full(10, 16), 128, seed=4, shift=0.3)  # ~8 train images per class
    return {
        "digits (pixels)": (*digits_features(), "top1"),
        "imbalanced 50 cls": (*split(*imbalanced, seed=5), 50, "mean_per_class"),
        "100 classes": (*split(*hundred, seed=6), 100, "top1"),
        "low data 8/cls": (*split(*low, seed=7), 10, "top1"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: stable timings on a shared machine)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from bench.heads.probe import ProbeConfig, fit_probe
    from bench.stats import compare

    torch.manual_seed(0)
    rows = []
    for name, (feats, labels, classes, headline) in feature_sets().items():
        results, seconds = {}, {}
        for halving in (False, True):
            started = time.perf_counter()
            results[halving] = fit_probe(feats, labels, classes,
                                         ProbeConfig(epochs=args.epochs, halving=halving),
                                         headline=headline)
            seconds[halving] = time.perf_counter() - started
        full, half = results[False], results[True]
        diff = compare(half.predictions, full.predictions, headline, ("halving", "full"))

        def point(r) -> str:
            return f"lr {r.best['lr']:g} wd {r.best['weight_decay']:g} ep {r.best['epochs']:g}"

        inside = diff.low <= 0 <= diff.high
        rows.append(inside)
        print(f"| {name} | {headline} | {point(full)} | {full.test[headline]:.2f} | "
              f"{point(half)} | {half.test[headline]:.2f} | {diff.difference:+.2f} "
              f"[{diff.low:+.2f}, {diff.high:+.2f}] | {'yes' if inside else 'NO'} | "
              f"{seconds[False]:.1f} / {seconds[True]:.1f} |", flush=True)
    verdict = "halving within the paired interval on every set" if all(rows) else (
        "halving left the paired interval on at least one set: the full grid is the default")
    print(verdict)


if __name__ == "__main__":
    print("| features | headline | full grid: selected | test | halving: selected | test | "
          "halving - full [95% paired] | 0 inside | seconds full / halving |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    main()
