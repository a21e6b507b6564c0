"""``bench leaderboard``: finished results pivoted backbone x task, from MLflow."""

from __future__ import annotations

import argparse
import sys

from bench.cli import options


def add_parser(sub) -> None:
    from bench.results.leaderboard import metric_choices
    from bench.protocol import protocols

    p = sub.add_parser("leaderboard", help="pivot finished runs backbone x task from MLflow")
    p.add_argument("--suite", action="append", default=[], help="experiment(s); default bench")
    p.add_argument("--metric", default="test_top1",
                   choices=metric_choices())
    p.add_argument("--protocol", default="linear", choices=protocols(),
                   help="which heads to rank: linear (linear, bn-linear; the default), mlp, "
                   "attention (attention, difformer), knn, few-shot (one column per k), all")
    p.add_argument("--no-log", action="store_true", help="do not log the table to MLflow")
    p.add_argument("--paper", action="store_true",
                   help="add the published numbers for these tasks as rows 'STUDY, TABLE: METHOD'")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import leaderboard
    from bench.cli.runs import ID_CHARS
    from bench.results.leaderboard import FOOTER, elsewhere, footnotes, written_lines
    from bench.paths import tracking_uri

    suites = [s for a in args.suite for s in options.csv(a)] or ["bench"]
    board, paths = leaderboard(suites, args.metric, references=args.paper, log=not args.no_log,
                               protocol=args.protocol)
    if board.table.empty:
        print(f"bench: {elsewhere(suites, f'{args.protocol} results')}; nothing written",
              file=sys.stderr)
        return 1
    print("\n\n".join([board.display.to_markdown(), FOOTER, *footnotes(board.cells)]) + "\n")
    shown = ", ".join(f"{row.backbone} on {row.task} {row.run_id[:ID_CHARS]}"
                      for row in board.cells.itertuples())
    print(f"runs shown (`bench compare` takes these ids): {shown}")
    print("\n".join(written_lines(board, paths)))
    if not args.no_log:
        print(f"logged to MLflow: the 'leaderboard' run of suite {suites[0]!r}")
    print(options.ui_hint(tracking_uri(), suites[0]))
    return 0
