"""Runs that publish a document: the experiment's leaderboard (tables, files, figures) and a
paper's report folder, each refreshed or superseded, never deleted."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import record as names
from bench.results.store import client, search, store_lock


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


@dataclass
class LoggedReport:
    run_id: str
    reused: bool  # a finished report with the same content was there already
    superseded: list[str]  # run ids of older reports of the same paper and tables


def log_report(experiment_id: str, paper: str, tables: list[str], all_tables: bool,
               content: str, note: str, folder: Path) -> LoggedReport:
    """Log a paper's report folder as one run (artifacts: the folder), unless a finished report of
    the same paper and tables says the same (``content`` digests it): then that run stays. Older
    reports of the same paper and tables are marked superseded by the new one, never deleted."""
    mlflow_client = client()
    with store_lock():
        found = list(search([experiment_id], names.report_filter(paper, tables), mlflow_client))
        for run in found:
            if run.data.tags.get(names.IDENTITY) == content:
                return LoggedReport(run.info.run_id, True, [])
        run_id = mlflow_client.create_run(
            experiment_id, run_name=names.report_name(paper, tables, all_tables),
            tags=names.report_tags(paper, tables, content, note)).info.run_id
    mlflow_client.log_artifacts(run_id, str(folder))
    with store_lock():
        mlflow_client.set_terminated(run_id, "FINISHED")
        for run in found:
            for key, value in names.superseded_tags(content).items():
                mlflow_client.set_tag(run.info.run_id, key, value)
    return LoggedReport(run_id, False, [run.info.run_id for run in found])
