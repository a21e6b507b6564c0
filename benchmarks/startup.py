"""Start-up time of the read-only commands (``bench runs``, ``bench leaderboard --no-log``,
``bench compare A B``), before and after bench read the tracking store without MLflow's client
(``bench.results.reader``), side by side in one run.

Fills a SQLite store (in a temporary results folder) with ``--results`` result runs written the
way bench writes them (``bench.results.runs.log_record``, with predictions for ``compare``), then
runs each command as a fresh process (``python -m bench.cli ...``: imports, store set-up, the
lookup, the output) ``--repeats`` times, alternating the code before (``--before``, a git ref
exported with git archive; default: the parent of the commit that added the reader)
and the code here, and prints the fastest and median wall times, their ratio, and whether MLflow
was imported. With ``--server URI`` the same runs go to an MLflow server (results written there
under a fresh suite) instead. A shared machine's load slows both alike; the fastest is the least
disturbed.

Run: python benchmarks/startup.py [--repeats 5] [--results 50] [--before REF] [--server URI]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_before() -> str:
    """The parent of the commit that added bench/results/reader.py."""
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--",
                            "bench/results/reader.py"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    return f"{added[-1]}^" if added else "HEAD"


def fill(count: int, suite: str) -> list[str]:
    """``count`` finished results (distinct identities and slots) with predictions; run ids."""
    import numpy as np

    from bench.metrics import Predictions
    from bench.results import record as names
    from bench.results.record import RunRecord
    from bench.results.runs import log_record
    from bench.results.store import ensure_experiment

    experiment = ensure_experiment(suite)
    rng = np.random.default_rng(0)
    labels = np.arange(500) % 10
    ids = []
    for i in range(count):
        record = RunRecord(
            identity=f"{i:032x}", name=f"backbone{i % 10}/digits/block{i}/mean/linear",
            backbone=f"backbone{i % 10}", task="digits", layer=f"block{i}", pool="mean",
            head="linear", seed=0, headline="top1",
            metrics={"test_top1": 50.0 + i % 40, "val_top1": 50.0, "test_top1_ci95_low": 48.0,
                     "test_top1_ci95_high": 52.0 + i % 40},
            best={"lr": 0.01, "weight_decay": 0.0}, code_version="startup")
        predictions = Predictions.from_logits(rng.normal(size=(500, 10)), labels).to_bytes()
        ids.append(log_record(experiment, record, {names.PREDICTIONS: predictions}))
    return ids


def timed(code_root: Path, args: list[str], env: dict[str, str]) -> tuple[float, bool]:
    """Wall seconds of ``python -m bench.cli ARGS`` run from ``code_root``, and whether it
    imported MLflow."""
    probe = ("import runpy, sys; sys.argv = ['bench', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('bench.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('MLFLOW', 'mlflow' in sys.modules, file=sys.stderr)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=code_root, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if "MLFLOW" not in done.stderr:
        raise SystemExit(f"{' '.join(args)} failed in {code_root}:\n{done.stderr[-2000:]}")
    return seconds, "MLFLOW True" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=int, default=50)
    parser.add_argument("--before", default=None, help="git ref of the code before")
    parser.add_argument("--server", help="an MLflow server's URI instead of a SQLite store")
    args = parser.parse_args()
    before = args.before or default_before()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"  # the code before, exported (no worktree is registered)
        old.mkdir()
        archive = subprocess.run(["git", "archive", before], cwd=REPO, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        os.environ["BENCH_RESULTS"] = str(Path(tmp) / "results")
        if args.server:
            os.environ["MLFLOW_TRACKING_URI"] = args.server
        else:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        suite = f"startup-{uuid.uuid4().hex[:6]}"
        ids = fill(args.results, suite)  # written here, where the commands read
        commands = {"bench runs": ["runs", "--suite", suite],
                    "bench leaderboard --no-log": ["leaderboard", "--suite", suite, "--no-log"],
                    "bench compare A B": ["compare", ids[0], ids[1]]}
        print(f"{args.results} results in {'a server' if args.server else 'SQLite'}; before = "
              f"{before}; fastest / median of {args.repeats} fresh processes each")
        print(f"{'command':<28} {'before':>15} {'after':>15} {'after/before':>13}  "
              "MLflow imported (before, after)")
        for label, argv in commands.items():
            times: dict[str, list[float]] = {"before": [], "after": []}
            imported = {}
            for _ in range(args.repeats):
                for side, root in (("before", old), ("after", REPO)):
                    seconds, imported[side] = timed(root, argv, env)
                    times[side].append(seconds)
            shown = {side: f"{min(t):.2f} / {statistics.median(t):.2f} s"
                     for side, t in times.items()}
            ratio = min(times["after"]) / min(times["before"])
            print(f"{label:<28} {shown['before']:>15} {shown['after']:>15} {ratio:>12.2f}x  "
                  f"{imported['before']}, {imported['after']}")

if __name__ == "__main__":
    main()
