"""Our chunked kNN vs scikit-learn's brute-force cosine KNeighborsClassifier, side by side.

A learnable synthetic problem (class means + Gaussian noise): a memory bank of ``--size`` features
(default 100,000 x 1,024, 1,000 classes) and ``--queries`` test features. Both methods use the same
k and uniform votes (sklearn's weights='uniform'), so their predictions should agree; the script
prints both times, both top-1 accuracies, their agreement and the speed ratio, all from this run.
Run: python benchmarks/knn_speed.py [--size 100000] [--queries 10000] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def problem(size: int, queries: int, dim: int, classes: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)

    def draw(n: int):
        y = rng.integers(0, classes, n)
        return centres[y] + noise * rng.normal(size=(n, dim)).astype(np.float32), y

    return draw(size), draw(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="memory bank (train) features")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=4.0)  # top-1 ~84% at 100k x 1,000 classes
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch
    from sklearn.neighbors import KNeighborsClassifier

    from bench.heads.knn import KnnConfig, knn_top5

    (bank, bank_y), (queries, query_y) = problem(args.size, args.queries, args.dim, args.classes,
                                                 args.noise)
    print(f"bank {args.size} x {args.dim}, {args.classes} classes, {args.queries} queries, "
          f"k={args.k}, uniform votes; torch threads {torch.get_num_threads()}")
    cfg = KnnConfig(weighting="uniform")
    knn_top5(bank[:1000], bank_y[:1000], queries[:10], args.classes, [args.k], cfg, args.device)
    start = time.perf_counter()  # warm-up above: CUDA context and kernels
    ours = knn_top5(bank, bank_y, queries, args.classes, [args.k], cfg, args.device)[args.k][:, 0]
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    model = KNeighborsClassifier(n_neighbors=args.k, metric="cosine", algorithm="brute", n_jobs=-1)
    theirs = model.fit(bank, bank_y).predict(queries)
    theirs_s = time.perf_counter() - start

    print(f"bench.heads.knn on {args.device}: {ours_s:.2f} s, top1 {100 * (ours == query_y).mean():.2f}")
    print(f"sklearn brute cosine:   {theirs_s:.2f} s, top1 {100 * (theirs == query_y).mean():.2f}")
    print(f"predictions agree on {100 * (ours == theirs).mean():.2f}% of queries; "
          f"speed-up {theirs_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
