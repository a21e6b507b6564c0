"""Nothing lost under concurrency and outages (issue 13, items 9-11 and 18's tracking store)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.api import run
from bench.run.spec import RunOptions, RunSpec

from .conftest import REPO, records

OPTIONS = RunOptions(workers=0, progress=False)
FAST = ["--epochs", "2", "--lrs", "1e-2", "--wds", "0", "--workers", "0", "--no-progress"]


def _bench(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=REPO, env=os.environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("processes", [4, 8])
def test_concurrent_first_runs_all_succeed_with_one_result_per_cell(processes, tmp_path):
    """N `bench run` at once on a fresh results folder: the store is created once, every run
    succeeds, and two identical runs extract and log once (the second reuses)."""
    cells = processes // 2  # each cell asked for by two processes at the same time
    started = [_bench(["run", "--backbone", "pixels", "--task", "digits", "--pool", str(p),
                       "--backbone-arg", "size=8", *FAST]) for p in (1, 2, 4, 8)[:cells]
               for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in started]
    assert [p.returncode for p in started] == [0] * processes, "\n".join(outputs)[-4000:]
    assert len(records()) == cells
    # Of each identical pair, one computed and the other waited, then reused its result.
    assert sum("[already logged: reused" in out for out in outputs) == cells, outputs


def test_a_run_killed_while_logging_is_marked_killed_by_the_next(tmp_path):
    import mlflow

    from bench.results.record import IDENTITY, KIND, RESULT
    from bench.results.store import client, ensure_experiment

    spec = RunSpec("pixels", "digits", head_args={"epochs": 2})
    [first] = run(spec, OPTIONS)
    experiment = ensure_experiment("bench")
    stale = client().create_run(experiment, tags={KIND: RESULT, IDENTITY: "x" + first.identity})
    half = client().create_run(experiment, tags={KIND: RESULT, IDENTITY: first.identity})
    [again] = run(spec, RunOptions(workers=0, progress=False, force=True))
    status = {r.info.run_id: r.info.status for r in mlflow.search_runs(
        [experiment], output_format="list")}
    assert status[half.info.run_id] == "KILLED"  # same cell: its logger died
    assert status[stale.info.run_id] == "RUNNING"  # another cell's: not ours to judge
    assert status[again.run_id] == "FINISHED"


def test_an_unreachable_tracking_server_fails_before_any_work(monkeypatch, capsys, tmp_path):
    import socket

    from bench.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST]) == 2
    err = capsys.readouterr().err
    assert f"tracking server {uri} is unreachable" in err and err.count("\n") == 1
    assert not (tmp_path / "results" / "cache").exists()  # nothing was extracted


def test_a_result_that_cannot_be_logged_is_kept_and_synced_later(monkeypatch, capsys):
    from bench.cli import main

    def outage(*args, **kwargs):
        raise ConnectionError("the server went away")

    args = ["run", "--backbone", "pixels", "--task", "digits", *FAST]
    with monkeypatch.context() as m:
        m.setattr("bench.results.runs._log_record", outage)
        assert main(args) == 2
    err = capsys.readouterr().err
    assert "could not be logged" in err and "bench sync" in err
    assert records() == []
    assert main(["sync"]) == 0
    assert "1 result(s) logged" in capsys.readouterr().out
    [logged] = records()
    assert main(args) == 0  # the rerun finds the synced result: nothing recomputed
    assert f"run {logged.run_id}  [already logged: reused" in capsys.readouterr().out


def test_a_truncated_tracking_store_is_named_in_one_line(tmp_path, capsys):
    from bench.cli import main

    store = tmp_path / "results" / "mlflow.db"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"SQLite format 3\x00" + b"\x13" * 50)  # a header, then garbage
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST]) == 2
    err = capsys.readouterr().err
    assert str(store) in err and "cannot be opened" in err and err.count("\n") == 1


def test_a_read_only_results_folder_is_named_in_one_line(monkeypatch, capsys, tmp_path):
    """(Root ignores permission bits, so the refusal is simulated where the folder is made.)"""
    from pathlib import Path

    from bench.cli import main

    results = tmp_path / "results"

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST]) == 2
    err = capsys.readouterr().err
    assert str(results) in err and "Permission denied" in err and err.count("\n") == 1


@pytest.mark.server
def test_a_real_server_stopped_mid_run_loses_nothing(tmp_path, monkeypatch, capsys):
    """A tracking server of this test's own, stopped after the probe and before the logging:
    the result waits on disk, and `bench sync` logs it once the server is back. Runs where the
    server tests run (CI), since it starts an MLflow server."""
    import socket

    from tests.services import MLFLOW_ENV, _require

    _require(MLFLOW_ENV, "`scripts/mlflow-up.sh DIR PORT`", "http://127.0.0.1:PORT")

    from bench.results import runs
    from bench.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path / "server"
    up = [str(REPO / "scripts" / "mlflow-up.sh"), str(folder), str(port)]
    down = [str(REPO / "scripts" / "mlflow-down.sh"), str(folder)]
    subprocess.run(up, check=True, capture_output=True, timeout=300)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    log_record = runs._log_record

    def stop_the_server_then_log(*args, **kwargs):
        subprocess.run(down, check=True, capture_output=True, timeout=120)
        return log_record(*args, **kwargs)

    try:
        with monkeypatch.context() as m:
            m.setattr(runs, "_log_record", stop_the_server_then_log)
            assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST]) == 2
        assert "bench sync" in capsys.readouterr().err
        subprocess.run(up, check=True, capture_output=True, timeout=300)
        assert records() == []
        assert main(["sync"]) == 0
        [logged] = records()
        assert logged.backbone == "pixels" and logged.metrics["test_top1"] > 50
    finally:
        subprocess.run(down, capture_output=True, timeout=120)


# --- issue 20, item 8: one line instead of a traceback --------------------------------------
RUN = ["run", "--backbone", "pixels", "--task", "digits", *FAST]


@pytest.mark.parametrize("variable", ["BENCH_RESULTS", "BENCH_CACHE"])
def test_a_results_or_cache_folder_that_is_a_file_is_one_line(variable, monkeypatch, capsys,
                                                               tmp_path):
    from bench.cli import main

    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    monkeypatch.setenv(variable, str(taken))
    assert main(RUN) == 2
    err = capsys.readouterr().err
    assert f"{variable} {taken} is a file, not a folder" in err and err.count("\n") == 1, err


def _read_only(folder, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`bench ARGV` in a private mount namespace where ``folder`` is a read-only bind mount of
    itself (a real EROFS, which root cannot write through, unlike chmod)."""
    import shlex
    import shutil

    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1) for a read-only bind mount")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind -o ro {folder} {folder}"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"no read-only bind mount here: {probe.stderr.strip()}")
    command = shlex.join([sys.executable, "-m", "bench.cli", *argv])
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount --bind -o ro {folder} {folder} && exec {command}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_complete_shared_cache_on_a_read_only_mount_is_read(monkeypatch, tmp_path):
    cache = tmp_path / "shared-cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    run(RunSpec("pixels", "digits", head_args={"epochs": 2}), OPTIONS)  # fills the cache
    env = os.environ | {"BENCH_CACHE": str(cache)}
    shards = sorted(cache.rglob("shard-*.npy"))
    # Another user, their own results folder, the cache mounted read-only (and its .locks too).
    second = _read_only(cache, RUN, env | {"BENCH_RESULTS": str(tmp_path / "other")})
    assert second.returncode == 0, second.stderr[-2000:]
    assert "test_top1" in second.stdout and sorted(cache.rglob("shard-*.npy")) == shards


def test_a_read_only_results_mount_is_one_line_before_any_work(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    done = _read_only(results, RUN, dict(os.environ))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"bench: error: BENCH_RESULTS {results} cannot be written ({results} is "
                     "read-only): make it writable or choose another folder"], done.stderr
    assert not (results / "cache").exists()  # nothing extracted


class _Tracking:
    """A tracking server that answers /health and then fails: 500 to every call ("error"), no
    answer at all ("hang"), or gone ("die": it stops after answering the health check)."""

    def __init__(self, mode: str):
        import http.server
        import threading
        import time

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                if self.path.startswith("/health"):
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"OK")
                    if mode == "die":
                        threading.Thread(target=outer.server.shutdown).start()
                    return
                if mode == "hang":
                    time.sleep(30)
                    return
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b'{"error_code": "INTERNAL_ERROR", "message": "boom"}')

            do_GET = do_POST = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode", ["error", "hang", "die"])
def test_a_tracking_server_failing_after_its_health_check_is_one_line(mode, monkeypatch, capsys,
                                                                       tmp_path):
    import time

    from bench.results import store
    from bench.cli import main

    server = _Tracking(mode)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(store, "_CHECKED", set())
    started = time.monotonic()
    try:
        assert main(RUN) == 2
    finally:
        server.close() if mode != "die" else server.server.server_close()
    err = capsys.readouterr().err
    assert f"the tracking server {server.uri} failed" in err and err.count("\n") == 1, err
    assert time.monotonic() - started < 20  # the request timeout, not minutes of retries
    assert not (tmp_path / "results" / "cache").exists()  # nothing extracted


PLUGIN = '''
import torch
from torchvision import transforms as T

from bench.backbone import Backbone, FeaturePoint

MODE = {mode!r}


class Misbehaving(Backbone):
    """A backbone plugin whose forward_features breaks the contract in one way (MODE)."""

    input_size = 8
    default_layers = ("out",)
    default_pool = "none"

    def __init__(self):
        super().__init__()
        self.calls = 0

    @property
    def config(self):
        return {{"family": "misbehaving", "mode": MODE}}

    def transform(self):
        return T.Compose([T.Resize((8, 8)), T.ToTensor()])

    def feature_points(self):
        return [FeaturePoint("out", "vector")]

    def forward_features(self, x, layers, sample_ids=None):
        self.calls += 1
        out = x.flatten(1)[:, :16]
        if MODE == "nan":
            out = out * float("nan")
        elif MODE == "numpy":
            out = out.numpy()
        elif MODE == "batch":
            out = out[:1]
        elif MODE == "width":
            out = out[:, : 17 - self.calls]
        elif MODE == "layer":
            return {{"something-else": out}}
        return {{"out": out}}


def make():
    return Misbehaving()
'''


def _errors(err: str) -> list[str]:
    """stderr without MLflow's own INFO lines (printed when a store is first created) and
    bench's progress notes ("extracting N images ..." and its indented cost lines, and "note:"
    lines such as a class a small ``limit`` leaves out of a split)."""
    return [line for line in err.splitlines() if line.strip() and " INFO mlflow." not in line
            and not line.startswith(("extracting ", "  ", "note: "))]


def test_a_backbone_plugin_whose_module_fails_to_import_is_one_line(monkeypatch, capsys,
                                                                   tmp_path):
    from bench.cli import main

    path = tmp_path / "plugin.py"
    path.write_text("import os\nimport not_installed_anywhere\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--backbone", "plugin.py:make", "--task", "digits", *FAST]) == 2
    assert _errors(capsys.readouterr().err) == [
        f"bench: error: backbone 'plugin.py:make': its module failed to import at {path}:2: "
        "ModuleNotFoundError: No module named 'not_installed_anywhere'"]


@pytest.mark.parametrize("mode, says", [
    ("nan", "features of ('out', 'none') are not finite in float32"),
    ("numpy", "layer 'out' is a numpy.ndarray, not a torch.Tensor"),
    ("batch", "layer 'out' (vector) has shape (1, 16) for a batch of 8 images"),
    ("width", "('out', 'none') features changed shape from (16,) to (15,) between batches"),
    ("layer", "forward_features returned no 'out' (asked for ['out'], got ['something-else'])"),
])
def test_a_misbehaving_backbone_plugin_is_named_with_what_it_returned(mode, says, monkeypatch,
                                                                      tmp_path):
    import torch

    from bench.backbone import BackboneOutputError
    from bench.features.cache import FeatureCache
    from bench.features.extract import extract
    from bench.registry import backbones, tasks

    (tmp_path / "plugin.py").write_text(PLUGIN.format(mode=mode))
    monkeypatch.chdir(tmp_path)
    task = tasks.create("digits", limit=24)
    with pytest.raises(BackboneOutputError) as caught:
        extract(backbones.create("plugin.py:make"), task.split("train"), [("out", "none")],
                FeatureCache(tmp_path / "cache"), task.config, device=torch.device("cpu"),
                batch_size=8, progress=False)
    message = str(caught.value)
    assert message.startswith("backbone 'plugin.py:make' (bench_user_") and says in message
    assert "\n" not in message


def test_a_misbehaving_plugin_in_a_run_is_one_line(monkeypatch, capsys, tmp_path):
    from bench.cli import main

    (tmp_path / "plugin.py").write_text(PLUGIN.format(mode="batch"))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--backbone", "plugin.py:make", "--task", "digits", "--task-arg",
                 "limit=24", "--batch-size", "8", *FAST]) == 2
    [line] = _errors(capsys.readouterr().err)
    assert "has shape (1, 16) for a batch of 8 images" in line


def test_compare_on_a_damaged_predictions_file_is_one_line(capsys, tmp_path):
    from bench.api import run_seeds
    from bench.cli import main

    first, second = run_seeds(RunSpec("pixels", "digits", head_args={"epochs": 2, "lrs": [1e-2],
                                                                     "weight_decays": [0.0]}),
                              [0, 1], OPTIONS).records
    [stored] = (tmp_path / "results").rglob(f"{second.run_id}/**/predictions.npz")
    stored.write_bytes(stored.read_bytes()[:100])  # truncated
    capsys.readouterr()
    assert main(["compare", first.run_id, second.run_id]) == 2
    [line] = _errors(capsys.readouterr().err)
    assert f"the stored predictions of run {second.run_id} cannot be read" in line, line
    assert "predictions.npz is damaged" in line and "--force" in line


def test_comparing_predictions_over_different_class_counts_is_a_usage_error():
    import numpy as np

    from bench.errors import UsageError
    from bench.stats import Predictions, compare

    ten = Predictions(np.zeros((4, 5), int), np.arange(4), 10)
    three = Predictions(np.zeros((4, 3), int), np.arange(4) % 3, 3)
    with pytest.raises(UsageError, match="over 10 and 3 classes"):
        compare(ten, three)
