"""The built-in executors: ``local`` (this process), ``submitit-local`` (subprocesses through
submitit) and ``slurm`` (sbatch job arrays through submitit, with SLURM's job dependencies and
``squeue`` to notice lost jobs). ``bench.run.scheduler`` documents how to add one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from bench.run.scheduler import (
    Executor,
    ExecutorUnavailable,
    JobOutcome,
    SubmititExecutor,
    executors,
)

# What a submitting machine runs: sbatch (submitit submits), srun (submitit's job scripts, and
# its executor refuses to start without it), squeue (the queue listing), scontrol (the
# controller check here; submitit's requeue in the job).
SLURM_TOOLS = ("sbatch", "srun", "squeue", "scontrol")
PING_TIMEOUT_S = 30  # a controller slower than this to answer a ping will not take jobs either
ELSEWHERE = "or run with --executor local or submitit-local"


@executors.register("local")
class InProcess(Executor):
    """Jobs run one after the other in this process; a failure keeps its traceback."""

    in_process = True

    def run(self, jobs, retries, extract_array, poll, on_states, on_retry) -> list[JobOutcome]:
        return [_run_here(job, retries, on_retry) for job in jobs]


def _run_here(job, retries: int, on_retry) -> JobOutcome:
    for attempt in range(1, retries + 2):
        try:
            return JobOutcome(job, result=job(), tries=attempt)
        except Exception as e:  # kept with its traceback; the caller decides to raise or report
            failed = JobOutcome(job, error=e, tries=attempt)
            if attempt <= retries and on_retry:
                on_retry(failed)
    return failed


@executors.register("submitit-local")
class SubmititLocal(SubmititExecutor):
    """submitit's local executor: one subprocess per job, on this machine."""

    cluster = "local"

    def parameters(self) -> dict[str, Any]:
        return {"timeout_min": int(self.config.params.get("timeout_min") or 240)}


@executors.register("slurm")
class Slurm(SubmititExecutor):
    """sbatch job arrays; a job waits for its extraction array through an afterok dependency."""

    cluster = "slurm"
    submission_hint = ("SLURM", "is a controller reachable from here (`sinfo`)?")

    def submit_after(self, executor: Any, job, parts: list[Any]) -> Any:
        ids = ":".join(p.job_id for p in parts)
        executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{ids}"})
        try:
            return executor.submit(job)
        finally:
            executor.update_parameters(slurm_additional_parameters={})

    def check(self) -> None:
        """The client tools on PATH, then a controller answering ``scontrol ping`` (its exit
        status is SLURM's own answer: 0 when a controller responds)."""
        missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
        if missing:
            raise ExecutorUnavailable(
                f"the slurm executor needs SLURM's client tools and {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not on PATH: run bench on a machine "
                "that submits to your cluster (a login node), or install them with the "
                f"cluster's slurm.conf (Debian/Ubuntu: apt-get install slurm-client); {ELSEWHERE}")
        try:
            ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                                  timeout=PING_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            said = f"no answer in {PING_TIMEOUT_S} s"
        else:
            if ping.returncode == 0:
                return
            said = next((line.strip() for line in (ping.stdout + ping.stderr).splitlines()
                         if any(c.isalnum() for c in line)), f"exit {ping.returncode}")
        raise ExecutorUnavailable(
            f"no SLURM controller answers from here (`scontrol ping`: {said}): check that "
            "slurmctld runs and that this machine has the cluster's slurm.conf (or SLURM_CONF "
            f"names it); {ELSEWHERE}")

    def queue_states(self) -> dict[str, str] | None:
        """This user's jobs, one line per array task: one squeue call, which the controller
        answers from this user's jobs alone (not the whole cluster's)."""
        try:
            out = subprocess.run(["squeue", "--noheader", "--array", "--user", str(os.getuid()),
                                  "--format", "%i %T"], capture_output=True, text=True,
                                 timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0:
            return None
        return dict(line.split(maxsplit=1) for line in out.stdout.splitlines() if " " in line)
