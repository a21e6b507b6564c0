"""Result lookups in the tracking store: tag-equality searches read page by page (no cap), and
a supersede finds its slot's runs, those logged before the slot tag existed included."""

from __future__ import annotations

import pytest

from bench.results import record as names
from bench.results import runs, store
from bench.results.record import RunRecord


def _record(identity: str, layer: str = "image", seed: int = 0) -> RunRecord:
    return RunRecord(identity=identity, name=f"pixels/digits/{layer}/8/linear", backbone="pixels",
                     task="digits", layer=layer, pool="8", head="linear", seed=seed,
                     headline="top1", metrics={"test_top1": 50.0}, best={"lr": 0.01})


def _log(experiment: str, record: RunRecord) -> str:
    record.run_id = runs.log_record(experiment, record, {})
    return record.run_id


@pytest.fixture
def searches(monkeypatch):
    """Every search request's (filter, page size, page token), with pages of two runs: of
    MLflow's client (writers) and of bench's reader of the store (lookups)."""
    monkeypatch.setattr(store, "PAGE_SIZE", 2)
    calls = []
    store.client()  # the store exists: bench reads it

    for cls in (store.client().__class__, store.reader().light.__class__):
        def spy(self, experiment_ids, filter_string="", *args, _real=cls.search_runs, **kwargs):
            calls.append((filter_string, kwargs.get("max_results"), kwargs.get("page_token")))
            return _real(self, experiment_ids, filter_string, *args, **kwargs)

        monkeypatch.setattr(cls, "search_runs", spy)
    return calls


def test_lookups_read_every_page_and_find_one_identity_by_its_tag(searches):
    experiment = store.ensure_experiment("bench")
    ids = [_log(experiment, _record(f"{i:032x}", seed=i)) for i in range(7)]
    searches.clear()
    found = runs.find_records([experiment])
    assert [r.run_id for r in found] == ids[::-1]  # all seven, newest first: four pages of two
    assert len(searches) == 4 and all(size == 2 for _, size, _ in searches)
    assert searches[0][2] is None and all(token for _, _, token in searches[1:])

    searches.clear()
    [one] = runs.find_records([experiment], [f"{5:032x}"])
    assert one.run_id == ids[5] and one.reused
    [(filter_string, _, _)] = searches  # one request, the store filters by the identity tag
    assert f"tags.`{names.IDENTITY}` = '{5:032x}'" in filter_string


def test_supersede_marks_its_slot_and_runs_logged_before_the_slot_tag(searches):
    client = store.client()
    experiment = store.ensure_experiment("bench")
    same = _log(experiment, _record("a" * 32))
    other_slot = _log(experiment, _record("b" * 32, seed=1))
    legacy = _log(experiment, _record("c" * 32))
    client.delete_tag(legacy, names.SLOT)  # as logged before bench wrote the slot tag
    client.delete_experiment_tag(experiment, names.SLOTS_TAGGED)

    newer = _record("d" * 32)
    _log(experiment, newer)
    assert sorted(runs.supersede(experiment, newer)) == sorted([same, legacy])
    assert {r.run_id for r in runs.find_records([experiment])} == {other_slot, newer.run_id}
    assert client.get_run(legacy).data.tags[names.SLOT] == newer.slot_key
    assert client.get_run(same).data.tags[names.SUPERSEDED_BY] == newer.identity

    searches.clear()  # the legacy runs were tagged once: later supersedes are one slot lookup
    assert runs.supersede(experiment, _record("e" * 32, seed=1)) == [other_slot]
    [(filter_string, _, _)] = searches
    assert f"tags.`{names.SLOT}` = '{_record('e' * 32, seed=1).slot_key}'" in filter_string


def test_the_record_module_does_not_import_mlflow_or_tracking():
    import subprocess
    import sys

    store_modules = tuple(f"bench.results.{m}" for m in (
        "store", "runs", "claims", "outbox", "artifacts", "publish", "matrices"))
    code = ("import sys, bench.results.record; print(sorted(m for m in sys.modules "
            f"if m.startswith(('mlflow', 'bench.run.jobs', *{store_modules!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_sqlite_store_indexes_tags_by_value_so_lookups_do_not_scan():
    import sqlite3

    from bench.paths import tracking_uri

    store.client()
    path = tracking_uri()[len("sqlite:///"):]
    with sqlite3.connect(path) as db:
        plan = db.execute("EXPLAIN QUERY PLAN SELECT run_uuid FROM tags WHERE key = ? AND "
                          "value = ?", (names.IDENTITY, "a" * 32)).fetchall()
    assert "bench_tags_key_value" in str(plan), plan


def test_an_experiment_opens_on_its_results_in_the_mlflow_ui():
    """MLflow 3 opens an experiment on its GenAI overview and shows no metric in its runs table:
    bench's experiments (new, or made before bench set these) carry the machine-learning kind,
    a saved view of the runs table with each result's description (headline ± interval) and
    the test metrics, and a description linking that view; a description of the user's own
    is kept."""
    import json

    from bench.results.record import results_view_path

    mlflow_client = store.client()
    old = mlflow_client.create_experiment("older")  # made before: no tag of bench's
    mlflow_client.set_experiment_tag(old, names.NOTE, "my own notes")
    for experiment in (store.ensure_experiment("bench"), store.ensure_experiment("older")):
        tags = mlflow_client.get_experiment(experiment).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        view = json.loads(tags["mlflow.sharedViewState.bench-results"])
        assert view["name"] == "bench results" and isinstance(view["createdAt"], int)
        columns = json.loads(view["state"])["selectedColumns"]
        assert columns[0] == "attributes.`Description`" and "metrics.`test_top1`" in columns
        assert results_view_path(experiment) == (
            f"#/experiments/{experiment}/runs?viewStateShareKey=bench-results"
            "&workflowType=machine_learning")
    bench = store.ensure_experiment("bench")
    note = mlflow_client.get_experiment(bench).tags[names.NOTE]
    assert f"[Open the results table]({results_view_path(bench)})" in note
    assert mlflow_client.get_experiment(old).tags[names.NOTE] == "my own notes"
