"""MLflow transport: one experiment per suite, one run per result record.

By default runs go to an embedded SQLite store under the results folder; ``MLFLOW_TRACKING_URI``
(for example a shared ``mlflow server``) takes precedence (``bench.paths``). Experiments are
created once by the driver and their id handed to jobs: concurrent ``set_experiment`` calls lose
runs to the Default experiment (environment.md). What is written, under which names, is
``bench.record``'s business; this module only moves records in and out.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import record as names
from bench.paths import results_dir, tracking_uri
from bench.record import RunRecord

RESULT_SCHEMA = "2"  # bump when the record's names or meaning change


def client():
    """An MlflowClient on ``tracking_uri()`` (creating the SQLite store's folder if needed)."""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def ensure_experiment(name: str) -> str:
    """Id of experiment ``name``, created (with artifacts under results/) if it is new."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (results_dir() / "artifacts").as_uri() if tracking_uri().startswith(
        "sqlite:///") else None
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def experiment_ids(suites: Iterable[str]) -> list[str]:
    mlflow_client = client()
    return [e.experiment_id for s in suites
            if (e := mlflow_client.get_experiment_by_name(s)) is not None]


def code_version() -> str:
    """The package version plus the git commit of the checkout it runs from, when there is one."""
    import bench

    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{bench.__version__}+{sha}" if sha else bench.__version__


def log_record(experiment_id: str, record: RunRecord, artifacts: dict[str, bytes]) -> str:
    """Log one finished result (its record and artifacts); returns the run id.

    The run is created once its result exists (a crashed job leaves no half-logged run), with the
    record's ``start_time`` so the UI shows how long the cell took.
    """
    from mlflow.entities import Metric, Param, RunTag

    mlflow_client = client()
    record.schema, record.code_version = RESULT_SCHEMA, code_version()
    run = mlflow_client.create_run(experiment_id, run_name=record.name,
                                   start_time=int((record.start_time or time.time()) * 1000),
                                   tags=record.to_tags())
    now = int(time.time() * 1000)
    mlflow_client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, now, 0) for k, v in record.to_metrics().items()],
        params=[Param(k, v) for k, v in record.to_params().items()],
        tags=[RunTag(k, v) for k, v in record.to_tags().items()],
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in artifacts.items():
            (Path(tmp) / name).write_bytes(content)
        if artifacts:
            mlflow_client.log_artifacts(run.info.run_id, tmp)
    mlflow_client.set_terminated(run.info.run_id, "FINISHED")
    record.run_id = run.info.run_id
    return run.info.run_id


def find_records(experiment_ids: list[str], identities: Iterable[str] | None = None,
                 include_superseded: bool = False) -> list[RunRecord]:
    """Finished result records of the current schema, newest first; optionally only these
    identities. Superseded records are left out unless asked for."""
    if not experiment_ids:
        return []
    wanted = set(identities) if identities is not None else None
    runs = client().search_runs(experiment_ids, names.result_filter(), max_results=50000,
                                order_by=["attributes.start_time DESC"])
    out = []
    for run in runs:
        rec = RunRecord.from_mlflow(run)
        if rec.schema != RESULT_SCHEMA or (wanted is not None and rec.identity not in wanted):
            continue
        if rec.superseded_by and not include_superseded:
            continue
        rec.reused = True
        out.append(rec)
    return out


def supersede(experiment_id: str, record: RunRecord) -> list[str]:
    """Mark every other finished result in ``record``'s slot (same backbone, task, layer, pool,
    head, seed; another identity) as superseded by it; their run ids. Nothing is deleted."""
    mlflow_client = client()
    marked = []
    for old in find_records([experiment_id]):
        if old.slot == record.slot and old.identity != record.identity:
            for key, value in names.superseded_tags(record.identity).items():
                mlflow_client.set_tag(old.run_id, key, value)
            marked.append(old.run_id)
    return marked


def log_leaderboard(experiment_id: str, tables: dict[str, Any], files: Iterable[Path],
                    figures: Iterable[Path] = ()) -> str:
    """Log (or refresh) the experiment's leaderboard run: tables (name -> DataFrame, shown as
    MLflow tables), files and figures; its run id."""
    mlflow_client = client()
    found = mlflow_client.search_runs([experiment_id], names.leaderboard_filter(), max_results=1)
    if found:
        run_id = found[0].info.run_id
        mlflow_client.update_run(run_id, status="RUNNING")
    else:
        run_id = mlflow_client.create_run(experiment_id, run_name="leaderboard",
                                          tags=names.leaderboard_tags()).info.run_id
    for name, data in tables.items():
        if not found:
            mlflow_client.log_table(run_id, data=data, artifact_file=name)
            continue
        # log_table appends rows to an existing table: a refresh overwrites the file instead
        # (same format as log_table's, so the UI still shows it as a table)
        with tempfile.TemporaryDirectory() as tmp:
            data.to_json(Path(tmp) / name, orient="split", index=False, date_format="iso")
            mlflow_client.log_artifact(run_id, str(Path(tmp) / name))
    for path in files:
        mlflow_client.log_artifact(run_id, str(path))
    for path in figures:
        mlflow_client.log_artifact(run_id, str(path), "figures")
    mlflow_client.set_terminated(run_id, "FINISHED")
    return run_id
