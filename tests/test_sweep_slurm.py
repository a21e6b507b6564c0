"""``bench sweep --executor slurm`` (and ``bench reproduce``) against the real single-node SLURM
cluster and MLflow server.

Needs both services (``BENCH_TEST_SLURM=1`` and ``BENCH_TEST_MLFLOW_URI``, see
``tests/test_cluster.py``, whose fixtures and helpers these tests share). Every sweep is driven
through ``bench.cli.main`` (or ``python -m bench.cli``) exactly as a user would type it, and
everything is checked from the outside: the job folder submitit writes (sbatch scripts, logs named
after the array ids), SLURM itself (``squeue``, ``scontrol``) and the server's REST API.

Jobs ask for 1 CPU and 2 GB each; the node has 2 CPUs, so two array tasks run side by side.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from tests.services import _release_requeued, _rest, _sh, _squeue_state

SLURM = ["--executor", "slurm", "--partition", "debug", "--cpus", "1", "--mem-gb", "2",
         "--time-min", "30", "--poll", "1"]
FAST = ["--epochs", "4", "--lrs", "1e-2", "--wds", "0", "--workers", "0", "--no-progress"]
METRICS = ("test_top1", "test_top5", "test_mean_per_class", "val_top1", "val_mean_per_class")


@pytest.fixture
def server(mlflow_server_uri, monkeypatch):
    """The MLflow server as the tracking URI of the driver and (through the job spec) its jobs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_uri)
    return mlflow_server_uri


@pytest.fixture
def job_dir(slurm_cluster, tmp_path):
    """The sweep's --job-dir; on teardown, cancel whatever it submitted that is still queued."""
    folder = tmp_path / "jobs"
    yield folder
    ids = {p.name.split("_")[0] for p in folder.glob("*_submitted.pkl")}
    ids |= {p.name.split("_")[0] for p in folder.glob("*_submission.sh")}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], check=False, capture_output=True)


def _suite(kind: str) -> str:
    return f"test-{kind}-{uuid.uuid4().hex[:8]}"


def _experiment_id(uri: str, suite: str) -> str:
    from urllib.parse import quote

    got = _rest(uri, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={quote(suite)}")
    return got["experiment"]["experiment_id"]


def _runs(uri: str, suite: str, kind: str = "result") -> list[dict]:
    """The suite's runs of one bench.kind over REST, flattened: name, status, metrics, tags."""
    found = _rest(uri, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [_experiment_id(uri, suite)],
        "filter": f"tags.`bench.kind` = '{kind}'", "max_results": 1000})
    return [{"name": next((t["value"] for t in r["data"].get("tags", [])  # the record's name
                          if t["key"] == "bench.name"), r["info"]["run_name"]),
             "status": r["info"]["status"],
             "id": r["info"]["run_id"],
             "metrics": {m["key"]: m["value"] for m in r["data"].get("metrics", [])},
             "params": {p["key"]: p["value"] for p in r["data"].get("params", [])},
             "tags": {t["key"]: t["value"] for t in r["data"].get("tags", [])}}
            for r in found.get("runs", [])]


def _digits_tree(root: Path, train: int = 30, test: int = 10) -> Path:
    """sklearn's digits as an ImageFolder tree (train/<class>/*.png, test/<class>/*.png)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0 * 255.0).round().astype(np.uint8)
    for label in range(10):
        index = np.flatnonzero(data.target == label)
        for split, chosen in (("train", index[:train]), ("test", index[train:train + test])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
    return root


def _array_logs(job_dir: Path) -> tuple[str, list[Path]]:
    """(array job id, its tasks' stdout logs) of the one sbatch array in job_dir."""
    [script] = job_dir.glob("*_submission.sh")
    array_id = script.name.split("_")[0]
    return array_id, sorted(job_dir.glob(f"{array_id}_*_0_log.out"))


@pytest.mark.slurm
@pytest.mark.server
def test_sweep_runs_as_a_job_array_lands_in_the_server_and_resumes(server, job_dir, tmp_path,
                                                                   capsys):
    """2 backbones x 2 tasks -> one sbatch array of 4 tasks -> 4 result runs in the server;
    the same command again submits nothing and reuses all four."""
    tree = _digits_tree(tmp_path / "digits-tree")
    suite = _suite("sweep")
    tasks = ["digits", f"folder:{tree}"]
    args = ["sweep", "--backbones", "pixels,random-unet", "--tasks", ",".join(tasks),
            "--backbone-arg", "size=16", "--suite", suite, "--job-dir", str(job_dir),
            *SLURM, *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    expected = {f"pixels/{t}/image/16/linear" for t in tasks} | {
        f"random-unet/{t}/mid/2/linear" for t in tasks}
    for name in expected:
        assert name in out

    # One sbatch job array (submitit names its files %A_%a), each task a SLURM array task.
    array_id, logs = _array_logs(job_dir)
    script = (job_dir / f"{array_id}_submission.sh").read_text()
    assert re.search(r"#SBATCH --array=0-3%\d+", script), script
    assert "#SBATCH --partition=debug" in script and "#SBATCH --cpus-per-task=1" in script
    assert [p.name for p in logs] == [f"{array_id}_{i}_0_log.out" for i in range(4)]
    for i, log in enumerate(logs):
        assert f"JobEnvironment(job_id={array_id}_{i}," in log.read_text(), log.read_text()

    # The server has one finished result run per cell, better than chance (10%).
    runs = _runs(server, suite)
    assert sorted(r["name"] for r in runs) == sorted(expected)
    for run in runs:
        assert run["status"] == "FINISHED"
        assert run["metrics"]["test_top1"] > 30, run
        assert run["tags"]["bench.task"] in tasks
    [board] = _runs(server, suite, "leaderboard")
    assert board["name"] == "leaderboard" and board["status"] == "FINISHED"

    # Again: each job resolves where it runs, finds its cells' identities done and reuses them:
    # nothing is extracted, trained or logged again.
    ids = {r["id"] for r in _runs(server, suite)}
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("(reused)") == 4, out
    assert {r["id"] for r in _runs(server, suite)} == ids
    [board] = _runs(server, suite, "leaderboard")  # refreshed, not duplicated
    table = _rest(server, f"/get-artifact?path=leaderboard.json&run_uuid={board['id']}")
    assert sorted(row[0] for row in table["data"]) == ["pixels", "random-unet"], table


def _shards(cache: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.glob("??/*/shard-*.npy")}


def _bench(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m bench.cli ARGS`` in the background (this test's environment), output to log."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=os.environ)


@pytest.mark.slurm
@pytest.mark.server
def test_requeued_job_resumes_and_matches_an_undisturbed_run(server, job_dir, tmp_path):
    """`scontrol requeue` mid-extraction: SLURM kills the job and starts it again; it resumes
    at the first missing cache shard (shards already written are not rewritten), logs one run,
    and its features and metrics equal those of an undisturbed local run from scratch (run
    meanwhile, with its own cache and experiment: it also slows the SLURM job down, so that the
    requeue surely lands mid-extraction)."""
    suite, cache = _suite("requeue"), tmp_path / "results" / "cache"
    reference, ref_cache = _suite("reference"), tmp_path / "reference-cache"
    cell = ["--backbones", "random-unet", "--tasks", "digits", "--backbone-arg", "size=64",
            "--shard-size", "64", "--batch-size", "32", *FAST]
    log, ref_log = tmp_path / "driver.log", tmp_path / "reference.log"
    driver = _bench(["sweep", *cell, *SLURM, "--suite", suite, "--job-dir", str(job_dir)], log)
    local = _bench(["sweep", *cell, "--executor", "local", "--suite", reference,
                    "--cache-dir", str(ref_cache)], ref_log)
    try:
        # Wait until the job is running and has written a couple of shards, then requeue it.
        deadline, job_id = time.monotonic() + 120, None
        while True:
            if driver.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the job never got going (driver exit {driver.returncode}):\n"
                            f"{log.read_text()[-3000:]}")
            if job_id is None and (found := list(job_dir.glob("*_submitted.pkl"))):
                job_id = found[0].name.split("_")[0]
            if job_id and _squeue_state(job_id) == "RUNNING" and len(_shards(cache)) >= 2:
                break
            time.sleep(0.2)
        assert not _sh("scontrol", "requeue", job_id), "scontrol requeue failed"
        deadline = time.monotonic() + 60
        while _squeue_state(job_id) != "PENDING":  # killed (after KillWait) and queued again
            assert time.monotonic() < deadline, _sh("scontrol", "show", "job", job_id)
            time.sleep(0.25)
        before = _shards(cache)  # what the first attempt left
        _release_requeued(job_id)
        assert driver.wait(timeout=240) == 0, log.read_text()[-3000:]
        assert local.wait(timeout=240) == 0, ref_log.read_text()[-3000:]
    finally:
        for proc in (driver, local):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    after = _shards(cache)
    assert 2 <= len(before) < len(after), f"not killed midway: {len(before)}/{len(after)} shards"
    assert {p: after[p] for p in before} == before, "a finished shard was written again"
    assert "Restarts=1" in _sh("scontrol", "show", "job", job_id)
    stdout = next(job_dir.glob(f"{job_id}_0_log.out")).read_text()
    assert stdout.count("Starting with JobEnvironment") == 2, stdout
    [run] = _runs(server, suite)  # logged once, by the second attempt
    assert run["status"] == "FINISHED" and run["name"] == "random-unet/digits/mid/2/linear"

    [ref] = _runs(server, reference)
    assert ref["tags"]["bench.identity"] == run["tags"]["bench.identity"]  # one protocol
    assert {k: run["metrics"][k] for k in METRICS} == {k: ref["metrics"][k] for k in METRICS}
    assert {k: v for k, v in run["params"].items() if k.startswith("best.")} == {
        k: v for k, v in ref["params"].items() if k.startswith("best.")}
    from bench.features.cache import FeatureCache

    ours = {e.key: e for e in FeatureCache(cache).entries()}
    theirs = {e.key: e for e in FeatureCache(ref_cache).entries()}
    assert len(ours) == 3 and set(ours) == set(theirs)  # train, val, test
    for key, entry in ours.items():
        assert entry.complete()
        assert np.array_equal(entry.load()[0], theirs[key].load()[0]), key


@pytest.mark.slurm
@pytest.mark.server
def test_failing_job_is_retried_reported_with_its_log_and_the_rest_completes(
        server, job_dir, tmp_path, capsys):
    missing = tmp_path / "no-such-tree"
    suite = _suite("failure")
    code = main(["sweep", "--backbones", "pixels", "--tasks", f"digits,folder:{missing}",
                 "--suite", suite, "--job-dir", str(job_dir), "--retries", "1", *SLURM, *FAST])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err

    # Retried once with the job's own error, then reported with the job's log.
    retry = re.search(r"retrying pixels x folder:\S+ \(1/1\): (.*)", captured.out)
    assert retry and "DatasetError" in retry.group(1) and str(missing) in retry.group(1), \
        captured.out
    failed = re.search(r"FAILED pixels x folder:(\S+) head=linear: (.*)\n  log: (\S+)",
                       captured.err)
    assert failed, captured.err
    assert failed.group(1) == str(missing)
    assert "DatasetError" in failed.group(2) and "is not a folder" in failed.group(2)
    log = Path(failed.group(3))
    assert log.is_file() and log.parent == job_dir
    assert "DatasetError" in log.read_text() and str(missing) in log.read_text()
    assert len(list(job_dir.glob("*_submission.sh"))) == 2  # the array, then the retry

    # The other cell finished, is in the server and on the leaderboard.
    [run] = _runs(server, suite)
    assert run["name"] == "pixels/digits/image/16/linear" and run["status"] == "FINISHED"
    assert run["metrics"]["test_top1"] > 50
    assert "pixels/digits/image/16/linear: test_top1" in captured.out
    assert re.search(r"\| pixels +\| +\d+\.\d+ ± \d+\.\d+ +\|", captured.out), captured.out


@pytest.mark.slurm
@pytest.mark.server
def test_extraction_array_then_dependent_probe_job(server, job_dir, tmp_path, capsys):
    """--extract-array 2: two extraction tasks split the shards, the probe job waits (afterok)."""
    suite = _suite("extract-array")
    cache = tmp_path / "cache"
    code = main(["sweep", "--backbones", "pixels", "--tasks", "digits", "--suite", suite,
                 "--job-dir", str(job_dir), "--extract-array", "2", "--shard-size", "256",
                 "--cache-dir", str(cache), *SLURM, *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    scripts = sorted(job_dir.glob("*_submission.sh"))
    assert len(scripts) == 2  # the extraction array, then the probe job
    texts = [s.read_text() for s in scripts]
    assert any("#SBATCH --array=0-1" in t for t in texts), texts
    dependent = [t for t in texts if "--dependency=afterok:" in t]
    assert len(dependent) == 1 and "--array" not in dependent[0]
    shards = sorted(p.name for p in cache.glob("*/*/shard-*.npy"))
    assert len(shards) == 6 + 1 + 2  # train, val, test at 256 images a shard
    [run] = _runs(server, suite)
    assert run["status"] == "FINISHED" and run["metrics"]["test_top1"] > 80


@pytest.mark.slurm
@pytest.mark.server
def test_a_cancelled_job_is_reported_and_the_sweep_ends(server, job_dir, tmp_path):
    """`scancel` of a running job: the sweep reports it with its log and ends (exit 1) instead of
    showing it as running forever; the leaderboard file is not overwritten with an empty table."""
    suite = _suite("cancel")
    board = tmp_path / "results" / "leaderboard.md"
    board.parent.mkdir(parents=True)
    board.write_text("an earlier leaderboard\n")
    log = tmp_path / "driver.log"
    driver = _bench(["sweep", "--backbones", "pixels", "--tasks", "digits", "--suite", suite,
                     "--job-dir", str(job_dir), "--retries", "0", *SLURM, "--epochs", "100000",
                     "--lrs", "1e-2", "--wds", "0", "--workers", "0", "--no-progress"], log)
    deadline = time.monotonic() + 120
    job_id = None
    while time.monotonic() < deadline and driver.poll() is None:
        submitted = sorted(job_dir.glob("*_submitted.pkl"))
        if submitted:
            job_id = submitted[0].name.split("_submitted")[0].removesuffix("_0")
            if _squeue_state(job_id) == "RUNNING":
                break
        time.sleep(0.5)
    assert job_id and _squeue_state(job_id) == "RUNNING", log.read_text()
    _sh("scancel", job_id)
    assert driver.wait(timeout=180) == 1, log.read_text()
    text = log.read_text()
    assert "left the queue without a result" in text and "FAILED pixels x digits" in text, text
    assert board.read_text() == "an earlier leaderboard\n"


@pytest.mark.slurm
@pytest.mark.server
def test_reproduce_runs_one_array_task_per_forward_pass(server, job_dir, tmp_path, capsys):
    """`bench reproduce` of a tiny paper's table on the cluster: one sbatch array task per
    (backbone, task) pass, pixels x digits' linear and kNN cells sharing one; every cell's
    result lands in the server under the identity its plan resolved on the driver; the same
    command again submits nothing."""
    from bench.api import reproduce_plan
    from bench.run.spec import RunOptions
    from tests.test_reproduce import tiny_paper

    suite = _suite("reproduce")
    paper = tiny_paper(tmp_path)
    args = ["reproduce", paper, "--table", "main", "--suite", suite, "--job-dir", str(job_dir),
            "--workers", "0", "--no-progress", *SLURM]
    assert main(args) == 0
    capsys.readouterr()
    array_id, logs = _array_logs(job_dir)
    script = (job_dir / f"{array_id}_submission.sh").read_text()
    assert re.search(r"#SBATCH --array=0-2%\d+", script), script  # 3 passes for 5 cells
    assert len(logs) == 3

    plan = reproduce_plan(paper, ["main"], RunOptions(suite=suite))
    identities = {c.identity for c in plan.cells.values()}
    runs = _runs(server, suite)
    assert len(runs) == 5 and all(r["status"] == "FINISHED" for r in runs)
    assert {r["tags"]["bench.identity"] for r in runs} == identities
    assert {r["name"].rsplit("/", 1)[1] for r in runs} == {"linear", "knn"}

    submitted = set(job_dir.glob("*_submission.sh"))
    assert main(args) == 0
    assert "5 cells: 5 done, 0 to run" in capsys.readouterr().out
    assert set(job_dir.glob("*_submission.sh")) == submitted  # nothing submitted again
    assert {r["id"] for r in _runs(server, suite)} == {r["id"] for r in runs}


QUERIES = ("squeue", "sacct", "sinfo", "scontrol")  # the SLURM tools that ask the controller


def _logging_tools(folder: Path, log: Path) -> None:
    """Wrappers in ``folder`` that log each call of a SLURM query tool, then exec the real one."""
    import shlex
    import shutil

    folder.mkdir()
    for tool in QUERIES:
        real = shutil.which(tool)
        assert real, f"{tool} is not on PATH"
        script = folder / tool
        script.write_text(f"#!/bin/sh\necho \"$(date +%s.%N) {tool} $*\" >> {shlex.quote(str(log))}"
                          f"\nexec {shlex.quote(real)} \"$@\"\n")
        script.chmod(0o755)


def _backoff_allows(duration: float, poll: float) -> int:
    """The most queries one poller makes in ``duration`` seconds: every ``poll`` seconds at
    first, then every half of the time since the submission, up to a minute."""
    t, n = 0.0, 1
    while t < duration:
        t += min(max(poll, 60.0), max(poll, t / 2))
        n += 1
    return n


@pytest.mark.slurm
def test_polling_n_jobs_asks_slurm_once_per_interval_and_backs_off(slurm_cluster, job_dir,
                                                                   tmp_path, monkeypatch, capsys):
    """8 array jobs on the real cluster, polled every 0.5 s: SLURM is asked about all of them in
    one call per interval (never once per job), and the interval grows with the time since the
    submission (submitit's watcher's schedule), so the number of calls follows the backoff, not
    the number of jobs times the number of polls. Every call of squeue, sacct, sinfo and scontrol
    the driver makes is counted by a wrapper on PATH that logs it and runs the real tool."""
    import functools

    from bench.run.scheduler import ExecutorConfig, run_jobs

    log, n, poll, sleep = tmp_path / "queries.log", 8, 0.5, 4.0
    _logging_tools(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    config = ExecutorConfig("slurm", {"slurm_partition": slurm_cluster, "cpus_per_task": 1,
                                      "mem_gb": 1, "timeout_min": 10}, str(job_dir))
    start = time.time()
    outcomes = run_jobs([functools.partial(time.sleep, sleep) for _ in range(n)], config,
                        poll=poll)
    duration = time.time() - start
    assert [o.ok for o in outcomes] == [True] * n, [o.error for o in outcomes]

    calls = [line.split(maxsplit=2) for line in log.read_text().splitlines()] if log.exists() \
        else []
    by_tool = {tool: sorted(float(t) for t, name, *_ in calls if name == tool) for tool in QUERIES}
    polls = duration / poll
    with capsys.disabled():
        print(f"\n{n} jobs, {duration:.1f} s, {polls:.0f} polls of {poll} s: "
              + ", ".join(f"{tool} {len(times)}" for tool, times in by_tool.items())
              + f" ({sum(map(len, by_tool.values())) / polls:.2f} queries a poll)")
    squeue = by_tool["squeue"]
    assert squeue, "the queue was never asked"
    gaps = [b - a for a, b in zip(squeue, squeue[1:])]
    assert min(gaps, default=poll) >= 0.8 * poll, f"several squeue calls in one poll: {gaps}"
    assert len(squeue) <= _backoff_allows(duration, poll), (len(squeue), gaps)
    # submitit's own watcher (sacct for every job at once, backing off from 2 s): a few calls
    assert len(by_tool["sacct"]) <= 2 + _backoff_allows(duration, 2.0), by_tool["sacct"]
    assert not by_tool["sinfo"] and len(by_tool["scontrol"]) <= 1
