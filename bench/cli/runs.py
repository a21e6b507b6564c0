"""``bench runs``: a suite's finished results, one line each, with the run ids other commands
take (``bench compare ID ID``)."""

from __future__ import annotations

import argparse
import sys

from bench.cli import options

ID_CHARS = 8  # the run id prefix printed; `bench compare` takes it


def add_parser(sub) -> None:
    from bench.protocol import protocols  # imports no torch, mlflow or pandas

    p = sub.add_parser("runs", help="a suite's finished results with their run ids")
    p.add_argument("--suite", action="append", default=[], help="experiment(s); default bench")
    p.add_argument("--protocol", default="all", choices=protocols(),
                   help="only these heads (as bench leaderboard's --protocol); default all")
    p.add_argument("--backbone", default="*", help="glob on the backbone name, e.g. 'mae*'")
    p.add_argument("--task", default="*", help="glob on the task name")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from fnmatch import fnmatchcase

    from bench.results.leaderboard import elsewhere, heads_of
    from bench.results.runs import find_records
    from bench.results.store import experiment_ids

    suites = [s for a in args.suite for s in options.csv(a)] or ["bench"]
    heads = heads_of(args.protocol)
    records = [r for r in find_records(experiment_ids(suites))
               if (heads is None or r.head in heads) and fnmatchcase(r.backbone, args.backbone)
               and fnmatchcase(r.task, args.task)]
    if not records:
        what = "results" if (args.backbone, args.task) == ("*", "*") else "matching results"
        print(f"bench: {elsewhere(suites, what)}", file=sys.stderr)
        return 1
    print(table(records))
    print(f"{plural(len(records), 'result')} in suite(s) {', '.join(suites)}; "
          f"`bench compare ID ID` compares two of them (ids or names as shown)")
    return 0


def table(records) -> str:
    """The results as a markdown table, newest first."""
    import time

    import pandas as pd

    from bench.results.leaderboard import column

    rows = []
    for r in records:
        interval = r.interval(r.headline)
        value = r.metrics.get(f"test_{r.headline}", float("nan"))
        shown = f"{value:.2f} ± {(interval[1] - interval[0]) / 2:.2f}" if interval else \
            f"{value:.2f}"
        rows.append({"id": r.run_id[:ID_CHARS], "backbone": r.backbone,
                     "task": column(r),
                     "layer": r.layer, "pool": r.pool, "head": r.head, "seed": r.seed,
                     f"test {r.headline}": shown,
                     "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.start_time or 0))})
    return pd.DataFrame(rows).fillna("").to_markdown(index=False)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def tally(records, suite: str) -> str:
    """What a command did with its results: computed M, reused N (and where they are)."""
    reused = sum(r.reused for r in records)
    return (f"computed {plural(len(records) - reused, 'result')}, reused {reused} already "
            f"logged (--force recomputes); suite {suite!r}")
