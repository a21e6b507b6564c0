"""The ``bench`` command line: one small module per command, each with ``add_parser`` and ``main``.

Only argparse loads at start-up (``bench --help`` imports no torch, mlflow or pandas); a command
imports the library when it runs. Errors a user can cause (``bench.errors.BenchError``) print
as one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.cli import (cache, compare, data, demo, leaderboard, listing, run, runs, similarity,
                       sweep, sync)

COMMANDS = (run, listing, runs, leaderboard, compare, demo, cache, data, sweep, sync, similarity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark frozen representations: backbones x tasks, cached features, "
        "batched probes, MLflow leaderboards.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished cache shards and logged runs are kept", file=sys.stderr)
        return 130
    except PermissionError as e:  # the environment, not a bug: name the path and the fix
        print(f"bench: error: cannot write {e.filename or 'a results file'} ({e.strerror}): make "
              "it writable or choose another folder (BENCH_RESULTS, BENCH_CACHE, --cache-dir)",
              file=sys.stderr)
        return 2
    except Exception as e:
        from bench.errors import BenchError

        from bench.paths import debug

        if isinstance(e, BenchError) and not debug():
            print(f"bench: error: {e}", file=sys.stderr)
            return 2
        raise
