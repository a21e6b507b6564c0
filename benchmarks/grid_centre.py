"""Where do the grid probes select on standardised features? The measurement behind the default
grids of ``bench.heads.probe.ProbeConfig`` (the linear, bn-linear and mlp heads).

Every feature set is probed over a wide grid, learning rates 1e-5..10 by half decades and weight
decays 0 and 1e-4..10 by decades, for the default 40 epochs (validation at every other epoch, no
successive halving: the whole landscape; the mlp with 256 hidden units, not the default 1,024,
to keep its 91-point grid affordable), selecting on validation as the protocol does. The table
gives each set's selected point and the points within one binomial standard error of the best on
validation (the range a default grid should cover), then, for the default grid given by
``--lrs`` / ``--wds`` (the current defaults unless given), how many sets select at one of its
ends (what the leaderboard marks with a dagger).

Feature sets (all offline): digits through the ``pixels`` control (8 and 16 px), the
random-weight architectures of real models (``random-unet``, ``resnet50-tiny``,
``dinov2-tiny``, ``clip-tiny``, ``mae-tiny``, ``diffusion-tiny``) on digits, and Gaussian class
sets of other sizes, dimensions, class counts and separations, anisotropic and off-centre.

Run: python benchmarks/grid_centre.py [--heads linear,mlp] [--sets all] [--threads 2]
[--lrs 3e-4,...] [--wds 0,...] [--save landscapes.json]; then judge other default grids on the
same landscapes without probing again: --load landscapes.json --lrs ... --wds ...
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

WIDE_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
WIDE_WDS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
BACKBONES = {  # name -> (preset arguments, layer or None for the default, pool or None)
    "pixels 8px": ("pixels", {"size": 8}, None, "8"),
    "pixels 16px": ("pixels", {}, None, None),
    "random-unet mid/2": ("random-unet", {}, None, None),
    "resnet50-tiny": ("resnet50-tiny", {}, None, None),
    "dinov2-tiny": ("dinov2-tiny", {}, None, None),
    "clip-tiny": ("clip-tiny", {}, None, None),
    "mae-tiny": ("mae-tiny", {}, None, None),
    "diffusion-tiny": ("diffusion-tiny", {}, None, None),
}


def digits_through(preset: str, arguments: dict, layer: str | None, pool: str | None):
    """Digits features of one backbone preset (its default layer and pool unless given)."""
    import torch

    import bench

    task = bench.create_task("digits")
    backbone = bench.create_backbone(preset, **arguments).eval()
    request = (backbone.canonical_layer(layer) if layer else backbone.default_layers[0],
               pool or backbone.default_pool)
    transform = backbone.transform()
    feats, labels = {}, {}
    for s in ("train", "val", "test"):
        split = task.split(s)
        rows = []
        for start in range(0, len(split), 64):
            x = torch.stack([transform(split.load(i))
                             for i in range(start, min(start + 64, len(split)))])
            with torch.inference_mode():
                out = backbone.extract(x, [request], torch.arange(len(x)))[request]
            rows.append(out.float().reshape(len(x), -1).numpy())
        feats[s], labels[s] = np.concatenate(rows), split.labels
    return feats, labels, 10


def gaussian(n: int, dim: int, classes: int, shift: float, seed: int, anisotropic: bool = False,
             offset: float = 0.0, scale: float = 1.0):
    """Gaussian classes (centres ``shift`` apart in units of the noise), per-dimension scales
    spread over two decades when ``anisotropic``, moved by ``offset`` and scaled by ``scale``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * shift
    dims = np.exp(rng.normal(size=dim)) if anisotropic else np.ones(dim)
    feats, labels = {}, {}
    for split, count in (("train", n), ("val", max(n // 5, 2 * classes)), ("test", n // 2)):
        y = rng.integers(0, classes, count)
        x = (centres[y] + rng.normal(size=(count, dim))) * dims
        feats[split], labels[split] = ((x + offset) * scale).astype(np.float32), y
    return feats, labels, classes


SYNTHETIC = {
    "gauss 2k x 64, 10 cls": dict(n=2000, dim=64, classes=10, shift=0.35, seed=1),
    "gauss 2k x 512, 10 cls": dict(n=2000, dim=512, classes=10, shift=0.12, seed=2),
    "gauss 5k x 256, 50 cls": dict(n=5000, dim=256, classes=50, shift=0.3, seed=3),
    "gauss 8k x 1024, 100 cls": dict(n=8000, dim=1024, classes=100, shift=0.12, seed=4),
    "aniso 4k x 256, 20 cls, offset": dict(n=4000, dim=256, classes=20, shift=0.3, seed=5,
                                           anisotropic=True, offset=30.0, scale=1e-3),
    "gauss 1k x 2048, 10 cls (few rows)": dict(n=1000, dim=2048, classes=10, shift=0.08, seed=6),
}


def feature_sets(names: list[str] | None):
    for name, (preset, arguments, layer, pool) in BACKBONES.items():
        if not names or name in names:
            try:
                yield name, digits_through(preset, arguments, layer, pool)
            except Exception as e:  # a preset that needs what this machine lacks
                print(f"  {name}: skipped ({type(e).__name__}: {str(e)[:120]})", flush=True)
    for name, spec in SYNTHETIC.items():
        if not names or name in names:
            yield name, gaussian(**spec)


def landscape(head: str, feats: dict, labels: dict, classes: int, threads: int):
    """Every point's validation top-1 over the wide grid (and the selected one's test top-1)."""
    import torch

    from bench.heads.probe import GridProbeTrainer, ProbeConfig
    from bench.precision import FP32
    from bench.protocol import ProbeData, evaluate

    torch.set_num_threads(threads)
    cfg = ProbeConfig(head=head, lrs=WIDE_LRS, weight_decays=WIDE_WDS, halving=False,
                      hidden=256)
    result = evaluate(GridProbeTrainer(cfg, "cpu", FP32), ProbeData(feats, labels, classes))
    return result


def plateau(records: list[dict], n_val: int) -> list[dict]:
    """The grid points within one binomial standard error of the best on validation."""
    best = max(r["top1"] for r in records)
    p = best / 100
    noise = 100 * math.sqrt(max(p * (1 - p), 1e-4) / n_val)
    return [r for r in records if r["top1"] >= best - noise]


def at_edge(value: float, grid: tuple[float, ...]) -> bool:
    """Whether ``value`` selected from ``grid`` is at an end a wider grid could move past (0 and
    the lower end of a grid starting at 0 are not)."""
    values = sorted(grid)
    return value == values[-1] or (value == values[0] and value > 0)


def nearest(value: float, grid: tuple[float, ...]) -> float:
    """The grid value nearest ``value`` on a log scale (0 only for 0)."""
    if value == 0:
        return min(grid)
    positive = [g for g in grid if g > 0]
    return min(positive, key=lambda g: abs(math.log(g / value)))


def judge(grid: list[dict], lrs: tuple[float, ...], wds: tuple[float, ...]
          ) -> tuple[dict, bool, float]:
    """What a grid of ``lrs`` x ``wds`` selects from a wide landscape (its points train alone,
    with the same seed and minibatches, so the restriction is exact), whether at an end of
    it, and the validation points it gives up against the wide grid's best."""
    on = ({nearest(v, WIDE_LRS) for v in lrs},
          {nearest(v, WIDE_WDS) if v else 0.0 for v in wds})
    kept = [r for r in grid if r["lr"] in on[0] and r["weight_decay"] in on[1]]
    chosen = max(kept, key=lambda r: r["top1"])  # the first maximum, as the protocol
    edge = at_edge(chosen["lr"], tuple(on[0])) or at_edge(chosen["weight_decay"], tuple(on[1]))
    return chosen, edge, max(r["top1"] for r in grid) - chosen["top1"]


def main() -> None:
    import json

    from bench.heads.probe import ProbeConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="linear,mlp")
    parser.add_argument("--sets", default="", help="comma-separated set names (default all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lrs", default=",".join(map(str, ProbeConfig.lrs)),
                        help="the default lr grid judged (default: the current one)")
    parser.add_argument("--wds", default=",".join(map(str, ProbeConfig.weight_decays)),
                        help="the default weight-decay grid judged (default: the current one)")
    parser.add_argument("--save", help="write every landscape to this JSON file")
    parser.add_argument("--load", help="judge the landscapes of this JSON file (no probe runs)")
    args = parser.parse_args()
    lrs = tuple(float(v) for v in args.lrs.split(","))
    wds = tuple(float(v) for v in args.wds.split(","))
    names = [s for s in args.sets.split(",") if s] or None
    if args.load:
        with open(args.load) as f:
            landscapes = json.load(f)
    else:
        landscapes = measure(args.heads.split(","), names, args.threads)
        if args.save:
            with open(args.save, "w") as f:
                json.dump(landscapes, f)
    print(f"wide grid: lr {WIDE_LRS[0]:g}..{WIDE_LRS[-1]:g} x wd 0,{WIDE_WDS[1]:g}.."
          f"{WIDE_WDS[-1]:g}, 40 epochs; judged grid: lr {lrs}, wd {wds}")
    for head, sets in landscapes.items():
        edges, lost = 0, []
        print(f"\n{head}: set | n train x dims, classes | selected by the wide grid: lr, wd, "
              "epochs (val) | within 1 SE of its best: lr range, wd range | selected by the "
              "judged grid (val points given up)")
        for name, one in sets.items():
            grid = one["grid"]
            best = max(grid, key=lambda r: r["top1"])
            top = plateau(grid, one["n_val"])
            lr_range = sorted({r["lr"] for r in top})
            wd_range = sorted({r["weight_decay"] for r in top})
            chosen, edge, gap = judge(grid, lrs, wds)
            edges += edge
            lost.append(gap)
            print(f"  {name:36s} | {one['n_train']:,} x {one['dims']:,}, {one['classes']} | "
                  f"lr {best['lr']:g}, wd {best['weight_decay']:g}, ep {best['epochs']:g} "
                  f"({best['top1']:.1f}) | lr {lr_range[0]:g}..{lr_range[-1]:g}, wd "
                  f"{wd_range[0]:g}..{wd_range[-1]:g} | lr {chosen['lr']:g}, wd "
                  f"{chosen['weight_decay']:g} ({gap:.1f}){' EDGE' if edge else ''}", flush=True)
        print(f"{head}: {edges} of {len(sets)} sets select at an end of the judged grid; val "
              f"points given up: median {np.median(lost):.2f}, largest {max(lost):.2f}")


def measure(heads: list[str], names: list[str] | None, threads: int) -> dict:
    """head -> set -> its landscape (every wide-grid point's validation metrics) and sizes."""
    sets = list(feature_sets(names))
    out: dict = {}
    for head in heads:
        out[head] = {}
        for name, (feats, labels, classes) in sets:
            started = time.perf_counter()
            result = landscape(head, feats, labels, classes, threads)
            out[head][name] = {"grid": result.grid, "n_train": len(labels["train"]),
                               "n_val": len(labels["val"]), "dims": feats["train"].shape[1],
                               "classes": classes}
            print(f"  {head} on {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    main()
