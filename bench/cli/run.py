"""``bench run``: one backbone on one task, here or on SLURM; several seeds or few-shot draws."""

from __future__ import annotations

import argparse

from bench.cli import options
from bench.errors import UsageError

DRAWS = 5  # few-shot draws per k unless --draws or --seeds says otherwise


def add_parser(sub) -> None:
    from bench.protocol import HEADS

    p = sub.add_parser("run", help="extract features (cached) and probe one backbone on one task")
    p.add_argument("--backbone", required=True, help="backbone preset (`bench list backbones`)")
    p.add_argument("--task", required=True, help="task preset (`bench list tasks`)")
    p.add_argument("--layer", action="append", default=[], metavar="LAYER",
                   help="feature point; repeat or comma-separate for several (default: the preset's)")
    p.add_argument("--pool", action="append", default=[], metavar="POOL",
                   help="pooling: 1,2,4,8 (p x p average), cls, mean, none... (default: preset's)")
    options.add_feature_args(p)
    options.add_probe_args(p, list(HEADS))
    p.add_argument("--seeds", type=options.ints,
                   help="several seeds, e.g. 0,1,2: one result per seed on the same cached "
                   "features, and their mean and std (replaces --seed)")
    p.add_argument("--shots", type=options.ints,
                   help="few-shot head: images per class, e.g. 1,5,10,25 (default 5)")
    p.add_argument("--draws", type=int,
                   help=f"few-shot head: draws per k, the seeds 0..N-1 (default {DRAWS})")
    options.add_executor_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import run_seeds

    spec = options.run_spec(args, args.backbone, args.task,
                            [v for a in args.layer for v in options.csv(a)],
                            [v for a in args.pool for v in options.csv(a)])
    fewshot = args.head == "few-shot"
    if not fewshot and (args.shots or args.draws):
        raise UsageError("--shots and --draws apply to --head few-shot only")
    if args.draws is not None and (args.draws < 1 or args.seeds):
        raise UsageError("--draws takes a positive count and replaces --seeds (draw = seed)")
    if args.seed is not None and args.seeds:
        raise UsageError("--seed and --seeds together: --seeds replaces --seed, give one of them")
    seeds = args.seeds or (list(range(args.draws or DRAWS)) if fewshot else [args.seed or 0])
    variants = [spec.head_args | {"shots": k} for k in args.shots] if args.shots else [
        spec.head_args]
    for head_args in variants:
        spec.head_args = head_args
        report = run_seeds(spec, seeds, options.run_options(args), options.executor(args))
        for record in report.records:
            print(describe(record, with_seed=len(seeds) > 1))
        for name, aggregate in report.aggregates.items():
            spread = "  ".join(f"test_{m} {aggregate.mean[m]:.2f} ± {aggregate.std[m]:.2f}"
                               for m in aggregate.mean)
            kind = "draws" if fewshot else "seeds"
            print(f"{name}: across {aggregate.seeds} {kind} (mean ± sample std): {spread}")
    return 0


def describe(record, with_seed: bool = False) -> str:
    """One result line: metrics with their 95% intervals, the selected point, the run id, whether
    it was reused."""
    m = record.metrics
    best = ", ".join(f"{k} {v:g}" for k, v in record.best.items())
    note = "  [already logged: reused; --force recomputes]" if record.reused else ""
    seed = f"  seed {record.seed}" if with_seed else ""

    def shown(metric: str) -> str:
        interval = record.interval(metric)
        ci = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
        return f"test_{metric} {m[f'test_{metric}']:.2f}{ci}"

    line = (f"{record.name}{seed}: {shown('top1')}  {shown('mean_per_class')}  "
            f"val_{record.headline} {record.val_score:.2f}  ({best})  run {record.run_id}{note}")
    if record.skipped_count or record.skipped:
        shown_items = ", ".join(record.skipped[:5]) + (" ..." if len(record.skipped) > 5 else "")
        line += (f"\n  left out {record.skipped_count or len(record.skipped)} unreadable "
                 f"image(s) (--skip-corrupt; listed in the run's bench.skipped tag): {shown_items}")
    return line
