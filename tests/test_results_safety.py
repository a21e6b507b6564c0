"""Results that settings, other tasks, a full disk or a second results folder cannot spoil
(issue 20, items 1, 2, 6 and 10)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.api import compare, run
from bench.errors import UsageError
from bench.run.spec import RunOptions, RunSpec

from .conftest import REPO, records

FAST = {"epochs": 2, "weight_decays": (0.0,)}
OPTIONS = RunOptions(workers=0, progress=False)
CLI_FAST = ["--epochs", "2", "--lrs", "1e-2", "--wds", "0", "--workers", "0", "--no-progress",
            "--backbone-arg", "size=4", "--task-arg", "limit=100"]


def _spec(lr: float) -> RunSpec:
    return RunSpec("pixels", "digits", backbone_args={"size": 4}, task_args={"limit": 100},
                   head_args={**FAST, "lrs": (lr,)})


# --- 1: other chosen settings are alternatives; only a newer protocol supersedes ---------------
def test_other_settings_are_alternatives_chosen_on_val_and_a_new_protocol_supersedes(monkeypatch):
    from bench.results import leaderboard
    from bench import protocol
    [good] = run(_spec(1e-2), OPTIONS)
    [other] = run(_spec(1e-6), OPTIONS)  # a poor learning rate, chosen by the user
    assert {r.run_id for r in records()} == {good.run_id, other.run_id}  # nothing hidden
    assert other.identity != good.identity and other.settings != good.settings

    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", "next")  # the code changed
    [newer] = run(_spec(1e-2), OPTIONS)  # good's settings, a newer protocol
    assert {r.run_id for r in records()} == {newer.run_id, other.run_id}
    [old] = [r for r in records(include_superseded=True) if r.run_id == good.run_id]
    assert old.superseded_by == newer.identity

    board = leaderboard.build(["bench"], protocol="linear")
    shown = records()
    best_val = max(shown, key=lambda r: r.val_score)
    assert board.cells.run_id.tolist() == [best_val.run_id]
    assert leaderboard.footnotes(board.cells) == [
        f"pixels on digits: chosen on validation (never test) among 2 alternatives of "
        f"{best_val.name} with other chosen settings"]


# --- 2: compare only runs tested on the same test set -------------------------------------------
def _two_class_tree(root: Path, shade: int) -> None:
    from PIL import Image

    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            value = (shade + 40 * c + 7 * i) % 256
            Image.new("RGB", (8, 8), (value, value, value)).save(root / name / f"{i}.png")


def test_compare_refuses_runs_tested_on_different_test_sets(tmp_path):
    _two_class_tree(tmp_path / "one", 0)
    _two_class_tree(tmp_path / "two", 128)  # same class names, counts and file names
    spec = {"backbone": "pixels", "backbone_args": {"size": 8},
            "head_args": {**FAST, "lrs": (1e-2,)}}
    [a] = run(RunSpec(task=f"folder:{tmp_path / 'one'}", **spec), OPTIONS)
    [b] = run(RunSpec(task=f"folder:{tmp_path / 'two'}", **spec), OPTIONS)
    with pytest.raises(UsageError, match=r"\(task folder:.*one\) and .*\(task folder:.*two\) "
                                         r"were tested on different test sets") as error:
        compare(a.run_id, b.run_id)
    assert "\n" not in str(error.value)
    [c] = run(RunSpec(task=f"folder:{tmp_path / 'one'}", **{**spec, "head_args": {
        **FAST, "lrs": (1e-1,)}}), OPTIONS)
    assert compare(a.run_id, c.run_id).n == 4  # the same test images: compared


# --- 6: a full results disk ---------------------------------------------------------------------
def test_a_full_disk_prints_the_result_keeps_nothing_partial_and_sync_removes_leftovers(
        monkeypatch, capsys, tmp_path):
    from bench.cli import main

    def outage(*args, **kwargs):
        raise ConnectionError("the server went away")

    write_bytes = Path.write_bytes

    def full(self, data):
        if "pending" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_bytes(self, data)

    with monkeypatch.context() as m:
        m.setattr("bench.results.runs._log_record", outage)
        m.setattr(Path, "write_bytes", full)
        assert main(["run", "--backbone", "pixels", "--task", "digits", *CLI_FAST]) == 2
    err = capsys.readouterr().err.splitlines()
    computed = [line for line in err if line.startswith("computed pixels/digits")]
    assert len(computed) == 1 and "test_top1 " in computed[0]  # the number is not lost
    last = err[-1]
    assert "could not be logged" in last and "no space left on device" in last
    pending = tmp_path / "results" / "pending"
    assert not pending.exists() or not list(pending.iterdir())  # nothing half-written

    # what an older bench left: a folder without record.json, a 0-byte protocol.json in it
    leftover = pending / ("0" * 32)
    (leftover / "artifacts").mkdir(parents=True)
    (leftover / "artifacts" / "protocol.json").write_bytes(b"")
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert f"removed incomplete kept result {leftover}" in out
    assert not leftover.exists()


# --- 10: identical runs with different results folders, one tracking store ---------------------
SLOW_EXTRACTION = """
import sys, time
import bench.run.jobs as jobs
extract = jobs.extract_features
def slow(*args, **kwargs):  # the cell is held long enough for the other run to arrive
    time.sleep(6)
    return extract(*args, **kwargs)
jobs.extract_features = slow
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_identical_runs_with_two_results_folders_and_one_store_compute_once(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    args = ["run", "--backbone", "pixels", "--task", "digits", *CLI_FAST]
    started = [subprocess.Popen([sys.executable, "-c", SLOW_EXTRACTION, *args], cwd=REPO,
                                env={**env, "BENCH_RESULTS": str(tmp_path / name)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name in ("first", "second")]
    outputs = [p.communicate(timeout=300)[0] for p in started]
    assert [p.returncode for p in started] == [0, 0], "\n".join(outputs)[-3000:]
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    try:
        assert len(records()) == 1
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    waited = [out for out in outputs if "[already logged: reused" in out]
    assert len(waited) == 1, outputs
    assert "waiting for 1 result cell(s) that another run is computing" in waited[0]
    assert " s); waited " in waited[0]
    shards = [list((tmp_path / name / "cache").rglob("shard-*.npy"))
              for name in ("first", "second")]
    assert sorted(map(bool, shards)) == [False, True]  # extracted once


def test_a_claim_whose_holder_died_is_marked_killed_and_taken_over(monkeypatch):
    from bench.results import claims, record
    from bench.digest import json_digest
    from bench.results.claims import cell_lock
    from bench.results.store import client, ensure_experiment

    monkeypatch.setattr(claims, "LOCK_STALE_S", 1.0)
    monkeypatch.setattr(claims, "LOCK_POLL_S", 0.2)
    experiment = ensure_experiment("bench")
    cells = ["a" * 32]
    # what a holder killed with -9 leaves: a RUNNING claim whose heartbeat never moves again
    dead = client().create_run(experiment, tags=record.lock_tags(
        json_digest(cells)[:32], "elsewhere pid 1")).info.run_id
    said: list[str] = []
    with cell_lock(experiment, cells, said.append):
        assert client().get_run(dead).info.status == "KILLED"
    assert said[0].startswith("waiting for 1 result cell(s) that another run is computing "
                              f"(elsewhere pid 1, claim {dead}, for ")
    assert said[-1].startswith("the result cells are ours after ")
    assert not client().search_runs([experiment], record.lock_filter(json_digest(cells)[:32]))
