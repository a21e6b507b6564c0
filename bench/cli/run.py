"""``bench run``: one backbone on one task, here or on SLURM; several seeds (few-shot: draws)."""

from __future__ import annotations

import argparse

from bench.cli import options
from bench.errors import UsageError


def add_parser(sub) -> None:
    from bench.protocol import head_kinds

    p = sub.add_parser("run", help="extract features (cached) and probe one backbone on one task")
    p.add_argument("--backbone", required=True, help="backbone preset (`bench list backbones`)")
    p.add_argument("--task", required=True, help="task preset (`bench list tasks`)")
    p.add_argument("--layer", action="append", default=[], metavar="LAYER",
                   help="feature point; repeat or comma-separate for several (default: the preset's)")
    p.add_argument("--pool", action="append", default=[], metavar="POOL",
                   help="pooling: 1,2,4,8 (p x p average), cls, mean, none... (default: preset's)")
    options.add_feature_args(p)
    options.add_keep_arg(p)
    options.add_view_args(p)
    options.add_online_arg(p)
    options.add_probe_args(p, head_kinds())
    p.add_argument("--seeds", type=options.ints,
                   help="several seeds, e.g. 0,1,2: one result per seed on the same cached "
                   "features, and their mean and std (replaces --seed)")
    p.add_argument("--draws", type=int,
                   help="seeds 0..N-1 (few-shot: the draws per k; default: the head's, 5 draws "
                   "for few-shot, else --seed)")
    options.add_executor_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import run_seeds
    from bench.cli.runs import tally

    spec = options.run_spec(args, args.backbone, args.task,
                            [v for a in args.layer for v in options.csv(a)],
                            [v for a in args.pool for v in options.csv(a)])
    if args.draws is not None and (args.draws < 1 or args.seeds):
        raise UsageError("--draws takes a positive count and replaces --seeds (draw = seed)")
    if args.seed is not None and (args.seeds or args.draws):
        raise UsageError("--seed beside --seeds or --draws: they replace --seed, give one of them")
    seeds = args.seeds or (list(range(args.draws)) if args.draws else None)
    if seeds is None and args.seed is not None:
        seeds = [args.seed]
    report = run_seeds(spec, seeds, options.run_options(args), options.executor(args))
    several = len({r.seed for r in report.records}) > 1
    for record in report.records:
        print(describe(record, with_seed=several))
        if record.grid_edge:
            print(f"  grid edge: {record.grid_edge}")
    for name, aggregate in report.aggregates.items():
        spread = "  ".join(f"test_{m} {aggregate.mean[m]:.2f} ± {aggregate.std[m]:.2f}"
                           for m in aggregate.mean)
        print(f"{name}: across {aggregate.seeds} seeds (mean ± sample std): {spread}")
    print(tally(report.records, args.suite))
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
