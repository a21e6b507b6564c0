"""Batched grid probe vs a sequential scikit-learn C-sweep of the same size, side by side.

Both select a regulariser on validation and score test, on the same cached features. The batched
grid trains len(lrs) x len(wds) heads at once; the baseline fits LogisticRegression (L-BFGS) once
per C value. Run: python benchmarks/probe_speed.py [--features digits|synthetic] [--device cpu]
[--precision fp32,bf16] [--threads 1]. Prints seconds and accuracy of each and the speed ratio
measured in this one run; the batched grid runs under each precision policy (``bf16``: its two
GEMMs in bfloat16), with the full grid and with successive halving (``ProbeConfig.halving``); the
row of the device's default (``auto`` precision, the default grid) is marked ``(default)``. Sets:
digit pixels, synthetic 10000 x 512 x 100 classes, and 20000 x 512 x 100 classes; then
``synthetic100k`` (100000 x 1024 x 1000 classes: ours for ``--large-epochs`` epochs, measured,
scikit-learn's sweep projected from a subsample fit, both said so) and, with ``--features gpu
--device cuda``, the 1.28M x 2048 x 1000 GPU row (seconds and fraction of the bf16 GEMM floor).

Each set also prints the floor of any schedule that passes the halving rules: every grid point
trains for the first quarter of the epochs, timed alone (each precision policy, no validation),
as a ratio to scikit-learn's time: a probe is at most that many times faster than scikit-learn.
``--profile`` prints torch.profiler's top operators of the default row.

Each set also has a ``logreg`` row: ``--head logreg`` (CLIP's L-BFGS probe, its C search batched)
against scikit-learn's ``LogisticRegression`` fitting the C values that search visited, one after
another, then refitting the selected one (``--logreg-only``: those rows alone).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np


def digits_features() -> tuple[dict, dict, int]:
    import torch

    import bench

    task = bench.create_task("digits")
    backbone = bench.create_backbone("pixels", size=8)
    transform = backbone.transform()
    feats, labels = {}, {}
    for s in ("train", "val", "test"):
        split = task.split(s)
        x = torch.stack([transform(split.load(i)) for i in range(len(split))])
        feats[s] = backbone.extract(x, [("image", "8")])[("image", "8")].numpy()
        labels[s] = split.labels
    return feats, labels, 10


def synthetic_features(n: int, dim: int, classes: int, seed: int = 0) -> tuple[dict, dict, int]:
    """Gaussian classes in `dim` dimensions: a realistic size for a mid-sized fine-grained task."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32) * 0.1
    feats, labels = {}, {}
    for split, count in (("train", n), ("val", n // 5), ("test", n // 2)):
        y = rng.integers(0, classes, count)
        feats[split] = centres[y] + rng.normal(size=(count, dim)).astype(np.float32)
        labels[split] = y
    return feats, labels, classes


def sklearn_sweep(feats, labels, cs) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(feats["train"])
    xs = {s: scaler.transform(v) for s, v in feats.items()}
    scores = []
    for c in cs:
        model = LogisticRegression(C=c, max_iter=1000).fit(xs["train"], labels["train"])
        scores.append(model.score(xs["val"], labels["val"]))
    best = cs[int(np.argmax(scores))]
    x_all = np.concatenate([feats["train"], feats["val"]])
    scaler = StandardScaler().fit(x_all)
    model = LogisticRegression(C=best, max_iter=1000).fit(
        scaler.transform(x_all), np.concatenate([labels["train"], labels["val"]]))
    return 100 * model.score(scaler.transform(feats["test"]), labels["test"])


def sklearn_logreg(feats, labels, cs, threads: int) -> float:
    """CLIP's protocol with scikit-learn, one C after another (each from zero, as CLIP's code):
    select on val among ``cs`` (the first maximum), refit on train+val, test top-1. The thread
    limit is set here, after scikit-learn is imported: its OpenMP runtime and scipy's OpenBLAS
    load with it, and a limit set before does not reach them (on 2 loaded cores their spinning
    threads made a digits fit 9x slower)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        scores = [LogisticRegression(C=c, max_iter=1000).fit(feats["train"], labels["train"])
                  .score(feats["val"], labels["val"]) for c in cs]
        model = LogisticRegression(C=cs[int(np.argmax(scores))], max_iter=1000).fit(
            np.concatenate([feats["train"], feats["val"]]),
            np.concatenate([labels["train"], labels["val"]]))
        return 100 * model.score(feats["test"], labels["test"])


def logreg_row(shape: str, feats, labels, classes, device) -> None:
    """``--head logreg`` (its defaults: raw features, CLIP's search) against scikit-learn's
    L-BFGS fitting the same C values in sequence on the same features."""
    import torch

    from bench.heads.logreg import fit_logreg

    start = time.perf_counter()
    result = fit_logreg(feats, labels, classes, device=device)
    batched = time.perf_counter() - start
    cs = sorted(r["C"] for r in result.grid)
    start = time.perf_counter()
    sk_top1 = sklearn_logreg(feats, labels, cs, torch.get_num_threads())
    sequential = time.perf_counter() - start
    label = f"{shape} logreg, CLIP search ({len(cs)} C)"
    print(f"{label:>44s} {batched:10.2f} {result.test['top1']:6.2f} {sequential:10.2f} "
          f"{sk_top1:6.2f} {sequential / batched:8.2f}x  (C {result.best['C']:.3g})", flush=True)


def feature_set(name: str, args) -> tuple[str, dict, dict, int]:
    """A set of the table by name, with its printed shape."""
    if name == "digits":
        feats, labels, classes = digits_features()
    else:
        n = 2 * args.n if name == "synthetic20k" else args.n
        feats, labels, classes = synthetic_features(n, args.dim, args.classes)
    return f"{name} {len(feats['train'])}x{feats['train'].shape[1]}", feats, labels, classes


def logreg_table(sets: list[str], args, device) -> None:
    """``--logreg-only``: the logreg row of each set."""
    print(f"{'features':>44s} {'logreg s':>10s} {'top1':>6s} {'sklearn s':>10s} {'top1':>6s} "
          f"{'speed-up':>9s}")
    for name in sets:
        logreg_row(*feature_set(name, args), device)


def first_quarter(feats, labels, classes, cfg, device, policy) -> float:
    """Seconds to train the whole grid for the first quarter of the epochs: the part of a
    successive-halving search that may not be cut (bench.heads.probe.train_grid)."""
    import torch

    from bench.heads.probe import GridProbeTrainer, train_grid

    matmul = GridProbeTrainer(cfg, device, precision=policy).matmul
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    x = torch.as_tensor(feats["train"], device=device)
    y = torch.as_tensor(labels["train"], dtype=torch.long, device=device)
    start = time.perf_counter()
    train_grid(x, y, classes, torch.tensor([g[0] for g in grid]), torch.tensor([g[1] for g in grid]),
               cfg, {}, stop_at=max(1, cfg.epochs // 4), matmul=matmul)
    return time.perf_counter() - start


def sklearn_projected(feats, labels, cs, subsample: int, fits: int) -> tuple[float, int]:
    """Seconds of a full scikit-learn sweep (len(cs) fits and the refit) projected from ``fits``
    C values fitted on the first ``subsample`` train rows: their mean seconds per fit, scaled
    linearly in rows (L-BFGS's cost per iteration is linear in them; its iteration count at the
    full size is not measured). Returns (projected seconds, rows fitted)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = feats["train"][:subsample], labels["train"][:subsample]
    x = StandardScaler().fit_transform(x)
    chosen = [cs[i] for i in np.linspace(0, len(cs) - 1, fits).round().astype(int)]
    start = time.perf_counter()
    for c in chosen:
        LogisticRegression(C=c, max_iter=1000).fit(x, y)
    per_fit = (time.perf_counter() - start) / fits
    rows = len(feats["train"]) + len(feats["val"])  # the refit sees train+val
    return per_fit * (len(cs) * len(feats["train"]) + rows) / subsample, subsample


def large_row(args, cs, device) -> None:
    """The 100,000 x 1,024 x 1,000-class row: our default grid for ``--large-epochs`` epochs
    (measured) beside scikit-learn's sweep projected from a subsample (``sklearn_projected``)."""
    from bench.heads.probe import ProbeConfig, fit_probe
    from bench.precision import resolve_precision

    feats, labels, classes = synthetic_features(100_000, 1024, 1000)
    policy = resolve_precision("auto", device.type)
    cfg = replace(ProbeConfig(), epochs=args.large_epochs, eval_every=1)
    start = time.perf_counter()
    result = fit_probe(feats, labels, classes, cfg, device=device, precision=policy)
    ours = time.perf_counter() - start
    sk, rows = sklearn_projected(feats, labels, cs, args.sklearn_rows, args.sklearn_fits)
    full = ours * 40 / args.large_epochs  # every point for all 40 epochs: halving does less
    print(f"synthetic100k 100000x1024x1000 {policy.name} halving: {args.large_epochs} of 40 "
          f"epochs measured {ours:.1f} s (top-1 {result.test['top1']:.2f}); 40 epochs projected "
          f"at most {full:.0f} s (every point every epoch); scikit-learn's sweep projected "
          f"{sk:.0f} s from {args.sklearn_fits} fits on {rows:,} rows; speed-up projected at "
          f"least {sk / full:.1f}x", flush=True)


def gpu_row(args) -> None:
    """The GPU row: a 1,281,167 x 2,048 x 1,000 linear grid, 25 points, 40 epochs with halving;
    its seconds and the fraction of the bf16 GEMM floor (2 x 3 x n x d x C x points x epochs
    FLOPs at ``--peak-tflops``) that they are. Needs CUDA: unmeasured otherwise."""
    import torch

    from bench.heads.probe import ProbeConfig, fit_probe
    from bench.precision import resolve_precision

    n, dim, classes = 1_281_167, 2048, 1000
    cfg = ProbeConfig()
    points = len(cfg.lrs) * len(cfg.weight_decays)
    if not torch.cuda.is_available():
        print(f"gpu {n}x{dim}x{classes}, {points} points, {cfg.epochs} epochs, halving: "
              "unmeasured (no CUDA device here; run with --device cuda on a GPU)")
        return
    gen = torch.Generator(device="cuda").manual_seed(0)
    centres = torch.randn(classes, dim, device="cuda", generator=gen) * 0.1
    feats, labels = {}, {}
    for split, count in (("train", n), ("val", 50_000), ("test", 50_000)):
        y = torch.randint(0, classes, (count,), device="cuda", generator=gen)
        x = centres[y] + torch.randn(count, dim, device="cuda", generator=gen)
        feats[split], labels[split] = x.half().cpu().numpy(), y.cpu().numpy()
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fit_probe(feats, labels, classes, cfg, device="cuda",
                       precision=resolve_precision("auto", "cuda"))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    floor = 2 * 3 * n * dim * classes * points * cfg.epochs / (args.peak_tflops * 1e12)
    print(f"gpu {n}x{dim}x{classes}, {points} points, {cfg.epochs} epochs, halving: "
          f"{seconds:.1f} s, top-1 {result.test['top1']:.2f}; bf16 GEMM floor {floor:.1f} s at "
          f"{args.peak_tflops:g} TFLOP/s: {100 * floor / seconds:.0f}% of it (target >= 40%)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="all",
                        choices=["digits", "synthetic", "synthetic20k", "synthetic100k", "gpu",
                                 "all"],
                        help="all: digits, synthetic, synthetic20k, and synthetic100k (its own "
                        "row: --large-epochs); gpu: the 1.28M x 2048 row (--device cuda)")
    parser.add_argument("--large-epochs", type=int, default=2,
                        help="epochs of our run on synthetic100k (of the default 40)")
    parser.add_argument("--sklearn-rows", type=int, default=5000,
                        help="rows of the subsample that scikit-learn's synthetic100k time is "
                        "projected from")
    parser.add_argument("--sklearn-fits", type=int, default=3,
                        help="C values fitted on that subsample")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak of the GPU (H100/H200 SXM: 989)")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32,bf16",
                        help="comma-separated precision policies for the batched grid")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both (1: comparable timings on a shared machine)")
    parser.add_argument("--logreg-only", action="store_true",
                        help="only the logreg rows (--head logreg vs scikit-learn on the same C)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top operators of the default row")
    args = parser.parse_args()
    import sklearn.linear_model  # noqa: F401  (scipy's and scikit-learn's pools load now)
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    # numpy's OpenBLAS started its threads at import, before any OMP_NUM_THREADS set here could
    # count; scipy's OpenBLAS (scikit-learn's L-BFGS) loads with scikit-learn, so it is imported
    # first: before that, the limit missed it and scikit-learn ran on every core
    _limits = threadpool_limits(args.threads)  # held: the limits last the whole run
    torch.set_num_threads(args.threads)
    pools = {(p["internal_api"], p["num_threads"]) for p in threadpool_info()}
    from bench.precision import resolve_device, resolve_precision
    from bench.heads.probe import ProbeConfig, fit_probe

    device = resolve_device(args.device)
    policies = [resolve_precision(name, device.type) for name in args.precision.split(",")]

    cfg = ProbeConfig()
    grid_size = len(cfg.lrs) * len(cfg.weight_decays)
    cs = list(np.logspace(-4, 4, grid_size))
    sets = ["digits", "synthetic", "synthetic20k"] if args.features == "all" else [args.features]
    if args.features == "gpu":
        return gpu_row(args)
    if args.features == "synthetic100k":
        return large_row(args, cs, device)
    if args.logreg_only:
        return logreg_table(sets, args, device)
    default = (resolve_precision("auto", device.type).name, cfg.halving)
    print(f"grid of {grid_size} heads x {len(cfg.checkpoints())} epoch checkpoints "
          f"vs {grid_size} sequential LogisticRegression fits (C in 1e-4..1e4); thread pools "
          f"{sorted(pools)}, torch {torch.get_num_threads()}")
    print(f"{'features':>44s} {'batched s':>10s} {'top1':>6s} {'sklearn s':>10s} {'top1':>6s} "
          f"{'speed-up':>9s}")
    for name in sets:
        shape, feats, labels, classes = feature_set(name, args)
        start = time.perf_counter()
        sk_top1 = sklearn_sweep(feats, labels, cs)
        sequential = time.perf_counter() - start
        for policy in policies:
            for halving in (False, True):
                config = replace(cfg, halving=halving)
                profiling = args.profile and (policy.name, halving) == default
                if profiling:
                    from torch.profiler import profile

                    profiler = profile()
                    profiler.start()
                start = time.perf_counter()
                result = fit_probe(feats, labels, classes, config, device=device,
                                   precision=policy)
                batched = time.perf_counter() - start
                if profiling:
                    profiler.stop()
                variant = f" {policy.name}" + (" halving" if halving else " full grid") + (
                    " (default)" if (policy.name, halving) == default else "")
                print(f"{shape + variant:>44s} {batched:10.2f} {result.test['top1']:6.2f} "
                      f"{sequential:10.2f} {sk_top1:6.2f} {sequential / batched:8.2f}x",
                      flush=True)
                if profiling:
                    print(profiler.key_averages().table(sort_by="self_cpu_time_total",
                                                        row_limit=10))
        logreg_row(shape, feats, labels, classes, device)
        for policy in policies:
            floor = first_quarter(feats, labels, classes, cfg, device, policy)
            label = f"{shape} {policy.name} first quarter, all points"
            print(f"{label:>44s} {floor:10.2f} {'':6s} {sequential:10.2f} {'':6s} "
                  f"{sequential / floor:8.2f}x  (the floor of any halving schedule)", flush=True)
    if args.features == "all":
        large_row(args, cs, device)


if __name__ == "__main__":
    main()
