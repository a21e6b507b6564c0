"""``bench demo``: the two controls on digits, offline, through exactly the path of a real run.

It logs to the default suite (``bench``), so the everyday commands it suggests at the end
(``bench runs``, ``bench leaderboard``, ``bench compare``, ``bench sweep``) find its results as
typed."""

from __future__ import annotations

import argparse

from bench.cli import options
from bench.run.scheduler import executors

BACKBONES = ("pixels", "random-unet")


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="offline end-to-end run: two controls on digits (minutes, CPU)")
    p.add_argument("--suite", default="bench",
                   help="MLflow experiment (default bench, where the other commands look)")
    p.add_argument("--executor", default="local", choices=executors, metavar="KIND",
                   help="where the jobs run: %(choices)s")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import leaderboard, run
    from bench.cli.runs import ID_CHARS, tally
    from bench.results.leaderboard import FOOTER, footnotes, written_lines
    from bench.paths import tracking_uri
    from bench.run.scheduler import ExecutorConfig
    from bench.run.spec import RunOptions, RunSpec

    run_options = RunOptions(device=args.device, workers=args.workers,
                             progress=not args.no_progress, suite=args.suite)
    records = []
    for backbone in BACKBONES:
        for record in run(RunSpec(backbone=backbone, task="digits"), run_options,
                          ExecutorConfig(args.executor)):
            note = "  [reused: already logged]" if record.reused else ""
            print(f"{record.name}: test_top1 {record.metrics['test_top1']:.2f} (chance 10.00)  "
                  f"run {record.run_id[:ID_CHARS]}{note}")
            records.append(record)
    print(tally(records, args.suite))
    board, paths = leaderboard([args.suite])  # the file `bench leaderboard` writes, the same
    print("\n\n".join(["", board.display.to_markdown(), FOOTER, *footnotes(board.cells)]))
    print("\n".join(written_lines(board, paths)))
    print(options.ui_hint(tracking_uri(), args.suite))
    print("\nnext:\n" + "\n".join(f"  {line}" for line in next_commands(args.suite)))
    return 0


def next_commands(suite: str) -> list[str]:
    """The commands to try after the demo, exactly as they work on its results."""
    flag = "" if suite == "bench" else f" --suite {suite}"
    return [f"bench runs{flag}                 # the results and their run ids",
            f"bench leaderboard{flag}          # backbone x task, with 95% intervals",
            f"bench compare {' '.join(BACKBONES)} --task digits{flag}   # is the gap real?",
            f"bench sweep --backbones {','.join(BACKBONES)} --tasks digits "
            f"--dry-run{flag}   # what a sweep would run, what is done"]
