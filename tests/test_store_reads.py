"""bench's own reads of the tracking store (``bench.results.reader``): the same runs, in the
same order and pages, with the same tags, params and metrics as MLflow's client on the same store,
for every filter bench writes; read-only commands import no MLflow (their start-up time is what
benchmarks/startup.py measures, never asserted here)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest

from bench.results import record as names
from bench.results import store
from bench.results.reader import RestReader, SqliteReader
from bench.results.record import RunRecord
from bench.results.runs import log_record, supersede

from .conftest import REPO


def _record(identity: str, seed: int = 0, **metrics: float) -> RunRecord:
    return RunRecord(identity=identity, name="pixels/digits/image/8/linear", backbone="pixels",
                     task="digits", layer="image", pool="8", head="linear", seed=seed,
                     headline="top1", metrics={"test_top1": 50.0 + seed, "val_top1": 40.0,
                                               **metrics},
                     best={"lr": 0.01, "weight_decay": 0.0}, start_time=1_700_000_000 + seed)


def _filled_store(prefix: str) -> tuple[str, list[str]]:
    """A store holding what bench leaves in one: results (one superseded, one with a NaN metric,
    two with the same start time), a result left RUNNING, one deleted, one logged before the
    slot tag, live and ended claims, a leaderboard run, a similarity run, and a second
    experiment. Returns (experiment id, the filters bench searches it with)."""
    client = store.client()
    experiment = store.ensure_experiment(f"{prefix}bench")
    other = store.ensure_experiment(f"{prefix}other")
    ids = [log_record(experiment, _record(f"{i:032x}", seed=i), {}) for i in range(6)]
    log_record(experiment, _record("f" * 32, seed=2, test_top5=float("nan")), {})
    log_record(other, _record("e" * 32), {})
    newer = _record("d" * 32)
    log_record(experiment, newer, {})
    supersede(experiment, newer)
    running = client.create_run(experiment, tags=_record("c" * 32).to_tags()).info.run_id
    client.delete_run(ids[4])
    client.delete_tag(ids[5], names.SLOT)
    key = names.lock_key(["a" * 32])
    live = client.create_run(experiment, tags=names.lock_tags(key, "here pid 1")).info.run_id
    ended = client.create_run(experiment, tags=names.lock_tags(key, "here pid 2")).info.run_id
    client.set_terminated(ended, "FAILED")
    client.create_run(experiment, tags=names.leaderboard_tags())
    client.create_run(experiment, tags={names.KIND: names.SIMILARITY})
    assert running and live
    filters = [names.result_filter(), names.result_filter("RUNNING"),
               names.identity_filter(f"{1:032x}"), names.identity_filter("0" * 32, True),
               names.slot_filter(newer.slot_key), names.untagged_slot_filter(),
               names.running_filter("c" * 32), names.unfinished_filter("c" * 32),
               names.lock_filter(key), names.ended_lock_filter(key), names.leaderboard_filter(),
               names.report_filter("paper", ["t1"]), ""]
    return experiment, filters


def _same(mine, theirs) -> None:
    assert [r.info.run_id for r in mine] == [r.info.run_id for r in theirs]
    for a, b in zip(mine, theirs):
        assert (a.info.run_name, a.info.status, a.info.start_time) == (
            b.info.run_name, b.info.status, b.info.start_time)
        assert a.data.tags == b.data.tags and a.data.params == b.data.params
        assert a.data.metrics.keys() == b.data.metrics.keys()
        for key, value in a.data.metrics.items():
            other = b.data.metrics[key]
            assert value == other or (math.isnan(value) and math.isnan(other)), key


def _pages(reader, experiments, filter_string, size) -> list:
    runs, token = [], None
    while True:
        page = reader.search_runs(experiments, filter_string, max_results=size,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def _agrees_with_mlflow(light, tmp_path, prefix: str = "") -> None:
    experiment, filters = _filled_store(prefix)
    mlflow_client = store.client()
    both = [experiment, mlflow_client.get_experiment_by_name(f"{prefix}other").experiment_id]
    found = 0
    for filter_string in filters:
        for size in (2, 1000):
            mine = _pages(light, both, filter_string, size)
            _same(mine, _pages(mlflow_client, both, filter_string, size))
            found += len(mine)
    assert found > 40  # the filters found runs: the agreement is not between empty lists
    for name in (f"{prefix}bench", f"{prefix}other", f"{prefix}missing"):
        mine, theirs = light.get_experiment_by_name(name), mlflow_client.get_experiment_by_name(name)
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert (mine.experiment_id, mine.name, mine.tags) == (
                theirs.experiment_id, theirs.name, theirs.tags)
    assert sorted(e.name for e in light.search_experiments()) == sorted(
        e.name for e in mlflow_client.search_experiments())
    [run] = light.search_runs([experiment], names.identity_filter(f"{3:032x}"))
    _same([light.get_run(run.info.run_id)], [mlflow_client.get_run(run.info.run_id)])
    with pytest.raises(LookupError):
        light.get_run("0" * 32)
    mlflow_client.log_text(run.info.run_id, "the predictions", names.PREDICTIONS)
    (tmp_path / "mine").mkdir()
    path = light.download_artifacts(run.info.run_id, names.PREDICTIONS, str(tmp_path / "mine"))
    assert open(path).read() == "the predictions"


def test_sqlite_reads_agree_with_mlflows_client_for_every_filter_bench_writes(tmp_path):
    store.client()  # creates the store (bench's reads never create or migrate one)
    light = SqliteReader(store._sqlite_path(store.tracking_uri()))
    _agrees_with_mlflow(light, tmp_path)
    assert isinstance(store.reader().light, SqliteReader)


@pytest.mark.server
def test_rest_reads_agree_with_mlflows_client_on_a_server(mlflow_server_uri, monkeypatch,
                                                         tmp_path):
    import uuid

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_uri)
    light = store.reader().light
    assert isinstance(light, RestReader)
    _agrees_with_mlflow(light, tmp_path, prefix=f"reads-{uuid.uuid4().hex[:8]}-")


def test_a_store_of_a_schema_bench_does_not_know_is_read_by_mlflows_client(monkeypatch):
    import sqlite3

    store.client()
    path = store._sqlite_path(store.tracking_uri())
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'future'")
    monkeypatch.setattr(store, "_READERS", {})
    assert store.reader().light is None
    with sqlite3.connect(path) as db:  # (MLflow's client would migrate it: put it back)
        db.execute(f"UPDATE alembic_version SET version_num = '{sorted(store_schemas())[0]}'")


def store_schemas():
    from bench.results.reader import KNOWN_SCHEMAS

    return KNOWN_SCHEMAS


def test_the_installed_mlflow_writes_a_schema_bench_reads(tmp_path):
    """A new MLflow release with a new schema makes bench read through MLflow's client (correct,
    slower): this says so, so that the reader is checked against it and the revision added."""
    import sqlite3

    store.client()
    with sqlite3.connect(store._sqlite_path(store.tracking_uri())) as db:
        [(revision,)] = db.execute("SELECT version_num FROM alembic_version").fetchall()
    assert revision in store_schemas(), (
        f"MLflow's schema revision {revision} is new: run tests/test_store_reads.py's agreement "
        "test, then add it to bench.results.reader.KNOWN_SCHEMAS")


@pytest.mark.parametrize("command", [["runs"], ["leaderboard", "--no-log"],
                                     ["compare", "RUN_A", "RUN_B"]])
def test_read_only_commands_import_no_mlflow(command, tmp_path):
    """MLflow's import and client set-up were most of these commands' start-up (seconds; over
    ten on a loaded node); timed side by side in benchmarks/startup.py, never here."""
    experiment = store.ensure_experiment("bench")
    ids = [log_record(experiment, _record(f"{i:032x}", seed=i),
                      {names.PREDICTIONS: _predictions(i)}) for i in range(2)]
    args = [ids[0] if a == "RUN_A" else ids[1] if a == "RUN_B" else a for a in command]
    code = textwrap.dedent(f"""
        import sys
        from bench.cli import main
        code = main({args!r})
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "torch", "sqlalchemy"))
        print("RESULT", code, heavy[:5])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.stdout.rsplit("RESULT ", 1)[-1].strip() == "0 []", done


def _predictions(seed: int) -> bytes:
    import numpy as np

    from bench.metrics import Predictions

    logits = np.random.default_rng(seed).normal(size=(50, 10))
    return Predictions.from_logits(logits, np.arange(50) % 10).to_bytes()
