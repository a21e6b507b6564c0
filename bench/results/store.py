"""The tracking store's client: where results live, reached and checked once per process.

By default runs go to an embedded SQLite store under the results folder; ``MLFLOW_TRACKING_URI``
(for example a shared ``mlflow server``) takes precedence (``bench.paths``). Experiments are
created once by the driver and their id handed to jobs: concurrent ``set_experiment`` calls lose
runs to the Default experiment. What is written, under which names, is
``bench.results.record``'s business; the modules beside this one move records in and out:
``runs`` (results), ``claims`` (the cell lock), ``outbox`` (results kept on disk), ``artifacts``,
``publish`` (leaderboard and report runs) and ``matrices`` (similarity runs).

Lookups are tag-equality searches (a result's identity, a slot's key), read page by page: their
cost follows the runs they match, not the size of the store, and nothing is silently capped.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
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
    store = reader()
    return [e.experiment_id for s in suites if (e := store.get_experiment_by_name(s)) is not None]


_READERS: dict[str, Any] = {}


def reader() -> Any:
    """What reads the store (lookups; writes use ``client``): bench's own reader where it has one
    for ``tracking_uri()`` (``bench.results.reader``: no MLflow import), MLflow's client for
    whatever that reader does not answer. One per store and process."""
    uri = tracking_uri()
    reads = _READERS.get(uri)
    if reads is None or reads.light is None:  # (a SQLite store may exist since)
        reads = _READERS[uri] = _Reads(_light_reader(uri))
    return reads


def _light_reader(uri: str) -> Any:
    """bench's reader of ``uri``, or None (MLflow's client reads): a server without TLS
    settings (checked reachable first), or an existing SQLite store of a known schema."""
    from bench.paths import tracking_http
    from bench.results import reader as light

    path = _sqlite_path(uri)
    if path is not None:
        try:
            return light.SqliteReader(path) if path.is_file() else None
        except (light.Unsupported, sqlite3.Error):  # MLflow's client migrates, or names it
            return None
    settings = tracking_http()
    if not uri.startswith(("http://", "https://")) or {
            "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
            "MLFLOW_TRACKING_CLIENT_CERT_PATH"} & set(settings):
        return None
    if uri not in _CHECKED:
        _check_store(uri, None)
        _CHECKED.add(uri)
    headers = {}
    if "MLFLOW_TRACKING_TOKEN" in settings:
        headers["Authorization"] = f"Bearer {settings['MLFLOW_TRACKING_TOKEN']}"
    elif "MLFLOW_TRACKING_USERNAME" in settings:
        pair = f"{settings['MLFLOW_TRACKING_USERNAME']}:{settings.get('MLFLOW_TRACKING_PASSWORD', '')}"
        headers["Authorization"] = f"Basic {base64.b64encode(pair.encode()).decode()}"

    def failed(e: Exception) -> TrackingError:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        return TrackingError(f"the tracking server {uri} failed ({type(e).__name__}: {first}); "
                             "check the server and its log, or set MLFLOW_TRACKING_URI to one "
                             "that works")

    timeout = float(settings.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 30))
    return light.RestReader(uri, headers, timeout, failed)


class _Reads:
    """The light reader's answer, else (``Unsupported``, or no light reader) MLflow's client's."""

    def __init__(self, light: Any):
        self.light = light

    def __getattr__(self, name: str) -> Callable[..., Any]:
        from bench.results.reader import Unsupported

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.light is not None:
                try:
                    return getattr(self.light, name)(*args, **kwargs)
                except Unsupported:
                    pass
            return getattr(client(), name)(*args, **kwargs)

        return call


def search(experiment_ids: list[str], filter_string: str, mlflow_client: Any = None
           ) -> Iterator[Any]:
    """Every run matching ``filter_string``, newest first, read ``PAGE_SIZE`` at a time (by
    ``mlflow_client`` when given: a writer reading what it writes, else ``reader()``)."""
    mlflow_client = mlflow_client or reader()
    token = None
    while True:
        page = mlflow_client.search_runs(experiment_ids, filter_string, max_results=PAGE_SIZE,
                                         order_by=["attributes.start_time DESC"],
                                         page_token=token)
        yield from page
        token = page.token
        if not token:
            return
