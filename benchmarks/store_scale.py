"""How result lookups scale with the tracking store: a reuse lookup, a supersede and a leaderboard
on stores of 1,000, 10,000 and 100,000 result runs, through SQLite and a local ``mlflow server``.

The store is filled with result runs written the way bench writes them (``RunRecord.to_tags``,
``to_params``, ``to_metrics``; a distinct identity and slot each; 50 backbones x 10 tasks), in
batches of 1,000 runs per transaction through MLflow's own SQLAlchemy tables: a client's
``create_run`` + ``log_batch`` costs tens of milliseconds per run on SQLite, which would make the
100,000-run store take an hour. The same SQLite file is then read directly and through an
``mlflow server`` the script starts on 127.0.0.1 (and stops at the end). Each lookup is timed
``--repeats`` times on a different run (median shown). The last line is the reuse lookup's growth
from the smallest to the largest store (target: under 2x).
Run: python benchmarks/store_scale.py [--sizes 1000 10000 100000] [--leaderboard-max 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

SUITE = "bench"


def record(i: int):
    """The i-th filler result: its own identity and slot (the seed), realistic names."""
    from bench.results.record import RunRecord

    backbone, task = f"backbone{i % 50}", f"task{i // 50 % 10}"
    return RunRecord(
        identity=hashlib.sha256(str(i).encode()).hexdigest()[:32],
        name=f"{backbone}/{task}/block{i % 24}/mean/linear", backbone=backbone, task=task,
        layer=f"block{i % 24}", pool="mean", head="linear", seed=i, headline="top1",
        metrics={"test_top1": 50 + i % 40, "val_top1": 50 + i % 41, "probe_seconds": 1.0},
        best={"lr": 0.01, "wd": 0.0}, weights_sha256="0" * 64, code_version="store_scale",
        cache_keys={"train": ["k"], "val": ["k"], "test": ["k"]},
        protocol={"precision": {"name": "fp32"}, "head": {"epochs": 10}},
    )


def fill(uri: str, experiment_id: str, start: int, stop: int, batch: int = 1000) -> None:
    """Result runs ``start`` .. ``stop - 1``, finished, in transactions of ``batch`` runs."""
    from mlflow.store.tracking.dbmodels.models import (SqlLatestMetric, SqlMetric, SqlParam,
                                                       SqlRun, SqlTag)
    from sqlalchemy import create_engine

    engine = create_engine(uri)
    for first in range(start, stop, batch):
        runs, tags, params, metrics = [], [], [], []
        for i in range(first, min(first + batch, stop)):
            rec, run_id, now = record(i), uuid.uuid4().hex, 1_700_000_000_000 + i
            runs.append(dict(run_uuid=run_id, name=rec.name, source_type="LOCAL", source_name="",
                             entry_point_name="", user_id="bench", status="FINISHED",
                             start_time=now, end_time=now + 1, source_version="",
                             lifecycle_stage="active", artifact_uri="",
                             experiment_id=int(experiment_id)))
            tags += [dict(key=k, value=v, run_uuid=run_id) for k, v in rec.to_tags().items()]
            params += [dict(key=k, value=v, run_uuid=run_id) for k, v in rec.to_params().items()]
            values = [dict(key=k, value=v, timestamp=now, step=0, is_nan=False, run_uuid=run_id)
                      for k, v in rec.to_metrics().items()]
            metrics += values
        with engine.begin() as conn:
            conn.execute(SqlRun.__table__.insert(), runs)
            conn.execute(SqlTag.__table__.insert(), tags)
            conn.execute(SqlParam.__table__.insert(), params)
            conn.execute(SqlMetric.__table__.insert(), metrics)
            conn.execute(SqlLatestMetric.__table__.insert(), metrics)
    engine.dispose()


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def measure(experiment_id: str, runs: range, repeats: int, leaderboard: bool, salt: str,
            offset: int) -> dict[str, float]:
    """Median seconds of a reuse lookup and a supersede (each on other runs among ``runs``, from
    ``offset``), and a leaderboard."""
    from bench.results import runs
    from bench.api import leaderboard as board

    warm = record(runs[-1])  # untimed: connect, check the store, warm a fresh server up
    runs.find_records([experiment_id], [warm.identity])
    warm.identity = hashlib.sha256(f"{salt}warm".encode()).hexdigest()[:32]
    runs.supersede(experiment_id, warm)
    step = len(runs) // repeats
    lookups, supersedes = [], []
    for k in range(repeats):
        wanted = record(runs[k * step + offset])
        seconds, found = timed(runs.find_records, [experiment_id], [wanted.identity])
        assert [r.identity for r in found] == [wanted.identity], found
        lookups.append(seconds)
        newer = record(runs[k * step + offset + 1])  # the same slot, a new identity
        newer.identity = hashlib.sha256(f"{salt}{k}".encode()).hexdigest()[:32]
        seconds, marked = timed(runs.supersede, experiment_id, newer)
        assert len(marked) == 1, marked
        supersedes.append(seconds)
    out = {"reuse lookup": statistics.median(lookups), "supersede": statistics.median(supersedes)}
    if leaderboard:
        seconds, (result, _) = timed(lambda: board([SUITE], log=False))
        assert not result.table.empty
        out["leaderboard"] = seconds
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(folder / "mlflow-server.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{db}",
         "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # as scripts/mlflow-up.sh: no job-execution workers (a dozen processes at startup)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(1)
    stop_server(proc)
    raise SystemExit(f"mlflow server did not start; see {folder / 'mlflow-server.log'}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--leaderboard-max", type=int, default=10000,
                        help="time the leaderboard (which reads every run) up to this size")
    parser.add_argument("--folder", type=Path, help="keep the store here (default: temporary)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="store_scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    os.environ["BENCH_RESULTS"] = str(folder / "results")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    from bench.results.store import ensure_experiment

    experiment_id = ensure_experiment(SUITE)
    proc, server = start_server(db, folder)
    rows: dict[tuple[str, int], dict[str, float]] = {}
    filled = 0
    try:
        for size in sorted(args.sizes):
            seconds, _ = timed(fill, f"sqlite:///{db}", experiment_id, filled, size)
            print(f"filled {size:,} runs (+{size - filled:,} in {seconds:.1f} s)", flush=True)
            before, filled = filled, size
            for offset, (store, uri) in enumerate((("sqlite", f"sqlite:///{db}"),
                                                   ("server", server))):
                os.environ["MLFLOW_TRACKING_URI"] = uri
                rows[store, size] = measure(experiment_id, range(before, size), args.repeats,
                                            size <= args.leaderboard_max, f"{store}{size}",
                                            2 * offset)
                shown = "  ".join(f"{k} {v * 1000:.1f} ms" for k, v in rows[store, size].items())
                print(f"{store:6} {size:>7,} runs: {shown}", flush=True)
    finally:
        stop_server(proc)
    small, large = min(args.sizes), max(args.sizes)
    growth = {s: rows[s, large]["reuse lookup"] / rows[s, small]["reuse lookup"]
              for s in ("sqlite", "server")}
    print(f"reuse lookup growth {large:,}/{small:,} runs: sqlite {growth['sqlite']:.2f}x, "
          f"server {growth['server']:.2f}x (target < 2x)")


if __name__ == "__main__":
    main()
