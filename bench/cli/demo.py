"""``bench demo``: the two controls on digits, offline, through exactly the path of a real run."""

from __future__ import annotations

import argparse

from bench.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="offline end-to-end run: two controls on digits (minutes, CPU)")
    p.add_argument("--suite", default="demo")
    p.add_argument("--executor", default="local", choices=["local", "submitit-local", "slurm"])
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import leaderboard, run
    from bench.paths import tracking_uri
    from bench.scheduler import ExecutorConfig
    from bench.spec import RunOptions, RunSpec

    run_options = RunOptions(device=args.device, workers=args.workers,
                             progress=not args.no_progress, suite=args.suite)
    for backbone in ("pixels", "random-unet"):
        for record in run(RunSpec(backbone=backbone, task="digits"), run_options,
                          ExecutorConfig(args.executor)):
            print(f"{record.name}: test_top1 {record.metrics['test_top1']:.2f} (chance 10.00)")
    board, paths = leaderboard([args.suite], title="bench demo: controls on digits")
    from bench.leaderboard import FOOTER, footnotes

    print("\n\n".join(["", board.display.to_markdown(), FOOTER, *footnotes(board.cells)]))
    print(f"\nwritten: {paths['md']}")
    print(options.ui_hint(tracking_uri()))
    return 0
