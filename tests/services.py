"""Helpers for the tests that use real services (SLURM, an MLflow server); fixtures are in conftest.py.

Contract (env vars), set by ``.ci/run`` and by a developer who starts the services by hand:

    sudo scripts/slurm-up.sh                      # then: export BENCH_TEST_SLURM=1
    scripts/mlflow-up.sh /tmp/bench-mlflow 5055   # then: export BENCH_TEST_MLFLOW_URI=http://127.0.0.1:5055

* ``BENCH_TEST_SLURM=1`` runs the ``slurm`` tests; ``BENCH_TEST_MLFLOW_URI`` the ``server`` tests.
  Unset, they skip, except under CI (``CI`` true/1) where that is an error; ``=0`` skips on purpose.
* Every test not marked ``slurm`` runs with SLURM's commands off PATH (``hide_slurm``), so it
  passes the same on a machine without SLURM, with SLURM's tools but no controller, and on the CI
  cluster: a test that needs SLURM must say so with the marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

SLURM_ENV = "BENCH_TEST_SLURM"
MLFLOW_ENV = "BENCH_TEST_MLFLOW_URI"
PARTITION = "debug"
# The commands of SLURM's packages (clients, daemons): what bench, submitit or a test could run.
SLURM_COMMANDS = frozenset({
    "sacct", "sacctmgr", "salloc", "sattach", "sbatch", "sbcast", "scancel", "scontrol",
    "scrontab", "sdiag", "sh5util", "sinfo", "sprio", "squeue", "sreport", "srun", "sshare",
    "sstat", "strigger", "sview", "slurmctld", "slurmd", "slurmdbd", "slurmstepd"})
_WITHOUT_SLURM: dict[str, str] = {}  # PATH -> the same PATH without SLURM's commands


def path_without_slurm(path: str, links: Path) -> str:
    """``path`` with each folder that holds a SLURM command replaced by a folder (under
    ``links``) of links to everything else in it: on Debian /bin is /usr/bin, so a folder cannot
    simply be dropped. Folders without SLURM stay as they are (a virtual environment's python
    must be run from its own folder)."""
    if path not in _WITHOUT_SLURM:
        folders = []
        for folder in path.split(os.pathsep):
            names = os.listdir(folder) if os.path.isdir(folder) else []
            if SLURM_COMMANDS.isdisjoint(names):
                folders.append(folder)
                continue
            copy = links / os.path.realpath(folder).strip("/").replace("/", "_")
            if not copy.exists():
                copy.mkdir(parents=True)
                for name in set(names) - SLURM_COMMANDS:
                    (copy / name).symlink_to(os.path.join(folder, name))
            folders.append(str(copy))
        _WITHOUT_SLURM[path] = os.pathsep.join(folders)
    return _WITHOUT_SLURM[path]


@pytest.fixture(autouse=True)
def hide_slurm(request, monkeypatch, tmp_path_factory):
    """SLURM's commands off PATH for every test not marked ``slurm`` (see the module's notes)."""
    if request.node.get_closest_marker("slurm") is None:
        links = tmp_path_factory.getbasetemp() / "path-without-slurm"
        monkeypatch.setenv("PATH", path_without_slurm(os.environ.get("PATH", ""), links))


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _require(var: str, how: str, example: str) -> str:
    """Value of ``var``; skip (or fail under CI) when it is unset or "0"."""
    value = os.environ.get(var, "").strip()
    if value == "0":
        pytest.skip(f"{var}=0: skipped on request")
    if not value:
        message = f"{var} is not set: start the service with {how}, then export {var}={example}"
        if _in_ci():
            pytest.fail(f"CI must run this test. {message} (or set {var}=0 to opt out)")
        pytest.skip(message)
    return value


def _sh(*cmd: str, timeout: float = 30) -> str:
    """The command's output (stdout and stderr); where it is not installed, saying so."""
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return f"{cmd[0]}: command not found"
    return (proc.stdout + proc.stderr).strip()


def _squeue_state(job_id: str) -> str:
    return _sh("squeue", "-h", "-j", str(job_id), "-o", "%T")


def _release_requeued(job_id: str, timeout: float = 30.0) -> None:
    """Make a requeued job eligible now (SLURM holds requeued jobs back ~2 min: BeginTime)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _squeue_state(job_id) == "PENDING":
            # Not at once: slurmd may still be revoking the previous run's credential, and a
            # launch that races it is killed ("Killing non-startable batch job: Job credential
            # revoked", seen in CI's slurmctld.log), which is why SLURM itself waits ~2 minutes.
            time.sleep(3)
            out = _sh("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            assert not out, f"scontrol update StartTime=now: {out}"
            return
        time.sleep(0.25)
    pytest.fail(
        f"job {job_id} never went back to PENDING after the requeue: {_squeue_state(job_id)}"
    )


def _rest(uri: str, path: str, payload: dict | None = None) -> dict:
    if payload is None:
        req = urllib.request.Request(f"{uri}{path}")
    else:
        req = urllib.request.Request(
            f"{uri}{path}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())
