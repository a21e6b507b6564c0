"""A 37 x 37 block CKA matrix all pairs at once (bench.heads.similarity) vs pair by pair, side by side.

The features stand in for guided-diffusion ADM-256's 37 blocks at pool 1: each block's channel
width (256, 512, 1,024 by resolution level) divided by ``--width-divisor`` (default 2, so the
straightforward version finishes in a minute or two on 2 CPU cores; 1 gives the real widths), n
images (default 2,000) sharing a low-rank signal so that CKA values spread over (0, 1).

The pair-by-pair version is what one writes first: debiased linear CKA of two feature matrices
(centre, then Song et al.'s unbiased HSIC of the pair and of each side with itself, in feature
space when d < n, with the Gram otherwise), called for each of the 703 pairs of the symmetric
matrix. Both run in float64 on the same device; their values must agree to 1e-6.
Run: python benchmarks/similarity_speed.py [--n 2000] [--width-divisor 2] [--device cuda]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.timing import seconds

# input blocks 1-18, the middle block, output blocks 20-37 (channel_mult 1,1,2,2,4,4 of 256)
ADM_256_WIDTHS = [256] * 7 + [512] * 6 + [1024] * 5 + [1024] + [1024] * 6 + [512] * 6 + [256] * 6


def features(n: int, divisor: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, 32))
    out = []
    for i, width in enumerate(ADM_256_WIDTHS):
        d = width // divisor
        mix = rng.standard_normal((32, d)) * (1.5 + np.sin(i / 5))  # signal varies by block
        out.append((signal @ mix + 4 * rng.standard_normal((n, d))).astype(np.float32))
    return out


def hsic_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012) with linear kernels of centred features."""
    n = len(x)
    trace = (x.T @ y).square().sum() if x.shape[1] < n and y.shape[1] < n else (
        (x @ x.T) * (y @ y.T)).sum()
    kx, ky = x.square().sum(1), y.square().sum(1)
    return (trace - kx @ ky + kx.sum() * ky.sum() / ((n - 1) * (n - 2))
            - 2 * (kx @ ky) / (n - 2)) / (n * (n - 3))


def pair_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float(hsic_unbiased(x, y) / (hsic_unbiased(x, x) * hsic_unbiased(y, y)).sqrt())


def pair_by_pair(points: list[torch.Tensor]) -> np.ndarray:
    out = np.eye(len(points))
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            out[i, j] = out[j, i] = pair_cka(points[i], points[j])
    return out


def main() -> None:
    from bench.heads.similarity import Measure, as_points, matrix

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--width-divisor", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    raw = features(args.n, args.width_divisor)
    points = as_points(raw, device)
    dims = [x.shape[1] for x in points]
    print(f"{len(points)} x {len(points)} debiased linear CKA, n = {args.n}, d = {min(dims)}.."
          f"{max(dims)} (sum {sum(dims)}), float64 on {device}")
    result: dict[str, np.ndarray] = {}
    matrix(Measure(), points[:2])  # warm-up (kernels, allocator)
    at_once = seconds(lambda: result.update(
        all=matrix(Measure(), points).cpu().numpy()), device)
    print(f"all pairs at once: {at_once:.2f} s")
    by_pair = seconds(lambda: result.update(pairs=pair_by_pair(points)), device)
    print(f"pair by pair ({len(points) * (len(points) - 1) // 2} pairs): {by_pair:.2f} s")
    gap = float(np.abs(result["all"] - result["pairs"]).max())
    off = result["all"][~np.eye(len(points), dtype=bool)]
    print(f"largest difference: {gap:.2e}; CKA off the diagonal spans {off.min():.3f}.."
          f"{off.max():.3f}")
    if gap > 1e-6:
        raise SystemExit(f"values differ by {gap:.2e} > 1e-6")
    print(f"all pairs at once: {by_pair / at_once:.2f}x faster than pair by pair")


if __name__ == "__main__":
    main()
