"""Reading the tracking store without MLflow's client: what lookups and read-only commands need.

Importing MLflow and setting up its client takes seconds (its package pulls in its GenAI stack,
pandas and SQLAlchemy's store), ten or more on a loaded login node, while ``bench runs`` needs a
few rows. A lookup needs none of it:

- an MLflow server (``http(s)://``) answers the same searches over its REST API, filtered by the
  server itself (token or basic authentication from MLflow's own variables);
- a SQLite store whose schema revision bench knows (``KNOWN_SCHEMAS``: MLflow's alembic
  revisions) is read with SQL over MLflow's tables, with the filters bench writes
  (``bench.results.record``: tag equality, a missing tag, the run status), MLflow's order (start
  time descending, then run id) and its paging; tests/test_store_reads.py checks every filter
  against MLflow's own client on the same store.

Anything else (another scheme, an unknown schema revision or filter, TLS settings, an artifact
not on this file system or the server) goes through MLflow's client, as before (``fallback``).
Writes always do. The objects returned have the attributes bench reads of MLflow's (``run.info``,
``run.data``, ``experiment.tags``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# MLflow's SQLite schema revisions (alembic heads) whose tables bench reads directly: the head of
# MLflow 3.17. A store at another revision is read through MLflow's client.
KNOWN_SCHEMAS = {"dc11669786a5"}
_CONDITION = re.compile(r"(?:tags\.`(?P<tag>[^`]+)` (?:(?P<op>=) '(?P<value>[^']*)'|IS NULL)"
                        r"|attributes\.status (?P<status_op>!?=) '(?P<status>[A-Z]+)')$")
ORDER = ["attributes.start_time DESC"]  # the one order bench asks for (MLflow's natural one)


class Unsupported(Exception):
    """A request this reader does not answer; MLflow's client does."""


@dataclass
class Experiment:
    experiment_id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RunInfo:
    run_id: str
    run_name: str
    status: str
    start_time: int  # milliseconds, as MLflow's
    artifact_uri: str


@dataclass
class RunData:
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass
class Run:
    info: RunInfo
    data: RunData


class Page(list):
    """A page of runs and the token of the next (None at the end), as MLflow's ``PagedList``."""

    def __init__(self, runs: Iterable[Run], token: str | None):
        super().__init__(runs)
        self.token = token


def parse_filter(filter_string: str) -> list[dict[str, str]]:
    """The conditions of a filter bench writes, or ``Unsupported``."""
    conditions = []
    for part in filter_string.split(" and ") if filter_string.strip() else []:
        match = _CONDITION.match(part.strip())
        if match is None:
            raise Unsupported(f"filter condition {part!r}")
        conditions.append({k: v for k, v in match.groupdict().items() if v is not None})
    return conditions


def _offset(token: str | None) -> int:
    return int(base64.b64decode(token).decode()) if token else 0


def _token(offset: int) -> str:
    return base64.b64encode(str(offset).encode()).decode()


class SqliteReader:
    """Lookups in an MLflow SQLite store, read-only (nothing is created or migrated), one
    connection per call (any thread, any forked process)."""

    def __init__(self, path: Path):
        self.path = path
        with self._db() as db:
            revisions = {row[0] for row in db.execute("SELECT version_num FROM alembic_version")}
        if not revisions or revisions - KNOWN_SCHEMAS:
            raise Unsupported(f"schema revision {sorted(revisions)} of {path}")

    def _db(self) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                                  timeout=60))

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        """The experiment of that name, deleted or not (as MLflow's)."""
        with self._db() as db:
            rows = db.execute("SELECT experiment_id, name FROM experiments WHERE name = ?",
                              (name,)).fetchall()
            if len(rows) > 1:
                raise Unsupported(f"{len(rows)} experiments named {name!r} (workspaces)")
            return _experiment_row(db, *rows[0]) if rows else None

    def search_experiments(self) -> list[Experiment]:
        """Every active experiment."""
        with self._db() as db:
            rows = db.execute("SELECT experiment_id, name FROM experiments "
                              "WHERE lifecycle_stage = 'active'").fetchall()
            return [_experiment_row(db, *row) for row in rows]

    def search_runs(self, experiment_ids: list[str], filter_string: str = "",
                    max_results: int = 1000, order_by: list[str] | None = None,
                    page_token: str | None = None) -> Page:
        """Active runs of the experiments matching the filter, in MLflow's order and pages."""
        if order_by not in (None, [], ORDER):
            raise Unsupported(f"order {order_by}")
        where = [f"experiment_id IN ({', '.join('?' * len(experiment_ids))})",
                 "lifecycle_stage = 'active'"]
        args: list[Any] = [int(i) for i in experiment_ids]
        for condition in parse_filter(filter_string):
            if "status" in condition:
                where.append(f"status {condition['status_op']} ?")
                args.append(condition["status"])
            elif "op" in condition:  # through the (key, value) index: the matches, not a scan
                where.append("run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?)")
                args += [condition["tag"], condition["value"]]
            else:
                where.append("run_uuid NOT IN (SELECT run_uuid FROM tags WHERE key = ?)")
                args.append(condition["tag"])
        offset = _offset(page_token)
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_RUN} FROM runs WHERE {' AND '.join(where)} "
                "ORDER BY start_time DESC, run_uuid LIMIT ? OFFSET ?",
                [*args, max_results + 1, offset]).fetchall()
            more = len(rows) > max_results
            return Page(_runs(db, rows[:max_results]),
                        _token(offset + max_results) if more else None)

    def get_run(self, run_id: str) -> Run:
        with self._db() as db:
            rows = db.execute(f"SELECT {_RUN} FROM runs WHERE run_uuid = ?", (run_id,)).fetchall()
            if not rows:
                raise LookupError(f"no run {run_id}")
            return _runs(db, rows)[0]

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        """The run's artifact ``path`` copied into ``dst_path`` (artifacts on this file
        system)."""
        uri = self.get_run(run_id).info.artifact_uri
        if uri.startswith("file://"):
            root = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
        elif uri.startswith("/"):
            root = Path(uri)
        else:
            raise Unsupported(f"artifact location {uri}")
        target = Path(dst_path) / Path(path).name
        shutil.copyfile(root / path, target)
        return str(target)


_RUN = "run_uuid, name, status, start_time, artifact_uri"


def _experiment_row(db: sqlite3.Connection, experiment_id: int, name: str) -> Experiment:
    tags = db.execute("SELECT key, value FROM experiment_tags WHERE experiment_id = ?",
                      (experiment_id,)).fetchall()
    return Experiment(str(experiment_id), name, dict(tags))


def _runs(db: sqlite3.Connection, rows: list[tuple]) -> list[Run]:
    """``rows`` (``_RUN`` columns) as runs with their tags, params and latest metrics."""
    ids = [row[0] for row in rows]
    data = {run_id: RunData({}, {}, {}) for run_id in ids}
    marks = ", ".join("?" * len(ids))
    for table in ("tags", "params"):
        for key, value, run_id in db.execute(
                f"SELECT key, value, run_uuid FROM {table} WHERE run_uuid IN ({marks})", ids):
            getattr(data[run_id], table)[key] = value
    for key, value, is_nan, run_id in db.execute(
            f"SELECT key, value, is_nan, run_uuid FROM latest_metrics WHERE run_uuid IN ({marks})",
            ids):
        data[run_id].metrics[key] = float("nan") if is_nan else float(value)
    return [Run(RunInfo(run_id, name or "", status, start_time, uri or ""), data[run_id])
            for run_id, name, status, start_time, uri in rows]


class RestReader:
    """Lookups through an MLflow server's REST API (the server filters and pages)."""

    def __init__(self, uri: str, headers: dict[str, str], timeout: float,
                 error: Callable[[Exception], Exception]):
        self.uri, self.headers, self.timeout, self.error = uri.rstrip("/"), headers, timeout, error

    def _call(self, route: str, body: dict[str, Any] | None = None,
              query: dict[str, str] | None = None) -> dict[str, Any]:
        url = f"{self.uri}/api/2.0/mlflow/{route}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data, {"Content-Type": "application/json",
                                                     **self.headers})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            answer = e.read()
            try:
                code = json.loads(answer).get("error_code", "")
            except ValueError:
                code = ""
            if code == "RESOURCE_DOES_NOT_EXIST":
                raise LookupError(route) from e
            raise self.error(e) from e
        except (OSError, ValueError) as e:
            raise self.error(e) from e

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        try:
            found = self._call("experiments/get-by-name", query={"experiment_name": name})
        except LookupError:
            return None
        return _experiment(found["experiment"])

    def search_experiments(self) -> list[Experiment]:
        found = self._call("experiments/search", {"max_results": 1000})
        return [_experiment(e) for e in found.get("experiments", [])]

    def search_runs(self, experiment_ids: list[str], filter_string: str = "",
                    max_results: int = 1000, order_by: list[str] | None = None,
                    page_token: str | None = None) -> Page:
        body = {"experiment_ids": list(experiment_ids), "filter": filter_string,
                "max_results": max_results, "order_by": order_by or []}
        if page_token:
            body["page_token"] = page_token
        found = self._call("runs/search", body)
        return Page([_run(r) for r in found.get("runs", [])], found.get("next_page_token"))

    def get_run(self, run_id: str) -> Run:
        return _run(self._call("runs/get", query={"run_id": run_id})["run"])

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        """The run's artifact ``path`` downloaded into ``dst_path`` (artifacts the server serves:
        ``mlflow-artifacts:`` locations)."""
        uri = self.get_run(run_id).info.artifact_uri
        if not uri.startswith("mlflow-artifacts:"):
            raise Unsupported(f"artifact location {uri}")
        location = urllib.parse.urlparse(uri).path.lstrip("/")
        url = f"{self.uri}/api/2.0/mlflow-artifacts/artifacts/{location}/{path}"
        target = Path(dst_path) / Path(path).name
        try:
            request = urllib.request.Request(url, headers=self.headers)
            with urllib.request.urlopen(request, timeout=self.timeout) as response, \
                    open(target, "wb") as out:
                shutil.copyfileobj(response, out)
        except (OSError, ValueError) as e:
            raise self.error(e) from e
        return str(target)


def _experiment(found: dict[str, Any]) -> Experiment:
    tags = {t["key"]: t.get("value", "") for t in found.get("tags", [])}
    return Experiment(found["experiment_id"], found["name"], tags)


def _run(found: dict[str, Any]) -> Run:
    info, data = found["info"], found.get("data", {})
    return Run(RunInfo(info["run_id"], info.get("run_name", ""), info["status"],
                       int(info.get("start_time", 0)), info.get("artifact_uri", "")),
               RunData({t["key"]: t.get("value", "") for t in data.get("tags", [])},
                       {p["key"]: p.get("value", "") for p in data.get("params", [])},
                       {m["key"]: float(m["value"]) for m in data.get("metrics", [])}))
