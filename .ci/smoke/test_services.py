"""CI's smoke checks of the services themselves: submitit on the single-node SLURM cluster
(submission, arrays, requeue, preemption, failures) and the MLflow tracking server.

They test the services, not bench, so they are not in the suite: ``.ci/run`` runs them before the
suite (``python -m pytest -q .ci/smoke``) so that a broken service is reported as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from submitit.helpers import Checkpointable

from tests.services import PARTITION, _release_requeued, _rest, _sh



# ----------------------------------------------------------------------------- SLURM fixtures


@pytest.fixture
def executor(slurm_cluster: str, tmp_path: Path):
    import cloudpickle
    import submitit

    # pytest imports this file as a top-level module that the job's Python cannot import
    # (tests/ is not on its path): ship the job functions by value instead of by reference.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    name = f"bench-test-{uuid.uuid4().hex[:8]}"
    # timeout_min=60: submitit treats a USR2 in the first 48 min as a preemption, not a timeout.
    ex.update_parameters(
        slurm_partition=slurm_cluster,
        cpus_per_task=1,
        mem_gb=1,
        timeout_min=60,
        name=name,
    )
    yield ex
    # Leave no job behind (e.g. a requeued one, or one a failed test was waiting on).
    subprocess.run(["scancel", f"--name={name}"], check=False, capture_output=True)


def _wait(job, timeout: float = 60.0):
    """``job.result()`` with a deadline; on timeout, cancel and show what SLURM knows."""
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            info = _sh("scontrol", "show", "job", str(job.job_id))
            subprocess.run(["scancel", str(job.job_id)], check=False)
            pytest.fail(
                f"SLURM job {job.job_id} not done after {timeout:.0f}s.\n{info}\n"
                f"--- stdout ---\n{job.stdout()}\n--- stderr ---\n{job.stderr()}"
            )
        time.sleep(0.25)
    return job.result()


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _wait_for_progress(path: Path, key: str, at_least: int, job, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _read_json(path, {}).get(key, 0) < at_least:
        if job.done() or time.monotonic() > deadline:
            pytest.fail(
                f"job {job.job_id} made no progress ({_read_json(path, {})}); "
                f"stderr:\n{job.stderr()}"
            )
        time.sleep(0.1)


# ----------------------------------------------------------------------------- job functions
# Run inside SLURM jobs (pickled by value, see ``executor``): keep them self-contained.


def _add(a: int, b: int) -> dict:
    return {
        "sum": a + b,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
    }


def _square(x: int) -> tuple:
    return x * x, os.environ.get("SLURM_ARRAY_TASK_ID")


def _fail(message: str) -> None:
    raise ValueError(message)


def _save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written state


class FileResumedSum(Checkpointable):
    """Sums i*i for i < steps, one step per ``step_s`` seconds, persisting its state to a file.

    When the job is killed and restarted (``scontrol requeue``), it resumes from the file.
    """

    def __call__(self, state_file: str, steps: int, step_s: float) -> dict:
        path = Path(state_file)
        state = _read_json(path, {"step": 0, "total": 0, "starts": []})
        state["starts"].append([int(os.environ.get("SLURM_RESTART_COUNT", "0")), state["step"]])
        _save_json(path, state)
        while state["step"] < steps:
            time.sleep(step_s)
            state["total"] += state["step"] ** 2
            state["step"] += 1
            _save_json(path, state)
        return {"total": state["total"], "starts": state["starts"]}


class MemoryResumedSum(Checkpointable):
    """Same sum, but the progress lives only in ``self``: it survives a preemption only through
    submitit's checkpoint() (state pickled on USR2, job requeued). ``progress_file`` is
    written for the test to watch, never read back."""

    def __init__(self) -> None:
        self.step = 0
        self.total = 0
        self.starts: list = []
        self.checkpoints = 0

    def __call__(self, progress_file: str, steps: int, step_s: float) -> dict:
        self.starts.append([int(os.environ.get("SLURM_RESTART_COUNT", "0")), self.step])
        while self.step < steps:
            time.sleep(step_s)
            self.total += self.step**2
            self.step += 1
            _save_json(Path(progress_file), {"step": self.step})
        return {"total": self.total, "starts": self.starts, "checkpoints": self.checkpoints}

    def checkpoint(self, *args, **kwargs):
        self.checkpoints += 1
        return super().checkpoint(*args, **kwargs)


# ----------------------------------------------------------------------------- SLURM tests


@pytest.mark.slurm
def test_submit_returns_result(executor):
    job = executor.submit(_add, 2, 3)
    out = _wait(job)
    assert out == {"sum": 5, "job_id": str(job.job_id), "partition": PARTITION}
    assert job.paths.stdout.exists()


@pytest.mark.slurm
def test_map_array(executor):
    jobs = executor.map_array(_square, [1, 2, 3])
    assert len(jobs) == 3
    array_id = str(jobs[0].job_id).split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(3)]
    assert [_wait(j) for j in jobs] == [(1, "0"), (4, "1"), (9, "2")]


@pytest.mark.slurm
def test_scontrol_requeue_resumes_from_file(executor, tmp_path):
    """`scontrol requeue` of a running job: SLURM sends SIGTERM (which submitit ignores) and,
    KillWait (5 s here) later, SIGKILL; the job restarts and resumes from its own state file.
    The job must outlive KillWait + 2 s, or it just finishes before being killed."""
    steps, state_file = 40, tmp_path / "state.json"
    job = executor.submit(FileResumedSum(), str(state_file), steps, 0.25)
    _wait_for_progress(state_file, "step", 2, job)
    out = _sh("scontrol", "requeue", str(job.job_id))
    assert not out, f"scontrol requeue: {out}"
    _release_requeued(job.job_id)
    result = _wait(job)
    assert result["total"] == sum(i * i for i in range(steps))
    assert len(result["starts"]) == 2, f"expected one restart: {result} (KillWait too long?)"
    (first, first_step), (restart, resumed_at) = result["starts"]
    assert (first, first_step, restart) == (0, 0, 1)
    assert resumed_at >= 2, f"restarted from scratch instead of resuming: {result}"


@pytest.mark.slurm
def test_preemption_checkpoints_and_requeues(executor, tmp_path):
    """USR2 (what SLURM sends before preemption/timeout) -> submitit calls checkpoint(),
    requeues the job itself, and the restarted job continues from the pickled state."""
    steps, progress = 8, tmp_path / "progress.json"
    job = executor.submit(MemoryResumedSum(), str(progress), steps, 0.5)
    _wait_for_progress(progress, "step", 2, job)
    job._interrupt()  # submitit's own test hook: scancel --signal SIGTERM, then USR2
    _release_requeued(job.job_id)
    result = _wait(job)
    assert result["total"] == sum(i * i for i in range(steps))
    assert result["checkpoints"] == 1
    (first, first_step), (restart, resumed_at) = result["starts"]
    assert (first, first_step, restart) == (0, 0, 1)
    assert resumed_at >= 2, f"restarted from scratch instead of the checkpoint: {result}"
    assert "this job is preempted" in (job.stderr() or "")


@pytest.mark.slurm
def test_exception_comes_back_as_failed_job_error(executor):
    from submitit.core.utils import FailedJobError

    job = executor.submit(_fail, "boom-from-slurm-job")
    with pytest.raises(FailedJobError) as excinfo:
        _wait(job)
    message = str(excinfo.value)
    assert "ValueError: boom-from-slurm-job" in message
    assert str(job.paths.stderr) in message


# ----------------------------------------------------------------------------- MLflow server


@pytest.mark.server
def test_mlflow_server_roundtrip(mlflow_server_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = mlflow_server_uri
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(f"bench-test-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id, run_name="roundtrip", tags={"bench.test": "yes"})
    run_id = run.info.run_id
    client.log_param(run_id, "backbone", "pixels")
    client.log_metric(run_id, "top1", 0.875, step=3)
    (tmp_path / "report.txt").write_text("hello from the test\n")
    client.log_artifact(run_id, str(tmp_path / "report.txt"))
    client.set_terminated(run_id)

    # Artifacts go through the server (--serve-artifacts), not to a local path.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri

    found = _rest(
        uri,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp_id], "filter": "metrics.top1 > 0.5 and params.backbone = 'pixels'"},
    )
    assert [r["info"]["run_id"] for r in found["runs"]] == [run_id]
    data = found["runs"][0]["data"]
    assert {m["key"]: m["value"] for m in data["metrics"]} == {"top1": 0.875}
    assert {p["key"]: p["value"] for p in data["params"]} == {"backbone": "pixels"}
    assert found["runs"][0]["info"]["status"] == "FINISHED"

    got = _rest(uri, f"/api/2.0/mlflow/runs/get?run_id={urllib.parse.quote(run_id)}")
    assert got["run"]["info"]["run_name"] == "roundtrip"
    listed = _rest(uri, f"/api/2.0/mlflow/artifacts/list?run_id={urllib.parse.quote(run_id)}")
    assert [f["path"] for f in listed["files"]] == ["report.txt"]
    local = client.download_artifacts(run_id, "report.txt", str(tmp_path / "dl"))
    assert Path(local).read_text() == "hello from the test\n"
