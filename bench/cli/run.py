"""``bench run``: one backbone on one task, here or on SLURM."""

from __future__ import annotations

import argparse

from bench.cli import options


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
    options.add_executor_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import run

    spec = options.run_spec(args, args.backbone, args.task,
                            [v for a in args.layer for v in options.csv(a)],
                            [v for a in args.pool for v in options.csv(a)])
    for record in run(spec, options.run_options(args), options.executor(args)):
        print(describe(record))
    return 0


def describe(record) -> str:
    """One result line: metrics, the selected point, the run id, whether it was reused."""
    m = record.metrics
    best = ", ".join(f"{k} {v:g}" for k, v in record.best.items())
    note = "  [already logged: reused; --force recomputes]" if record.reused else ""
    return (f"{record.name}: test_top1 {m['test_top1']:.2f}  test_mean_per_class "
            f"{m['test_mean_per_class']:.2f}  val_{record.headline} "
            f"{record.val_score:.2f}  ({best})  run {record.run_id}{note}")
