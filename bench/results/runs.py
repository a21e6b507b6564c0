"""Result runs in the tracking store: logged once finished, found by identity or slot, superseded.

A result is logged as one run when it exists (``log_record``: a crashed job leaves no half-logged
run); lookups read finished records of the current schema (``find_records``, ``find_slot_records``)
and the runs of cells that did not finish (``unfinished_runs``); ``supersede`` marks the older
results of a slot, never deleting one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError
from bench.results import record as names
from bench.results.artifacts import log_files
from bench.results.record import RunRecord
from bench.results.store import client, reader, search, store_lock


def log_record(experiment_id: str, record: RunRecord, artifacts: dict[str, bytes]) -> str:
    """Log one finished result (its record and artifacts); returns the run id.

    The run is created once its result exists (a crashed job leaves no half-logged run), with the
    record's ``start_time`` so the UI shows how long the cell took.
    """
    from mlflow.entities import Metric, Param, RunTag

    mlflow_client = client()
    with store_lock():
        return _log_record(mlflow_client, experiment_id, record, artifacts, Metric, Param, RunTag)


def _log_record(mlflow_client, experiment_id, record, artifacts, Metric, Param, RunTag) -> str:
    # A run of this identity left RUNNING had its process killed mid-logging (callers hold the
    # cell's lock, so nobody else is logging it): mark it KILLED, never leave it RUNNING.
    for stale in mlflow_client.search_runs([experiment_id], names.running_filter(record.identity)):
        mlflow_client.set_terminated(stale.info.run_id, "KILLED")
    run = mlflow_client.create_run(experiment_id, run_name=record.label,
                                   start_time=int((record.start_time or time.time()) * 1000),
                                   tags=record.to_tags())
    now = int(time.time() * 1000)
    mlflow_client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, now, 0) for k, v in record.to_metrics().items()],
        params=[Param(k, v) for k, v in record.to_params().items()],
        tags=[RunTag(k, v) for k, v in record.to_tags().items()],
    )
    log_files(mlflow_client, run.info.run_id, artifacts)
    mlflow_client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def find_records(experiment_ids: list[str], identities: Iterable[str] | None = None,
                 include_superseded: bool = False) -> list[RunRecord]:
    """Finished result records of the current schema, newest first; optionally only these
    identities (one tag lookup each). Superseded records are left out unless asked for."""
    if not experiment_ids:
        return []
    if identities is None:
        filters = [names.result_filter()]
    else:
        filters = [names.identity_filter(i, include_superseded) for i in dict.fromkeys(identities)]
    out = []
    for filter_string in filters:
        for run in search(experiment_ids, filter_string):
            if run.data.tags.get(names.KIND) != names.RESULT:
                continue
            rec = RunRecord.from_mlflow(run)
            if rec.schema != names.RESULT_SCHEMA or (rec.superseded_by and not include_superseded):
                continue
            rec.reused = True
            out.append(rec)
    return sorted(out, key=lambda r: -(r.start_time or 0)) if len(filters) > 1 else out


def supersede(experiment_id: str, record: RunRecord, kind: str = names.RESULT) -> list[str]:
    """Mark every other finished run of ``kind`` in ``record``'s slot (same backbone, task, layer,
    pool, head, seed, shots) with the same chosen settings (``RunRecord.slot_key`` digests both)
    and another identity (a changed default, code, weights or data) as superseded by it; their
    run ids. Runs that chose other settings are alternatives, left for the leaderboard to choose
    among on validation. Nothing is deleted."""
    mlflow_client = client()
    marked = []
    with store_lock():
        _tag_slots(mlflow_client, experiment_id)
        # read every page before tagging: a tagged run leaves the filter and shifts the pages
        for run in list(search([experiment_id], names.slot_filter(record.slot_key),
                               mlflow_client)):
            tags = run.data.tags
            if tags.get(names.KIND) == kind and tags.get(names.IDENTITY) != record.identity:
                for key, value in names.superseded_tags(record.identity).items():
                    mlflow_client.set_tag(run.info.run_id, key, value)
                marked.append(run.info.run_id)
    return marked


def _tag_slots(mlflow_client: Any, experiment_id: str) -> None:
    """Give runs logged before the slot tag existed their slot tag, once per experiment, so a
    supersede is one tag lookup for them too."""
    if mlflow_client.get_experiment(experiment_id).tags.get(names.SLOTS_TAGGED):
        return
    for kind in (names.RESULT, names.SIMILARITY):
        for run in list(search([experiment_id], names.untagged_slot_filter(kind), mlflow_client)):
            mlflow_client.set_tag(run.info.run_id, names.SLOT,
                                  RunRecord.from_mlflow(run).slot_key)
    mlflow_client.set_experiment_tag(experiment_id, names.SLOTS_TAGGED, "1")


def add_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Log more metrics on a finished run (e.g. a seed aggregate computed after it)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client().log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def load_record(run_id: str) -> RunRecord:
    """The result record of one MLflow run id."""
    try:
        run = reader().get_run(run_id)
    except Exception as e:
        raise BenchError(f"no MLflow run {run_id!r} at this tracking URI ({e.__class__.__name__})"
                         "; run ids are listed in the MLflow UI and printed by bench run") from e
    if run.data.tags.get(names.KIND) != names.RESULT:
        raise BenchError(f"run {run_id} is not a bench result (a leaderboard run?)")
    return RunRecord.from_mlflow(run)


@dataclass
class UnfinishedRun:
    """A result run that did not finish, or a job's claim that ended without its results: what
    tracking can tell of a cell that failed."""

    run_id: str
    status: str  # FAILED | KILLED | RUNNING
    start_time: float  # epoch seconds
    error: str = ""  # what the job raised, when known


def unfinished_runs(experiment_ids: list[str], identities: Iterable[str]
                    ) -> dict[str, UnfinishedRun]:
    """The newest unfinished result run of each identity that has one."""
    out: dict[str, UnfinishedRun] = {}
    for identity in dict.fromkeys(identities) if experiment_ids else ():
        for run in search(experiment_ids, names.unfinished_filter(identity)):
            if run.data.tags.get(names.KIND) == names.RESULT:
                out[identity] = UnfinishedRun(run.info.run_id, run.info.status,
                                              run.info.start_time / 1000)
                break
    return out


def find_slot_records(experiment_ids: list[str], slot_keys: Iterable[str]
                      ) -> dict[str, RunRecord]:
    """The newest finished, not superseded result of each slot key (``RunRecord.slot_key``)."""
    out: dict[str, RunRecord] = {}
    for key in dict.fromkeys(slot_keys) if experiment_ids else ():
        for run in search(experiment_ids, names.slot_filter(key)):
            rec = RunRecord.from_mlflow(run)
            if run.data.tags.get(names.KIND) == names.RESULT and rec.schema == names.RESULT_SCHEMA:
                rec.reused = True
                out[key] = rec
                break
    return out
