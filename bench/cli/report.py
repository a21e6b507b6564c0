"""``bench report PAPER``: the paper's tables beside our results, with verdicts, figures and
claims, written to results/reports/PAPER/ and logged as one MLflow run."""

from __future__ import annotations

import argparse

from bench.cli import options
from bench.cli.reproduce import STUDY_RECIPE
from bench.precision import CACHE_DTYPES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="a paper's tables beside ours: verdict per cell, curves, CKA figures, "
        "claims (results/reports/PAPER/, one MLflow run; reports.csv/.json across papers)")
    p.add_argument("paper", help="a paper's name (shipped or from a plugin) or a .yaml file")
    p.add_argument("--table", action="append", default=[], metavar="KEY",
                   help="only these tables (comma-separated or repeated; default every table)")
    p.add_argument("--suite", default="bench", help="MLflow experiment holding the results")
    p.add_argument("--seed", type=int, default=0, help="the probes' seed, as given to bench "
                   "reproduce (default 0)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="as given to bench reproduce (auto: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--cache-dtype", default="auto", choices=list(CACHE_DTYPES),
                   help="as given to bench reproduce")
    p.add_argument("--skip-corrupt", action="store_true", help="as given to bench reproduce")
    options.add_recipe_arg(p, STUDY_RECIPE, study=True)
    options.add_view_args(p)
    options.add_online_arg(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import report
    from bench.cli.reproduce import spec_template
    from bench.cli.runs import plural
    from bench.paths import tracking_uri
    from bench.run.spec import RunOptions

    tables = [t for a in args.table for t in options.csv(a)] or None
    done = report(args.paper, tables, RunOptions(suite=args.suite, progress=False),
                  spec_template(args))
    print(f"report {done.paper.name}: {done.summary()}")
    for line in done.findings():
        print(f"  {line}")
    for claim in done.claims:
        print(f"  {claim.line()}")
    pages = sum(p.suffix == ".html" for p in done.files)
    print(f"written: {done.folder}/ (index.md, index.html, {plural(pages - 1, 'table')} as "
          ".md and .html, figures); every paper's cells: "
          f"{done.folder.parent / 'reports.csv'} and .json")
    note = " (unchanged: the same report was logged already)" if done.reused else ""
    print(f"logged to MLflow: run {done.run_id} of suite {args.suite!r}{note}")
    print(options.ui_hint(tracking_uri()))
    return 0
