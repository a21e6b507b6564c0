"""The tracking store's client: where results live, reached and checked once per process.

By default runs go to an embedded SQLite store under the results folder; ``MLFLOW_TRACKING_URI``
(for example a shared ``mlflow server``) takes precedence (``bench.paths``). Experiments are
created once by the driver and their id handed to jobs: concurrent ``set_experiment`` calls lose
runs to the Default experiment (environment.md). What is written, under which names, is
``bench.results.record``'s business; the modules beside this one move records in and out:
``runs`` (results), ``claims`` (the cell lock), ``outbox`` (results kept on disk), ``artifacts``,
``publish`` (leaderboard and report runs) and ``matrices`` (similarity runs).

Lookups are tag-equality searches (a result's identity, a slot's key), read page by page: their
cost follows the runs they match, not the size of the store, and nothing is silently capped.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.locks import file_lock
from bench.paths import artifacts_dir, tracking_uri
from bench.results import record as names

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
    """Id of experiment ``name``, created (with artifacts under results/) if it is new; either
    way it opens on its results in the MLflow UI (``show_results``)."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        location = artifacts_dir().as_uri() if tracking_uri().startswith(
            "sqlite:///") else None
        try:  # a new experiment holds no run logged before the slot tag
            created = mlflow_client.create_experiment(name, artifact_location=location,
                                                      tags={names.SLOTS_TAGGED: "1"})
        except Exception:  # created meanwhile by another process
            found = mlflow_client.get_experiment_by_name(name)
            if found is None:
                raise
        else:
            found = mlflow_client.get_experiment(created)
    show_results(mlflow_client, found)
    return found.experiment_id


def show_results(mlflow_client: Any, experiment: Any) -> None:
    """Give ``experiment`` the tags that open it on its runs table with each result's headline
    and interval in view (``record.experiment_ui_tags``), and a description linking that view
    where it has none; once (what is there already is left as it is)."""
    import time

    from bench.metrics import names as metric_names

    wanted = names.experiment_ui_tags(metric_names(), int(time.time() * 1000))
    wanted[names.NOTE] = names.experiment_note(experiment.experiment_id)
    missing = {key: value for key, value in wanted.items() if key not in experiment.tags}
    if missing:
        with store_lock():
            for key, value in missing.items():
                mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)


def experiment_ids(suites: Iterable[str]) -> list[str]:
    mlflow_client = client()
    return [e.experiment_id for s in suites
            if (e := mlflow_client.get_experiment_by_name(s)) is not None]


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
