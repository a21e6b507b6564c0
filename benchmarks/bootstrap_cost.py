"""What bootstrap intervals cost next to the probe they qualify, measured side by side in one run.

Times ``bench.stats.bootstrap_intervals`` (top1, top5, stratified mean per class; 1,000 resamples)
on ImageNet-sized predictions (50,000 test images, 1,000 classes), then ``bench.heads.probe.fit_probe``
(the default 5 x 5 grid, selection, retrain, test) on a synthetic problem with the same 50,000
test images and 1,000 classes, and prints both times and the ratio. The probe here is smaller than
ImageNet's (1.28M train images, 40 epochs), whose cost grows with train images x dim x epochs, so
the printed ratio overstates the bootstrap's share; the script also prints that scale factor.
Run: python benchmarks/bootstrap_cost.py [--device cuda] [--train 20000 --dim 256 --epochs 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

IMAGENET_TRAIN, IMAGENET_DIM, IMAGENET_EPOCHS = 1_281_167, 1024, 40


def imagenet_sized_predictions(n: int, classes: int, accuracy: float, seed: int = 0):
    from bench.stats import Predictions

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    top5 = rng.integers(0, classes, (n, 5))
    right = rng.random(n) < accuracy
    top5[right, 0] = labels[right]
    return Predictions(top5, labels, classes)


def synthetic_problem(train: int, test: int, dim: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32) * 0.3
    feats, labels = {}, {}
    for split, count in (("train", train), ("val", train // 10), ("test", test)):
        y = rng.integers(0, classes, count)
        feats[split] = centres[y] + rng.normal(size=(count, dim)).astype(np.float32)
        labels[split] = y
    return feats, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--train", type=int, default=20_000, help="probe's train images")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from bench.heads.probe import ProbeConfig, fit_probe
    from bench.stats import bootstrap_intervals

    predictions = imagenet_sized_predictions(args.test, args.classes, accuracy=0.75)
    start = time.perf_counter()
    intervals = bootstrap_intervals(predictions, resamples=args.resamples)
    bootstrap_s = time.perf_counter() - start
    print(f"bootstrap: {args.test} images x {args.classes} classes, {args.resamples} resamples: "
          f"{bootstrap_s:.2f} s; top1 {intervals.point['top1']:.2f} "
          f"[{intervals.low['top1']:.2f}, {intervals.high['top1']:.2f}]")

    feats, labels = synthetic_problem(args.train, args.test, args.dim, args.classes)
    cfg = ProbeConfig(epochs=args.epochs, eval_every=max(1, args.epochs // 4))
    start = time.perf_counter()
    result = fit_probe(feats, labels, args.classes, cfg, device=args.device, progress=True)
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    probe_s = time.perf_counter() - start
    print(f"probe: {args.train} train x {args.dim}-d, {args.classes} classes, "
          f"{len(cfg.lrs) * len(cfg.weight_decays)}-point grid, {args.epochs} epochs on "
          f"{args.device}: {probe_s:.1f} s (test top1 {result.test['top1']:.1f})")
    print(f"bootstrap / probe = {100 * bootstrap_s / probe_s:.2f}% (target < 5%)")
    scale = (IMAGENET_TRAIN * IMAGENET_DIM * IMAGENET_EPOCHS) / (args.train * args.dim * args.epochs)
    print(f"ImageNet's probe trains ~{scale:.0f}x this one's train images x dim x epochs, so its "
          f"bootstrap share is ~{100 * bootstrap_s / (probe_s * scale):.4f}% (extrapolated)")


if __name__ == "__main__":
    main()
