"""MLflow transport: one experiment per suite, one run per result record.

By default runs go to an embedded SQLite store under the results folder; ``MLFLOW_TRACKING_URI``
(for example a shared ``mlflow server``) takes precedence (``bench.paths``). Experiments are
created once by the driver and their id handed to jobs: concurrent ``set_experiment`` calls lose
runs to the Default experiment (environment.md). What is written, under which names, is
``bench.results.record``'s business; this module only moves records in and out.

Lookups are tag-equality searches (a result's identity, a slot's key), read page by page: their
cost follows the runs they match, not the size of the store, and nothing is silently capped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import record as names
from bench.errors import BenchError
from bench.locks import file_lock
from bench.paths import artifacts_dir, pending_dir, tracking_uri
from bench.results.record import RunRecord

PAGE_SIZE = 1000  # runs per search request; every page is read
CHECK_TIMEOUT_S = 5  # an unreachable tracking server fails in seconds, not minutes
_CHECKED: set[str] = set()


class TrackingError(BenchError):
    """The tracking store cannot be reached, read or written; the message names it."""


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    """Serialise writes to a SQLite store across processes (its first-time schema setup too);
    a server serialises its own."""
    path = _sqlite_path(tracking_uri())
    if path is None:
        yield
        return
    with file_lock(path.with_name(path.name + ".lock")):
        yield


def client():
    """An MlflowClient on ``tracking_uri()``, the store checked once per process."""
    import logging

    # MLflow retries an unreachable server for minutes by default; fail fast, clearly, instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow
    from mlflow.tracking import MlflowClient

    # After the import: importing mlflow sets its logger to INFO ("Creating initial MLflow
    # database tables" on stderr, beside a one-line error).
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri not in _CHECKED:
        _check_store(uri, MlflowClient)
        _CHECKED.add(uri)
    return MlflowClient(uri)


def _check_store(uri: str, make_client) -> None:
    """Reach the store before any work: a server's /health, a SQLite file's schema (created or
    migrated by the first client, under the store lock: concurrent first runs otherwise break it)."""
    path = _sqlite_path(uri)
    if path is None:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=CHECK_TIMEOUT_S):
                return
        except (OSError, urllib.error.URLError) as e:
            raise TrackingError(
                f"tracking server {uri} is unreachable ({e}); start it (scripts/mlflow-up.sh) or "
                "point MLFLOW_TRACKING_URI at a running one") from e
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with store_lock():
            make_client(uri).search_experiments(max_results=1)
            index_tags(path)
    except PermissionError as e:
        raise TrackingError(f"cannot write the tracking store at {path} ({e.strerror}): make "
                            "the folder writable or set BENCH_RESULTS / MLFLOW_TRACKING_URI") from e
    except Exception as e:
        if type(e).__module__.startswith(("sqlalchemy", "sqlite3", "mlflow")):
            raise TrackingError(
                f"the tracking store {path} cannot be opened as an MLflow SQLite database "
                f"({type(e).__name__}); if it is truncated or corrupt, move it aside (runs in it "
                "are lost to bench, cached features are not) or set MLFLOW_TRACKING_URI") from e
        raise


def index_tags(path: Path) -> None:
    """Index an MLflow SQLite store's tags by value (MLflow's own index is by run): a lookup by
    identity or slot tag then reads the runs it matches, not every run's tag. Idempotent."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
        db.execute("CREATE INDEX IF NOT EXISTS bench_tags_key_value ON tags (key, value)")
        db.commit()


def ensure_experiment(name: str) -> str:
    """Id of experiment ``name``, created (with artifacts under results/) if it is new."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = artifacts_dir().as_uri() if tracking_uri().startswith(
        "sqlite:///") else None
    try:  # a new experiment holds no run logged before the slot tag
        return mlflow_client.create_experiment(name, artifact_location=location,
                                               tags={names.SLOTS_TAGGED: "1"})
    except Exception:  # created meanwhile by another process
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def experiment_ids(suites: Iterable[str]) -> list[str]:
    mlflow_client = client()
    return [e.experiment_id for s in suites
            if (e := mlflow_client.get_experiment_by_name(s)) is not None]


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
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in artifacts.items():
            (Path(tmp) / name).write_bytes(content)
        if artifacts:
            mlflow_client.log_artifacts(run.info.run_id, tmp)
    mlflow_client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def search(experiment_ids: list[str], filter_string: str, mlflow_client: Any = None
           ) -> Iterator[Any]:
    """Every run matching ``filter_string``, newest first, read ``PAGE_SIZE`` at a time."""
    mlflow_client = mlflow_client or client()
    token = None
    while True:
        page = mlflow_client.search_runs(experiment_ids, filter_string, max_results=PAGE_SIZE,
                                         order_by=["attributes.start_time DESC"],
                                         page_token=token)
        yield from page
        token = page.token
        if not token:
            return


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
    for kind in (names.RESULT, SIMILARITY):
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
        run = client().get_run(run_id)
    except Exception as e:
        raise BenchError(f"no MLflow run {run_id!r} at this tracking URI ({e.__class__.__name__})"
                         "; run ids are listed in the MLflow UI and printed by bench run") from e
    if run.data.tags.get(names.KIND) != names.RESULT:
        raise BenchError(f"run {run_id} is not a bench result (a leaderboard run?)")
    return RunRecord.from_mlflow(run)


def load_predictions(run_id: str) -> Any:
    """The run's per-image test predictions (``bench.stats.Predictions``), from its artifact."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from bench.stats import Predictions

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client().download_artifacts(run_id, names.PREDICTIONS, tmp)
        except Exception as e:
            raise BenchError(f"run {run_id} has no {names.PREDICTIONS} artifact (logged before "
                             "bench stored predictions?); re-run it with --force") from e
        try:
            return Predictions.load(path)
        except BenchError as e:
            raise BenchError(f"the stored predictions of run {run_id} cannot be read: "
                             f"{str(e).replace(str(path), names.PREDICTIONS)}; re-run it with "
                             "--force") from e


LOCK_HEARTBEAT_S = 10.0  # a claim's holder shows it is alive this often
LOCK_STALE_S = 90.0  # a claim whose heartbeat has not moved for this long: its holder died
LOCK_POLL_S = 1.0
LOCK_REPORT_S = 30.0  # a waiting run says so again this often


@contextlib.contextmanager
def cell_lock(experiment_id: str, identities: list[str],
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
              ) -> Iterator[None]:
    """Hold the result cells ``identities`` in the tracking store, where their results live, so
    identical runs anywhere (other results folders, caches or machines) compute them once.

    A claim is a run of kind ``lock`` created, then compared with the live claims of the same
    cells: a process that finds only its own holds the lock; one that finds another withdraws
    (deletes) its claim and waits. Of two claims made at once, whichever looks last sees the
    other's, so at most one holds. The holder updates its claim's heartbeat every
    ``LOCK_HEARTBEAT_S``; a claim whose heartbeat has not moved for ``LOCK_STALE_S`` (by the
    waiter's clock: clocks of machines may disagree) belonged to a process that died, and is
    marked KILLED. A waiting run says whose claim it waits for and for how long, every
    ``LOCK_REPORT_S``. The claim is deleted on release; if the work inside raised, it is kept,
    ended FAILED (KILLED for an interrupt) with the error as ``bench.error``.
    """
    import random
    import socket
    import threading

    mlflow_client = client()
    key = names.lock_key(identities)
    owner = f"{socket.gethostname()} pid {os.getpid()}"
    seen: dict[str, tuple[str, float]] = {}  # claim run id -> (heartbeat, when it last moved)
    started = time.time()
    reported = 0.0

    def live_claims(mine: str | None) -> list[Any]:
        live = []
        for run in search([experiment_id], names.lock_filter(key), mlflow_client):
            run_id, beat = run.info.run_id, run.data.tags.get(names.HEARTBEAT, "")
            if run_id == mine:
                continue
            if seen.get(run_id, ("", 0.0))[0] != beat:
                seen[run_id] = (beat, time.time())
            if time.time() - seen[run_id][1] > LOCK_STALE_S:
                with store_lock():
                    mlflow_client.set_terminated(run_id, "KILLED")
                continue
            live.append(run)
        return live

    while True:
        others = live_claims(None)
        if not others:
            with store_lock():
                mine = mlflow_client.create_run(experiment_id, run_name=f"lock {key[:8]}",
                                                tags=names.lock_tags(key, owner)).info.run_id
            others = live_claims(mine)
            if not others:
                break
            with store_lock():
                mlflow_client.delete_run(mine)
        now = time.time()
        if now - reported >= LOCK_REPORT_S:
            holder = others[0]
            say(f"waiting for {len(identities)} result cell(s) that another run is computing "
                f"({holder.data.tags.get(names.LOCK_OWNER, '?')}, claim {holder.info.run_id}, "
                f"for {now - holder.info.start_time / 1000:.0f} s); waited {now - started:.0f} s")
            reported = now
        time.sleep(LOCK_POLL_S * random.uniform(0.5, 1.5))
    if reported:
        say(f"the result cells are ours after {time.time() - started:.0f} s of waiting")

    stop = threading.Event()

    def heartbeat() -> None:
        beats = 0
        while not stop.wait(LOCK_HEARTBEAT_S):
            beats += 1
            try:
                with store_lock():
                    mlflow_client.set_tag(mine, names.HEARTBEAT, str(beats))
            except Exception:  # a missed beat; a waiter allows LOCK_STALE_S
                pass

    beating = threading.Thread(target=heartbeat, name="bench-cell-lock", daemon=True)
    beating.start()
    error: BaseException | None = None
    try:
        yield
    except BaseException as e:
        error = e
        raise
    finally:
        stop.set()
        beating.join()
        try:
            with store_lock():
                if error is None:
                    mlflow_client.delete_run(mine)
                else:  # kept, ended: what `bench report` can tell of a cell that failed
                    first = (str(error).splitlines() or [""])[0]
                    mlflow_client.set_tag(mine, names.ERROR,
                                          f"{type(error).__name__}: {first}"[:names.MAX_TAG])
                    mlflow_client.set_terminated(mine, "FAILED" if isinstance(error, Exception)
                                                 else "KILLED")
        except Exception:  # an unreachable store: the claim goes stale, waiters take over
            pass


def save_pending(suite: str, record: RunRecord, artifacts: dict[str, bytes]) -> Path:
    """Keep a result that could not be logged on disk, for ``bench sync``; its folder.

    Written into a temporary folder renamed into place once complete, so a full disk or a kill
    never leaves a folder that looks like a result; on failure the temporary folder is removed
    and a ``TrackingError`` says why in one line.
    """
    import errno

    from bench.locks import temp_name

    folder = pending_dir() / record.identity
    tmp = temp_name(folder)
    try:
        (tmp / "artifacts").mkdir(parents=True)
        for name, content in artifacts.items():
            (tmp / "artifacts" / name).write_bytes(content)
        (tmp / "suite.txt").write_text(suite)
        (tmp / "record.json").write_text(names.to_json(record))
        if folder.exists():  # an older copy of the same result
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = ("no space left on device" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                  else e.strerror or str(e))
        raise TrackingError(f"cannot keep the result in {pending_dir()}: {reason}; free space "
                            "or set BENCH_RESULTS to a writable disk") from e
    return folder


def remove_incomplete_pending() -> list[Path]:
    """Remove kept results that are not complete (no readable record.json: written by a bench
    that died or ran out of space mid-write; temporary folders whose writer is gone); their
    paths. Temporary folders of writers still running are left alone."""
    from bench.locks import stale_temp

    removed = []
    for folder in sorted(pending_dir().glob("*")) if pending_dir().is_dir() else []:
        if folder.name.startswith("."):
            incomplete = folder.name.endswith(".tmp") and stale_temp(folder)
        else:
            try:
                names.from_json((folder / "record.json").read_text())
                incomplete = False
            except (OSError, ValueError, TypeError):
                incomplete = True
        if incomplete:
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink()
            removed.append(folder)
    return removed


def sync_pending() -> list[RunRecord]:
    """Log every result kept on disk (``save_pending``) and remove it; the records logged."""
    logged = []
    for folder in sorted(pending_dir().glob("[!.]*/record.json")):
        folder = folder.parent
        record = names.from_json((folder / "record.json").read_text())
        experiment_id = ensure_experiment((folder / "suite.txt").read_text())
        if not find_records([experiment_id], [record.identity]):
            artifacts = {p.name: p.read_bytes() for p in (folder / "artifacts").iterdir()}
            record.run_id = log_record(experiment_id, record, artifacts)
            supersede(experiment_id, record)
            logged.append(record)
        shutil.rmtree(folder)
    return logged


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


# --- similarity matrices (bench.run.similarity_run): one run per matrix, same identity rules ------
SIMILARITY = "similarity"  # the bench.kind of a similarity matrix's run


class SimilarityRecord(RunRecord):
    """A similarity matrix logged like a result, under its own kind (leaderboards never see it)."""

    def to_tags(self) -> dict[str, str]:
        return super().to_tags() | {names.KIND: SIMILARITY}


def find_similarity(experiment_id: str, identity: str | None = None) -> list[RunRecord]:
    """Finished, not superseded similarity runs of the current schema (of one identity), newest
    first."""
    filter_string = (names.identity_filter(identity) if identity is not None else
                     f"tags.`{names.KIND}` = '{SIMILARITY}' and attributes.status = 'FINISHED'")
    found = [RunRecord.from_mlflow(run) for run in search([experiment_id], filter_string)
             if run.data.tags.get(names.KIND) == SIMILARITY]
    return [r for r in found if r.schema == names.RESULT_SCHEMA and not r.superseded_by]


def supersede_similarity(experiment_id: str, record: RunRecord) -> list[str]:
    """Mark older similarity runs of ``record``'s slot (another identity) superseded by it."""
    return supersede(experiment_id, record, SIMILARITY)


# --- failed cells and paper reports (bench.study) -----------------------------------------------
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


def ended_claims(experiment_ids: list[str], jobs: list[list[str]]) -> dict[str, UnfinishedRun]:
    """For each job's cells (their identities), the newest claim on them that ended without
    their results (``cell_lock``): identity -> that claim, with its error."""
    out: dict[str, UnfinishedRun] = {}
    for identities in jobs if experiment_ids else ():
        for run in search(experiment_ids, names.ended_lock_filter(names.lock_key(identities))):
            ended = UnfinishedRun(run.info.run_id, run.info.status, run.info.start_time / 1000,
                                  run.data.tags.get(names.ERROR, ""))
            out |= {identity: ended for identity in identities}
            break
    return out


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
