"""``bench compare A B``: is the difference between two results real? From stored predictions."""

from __future__ import annotations

import argparse
import re

from bench.cli import options

FULL_ID = re.compile("[0-9a-f]{32}")  # an MLflow run id, loaded as it is


def add_parser(sub) -> None:
    from bench.metrics import names
    from bench.protocol import protocols  # imports no torch, mlflow or pandas

    p = sub.add_parser("compare", help="paired bootstrap difference (and McNemar) of two results",
                       description="A and B are results as `bench runs` shows them (run ids, their "
                       "first characters, or run names), or, with --task, backbone names (each "
                       "backbone's leaderboard result for that task).")
    p.add_argument("a", help="run id (or prefix) or run name; backbone name with --task")
    p.add_argument("b", help="run id (or prefix) or run name; backbone name with --task")
    p.add_argument("--task", help="compare the leaderboard records of backbones A and B on this "
                   "task (a leaderboard column, e.g. cub or 'cub 5-shot')")
    p.add_argument("--suite", action="append", default=[],
                   help="experiment(s) to look in; default bench with --task, else every suite")
    p.add_argument("--protocol", default="linear", choices=protocols(),
                   help="with --task: which heads' leaderboard (default linear)")
    p.add_argument("--metric", choices=names(),
                   help="default: the task's headline metric")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import compare

    suites = [s for a in args.suite for s in options.csv(a)]
    a, b = args.a, args.b
    if args.task is None:
        from bench.results.leaderboard import find_run

        a, b = (ref if FULL_ID.fullmatch(ref) else find_run(ref, suites).run_id for ref in (a, b))
    result = compare(a, b, task=args.task, suites=suites or ["bench"], metric=args.metric,
                     protocol=args.protocol)
    print(result.summary())
    return 0
