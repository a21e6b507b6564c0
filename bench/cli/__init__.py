"""The ``bench`` command line: one small module per command, each with ``add_parser`` and ``main``.

Only argparse loads at start-up (``bench --help`` imports no torch, mlflow or pandas); a command
imports the library when it runs. Errors a user can cause (``bench.errors.BenchError``) print
as one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
from collections.abc import Sequence

from bench.cli import (cache, compare, data, demo, leaderboard, listing, report, reproduce, run,
                       runs, similarity, sweep, sync)

COMMANDS = (run, listing, runs, leaderboard, compare, demo, cache, data, sweep, sync, similarity,
            reproduce, report)


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


# "-0.1", "-1e-3,2", "-inf", "-nan": argparse takes these for flags unless they follow "=".
NEGATIVE_VALUE = re.compile(r"-(\d|\.\d|inf|nan)[\w.+\-,]*", re.IGNORECASE)


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--lrs -0.1`` -> ``--lrs=-0.1``: a negative number after a flag is its value (then
    refused or accepted by the setting's own range), never a flag of its own."""
    out: list[str] = []
    for token in argv:
        previous = out[-1] if out else ""
        if (NEGATIVE_VALUE.fullmatch(token) and previous.startswith("--") and "=" not in previous):
            out[-1] = f"{previous}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(
        attach_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished cache shards and logged runs are kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bench list | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except Exception as e:
        from bench.paths import debug

        message = user_error(e)
        if message is None or debug():
            raise
        print(f"bench: error: {message}", file=sys.stderr)
        return 2


def user_error(e: Exception) -> str | None:
    """The one line for an error the user can fix (their input, a folder they cannot write, a
    tracking server that fails); None for a bug, which keeps its traceback."""
    from bench.errors import BenchError
    from bench.paths import tracking_uri

    if isinstance(e, BenchError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write {e.filename or 'a results file'} ({e.strerror}): make it writable "
                "or choose another folder (BENCH_RESULTS, BENCH_CACHE, --cache-dir)")
    if type(e).__module__.split(".")[0] not in ("mlflow", "requests", "urllib3"):
        return None
    try:
        uri = tracking_uri()
    except BenchError:
        return None
    if uri.startswith(("http://", "https://")):
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        return (f"the tracking server {uri} failed ({type(e).__name__}: {first}); check the "
                "server and its log, or set MLFLOW_TRACKING_URI to one that works")
    return None
