"""MLflow tracking: one experiment per suite, one run per (backbone, task, protocol).

By default runs go to an embedded SQLite store under the results folder; ``MLFLOW_TRACKING_URI``
(for example a shared ``mlflow server``) takes precedence. Experiments are created once by the
driver and their id handed to jobs: concurrent ``set_experiment`` calls lose runs to the Default
experiment (environment.md).

Result schema (tag ``bench.schema``), so leaderboards can read runs from any bench version:
params = every field of the spec, flattened; metrics = test_top1, test_top5,
test_mean_per_class, val_top1, val_mean_per_class (percent); tags = bench.kind, bench.version,
bench.git, bench.cache_key, bench.weights_sha256, bench.backbone, bench.task.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

RESULT_SCHEMA = "1"


def tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from bench.cache import results_dir

    return f"sqlite:///{results_dir() / 'mlflow.db'}"


def _client():
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
    client = _client()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:///"):
        from bench.cache import results_dir

        location = (results_dir() / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def code_version() -> str:
    import bench

    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{bench.__version__}+{sha}" if sha else bench.__version__


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        out[prefix] = text[:6000]
    return out


def log_run(
    experiment_id: str,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: dict[str, bytes],
    started: float | None = None,
) -> str:
    """Log one finished run; returns its id. Artifacts are (file name -> content).

    The run is created once its result exists (a crashed job leaves no half-logged run), with
    ``started`` (epoch seconds) as its start time so the UI shows how long the cell took.
    """
    import tempfile
    import time

    client = _client()
    run = client.create_run(experiment_id, run_name=run_name,
                            start_time=int((started or time.time()) * 1000),
                            tags={"bench.schema": RESULT_SCHEMA, "bench.version": code_version(),
                                  **tags})
    from mlflow.entities import Metric, Param, RunTag

    flat = flatten("", params, {})
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in flat.items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in artifacts.items():
            (Path(tmp) / name).write_bytes(content)
        if artifacts:
            client.log_artifacts(run.info.run_id, tmp)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def find_runs(experiment_names: list[str], filter_string: str = "") -> Any:
    """Finished bench result runs as a pandas DataFrame (mlflow.search_runs)."""
    import mlflow

    _client()
    ids = [e.experiment_id for n in experiment_names
           if (e := mlflow.get_experiment_by_name(n)) is not None]
    if not ids:
        import pandas as pd

        return pd.DataFrame()
    query = "tags.`bench.kind` = 'result' and attributes.status = 'FINISHED'"
    if filter_string:
        query += f" and {filter_string}"
    return mlflow.search_runs(experiment_ids=ids, filter_string=query, max_results=50000)


def finished_cells(experiment_id: str, cell_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Cells among ``cell_ids`` that already have a finished result run: id -> its metrics."""
    if not cell_ids:
        return {}
    client = _client()
    wanted = set(cell_ids)
    runs = client.search_runs(  # tags cannot be matched with IN: filter here
        [experiment_id], "tags.`bench.kind` = 'result' and attributes.status = 'FINISHED'",
        max_results=50000)
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        cell = run.data.tags.get("bench.cell")
        if cell not in wanted:
            continue
        out.setdefault(cell, {"run_id": run.info.run_id, "run_name": run.info.run_name,
                              "layer": run.data.params.get("layer"),
                              "pool": run.data.params.get("pool"),
                              "best": {k: float(run.data.params.get(f"best.{k}", "nan"))
                                       for k in ("lr", "weight_decay", "epochs")},
                              "skipped": int(run.data.tags.get("bench.skipped_count", 0)),
                              "reused": True, **run.data.metrics})
    return out
