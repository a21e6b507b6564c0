"""The one scheduler: jobs run in this process, in local subprocesses or on SLURM, through submitit.

Every job is a picklable callable (``bench.jobs``); the scheduler only decides where it runs,
submits (SLURM: one job array per batch), polls, resubmits failures up to ``retries`` times and
reports each job's outcome. Failures come from submitit's job API (``job.exception()``, the job's
stderr path); a job that leaves the SLURM queue without a result (``scancel``, node failure) is
reported as such instead of being waited on forever.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, UsageError

EXECUTORS = ("local", "submitit-local", "slurm")
SLURM_FIELDS = {  # profile key / CLI flag -> submitit AutoExecutor parameter
    "partition": "slurm_partition", "gpus": "gpus_per_node", "cpus": "cpus_per_task",
    "mem_gb": "mem_gb", "time_min": "timeout_min", "account": "slurm_account",
    "qos": "slurm_qos", "constraint": "slurm_constraint", "array_parallelism":
    "slurm_array_parallelism",
}
PROFILE_KEYS = ("executor", "setup", *SLURM_FIELDS)
GONE_AFTER_POLLS = 3  # polls a job may be missing from squeue before it counts as gone


@dataclass
class ExecutorConfig:
    """Where jobs run: ``kind`` and the submitit parameters (from a profile and flags)."""

    kind: str = "local"
    params: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None  # submitit logs and pickles (default RESULTS/jobs)

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise UsageError(f"unknown executor {self.kind!r}; executors: {', '.join(EXECUTORS)}")


def load_profile(name: str, path: str | None = None) -> dict[str, Any]:
    """A named profile from the profiles YAML (``bench.paths.profiles_file``)."""
    import yaml

    from bench.paths import profiles_file

    file = profiles_file(path)
    if not file.exists():
        raise UsageError(f"profiles file {file} not found (needed for --profile {name}); "
                         "see the README's SLURM section for its format")
    profiles = yaml.safe_load(file.read_text()) or {}
    if name not in profiles:
        raise UsageError(f"no profile {name!r} in {file}; profiles: {', '.join(profiles)}")
    unknown = set(profiles[name]) - set(PROFILE_KEYS)
    if unknown:
        raise UsageError(f"profile {name!r}: unknown keys {sorted(unknown)}; "
                         f"known: {', '.join(PROFILE_KEYS)}")
    return profiles[name]


def executor_config(kind: str | None = None, profile: str | None = None,
                    profiles: str | None = None, folder: str | None = None,
                    **slurm: Any) -> ExecutorConfig:
    """Profile settings overridden by explicit values (``None`` = not given)."""
    settings = load_profile(profile, profiles) if profile else {}
    settings |= {k: v for k, v in slurm.items() if v is not None}
    unknown = set(slurm) - set(SLURM_FIELDS)
    if unknown:
        raise UsageError(f"unknown SLURM settings {sorted(unknown)}; known: {', '.join(SLURM_FIELDS)}")
    params = {SLURM_FIELDS[k]: v for k, v in settings.items() if k in SLURM_FIELDS}
    if "setup" in settings:  # shell lines run before each job (module load, conda activate...)
        params["slurm_setup"] = list(settings["setup"])
    return ExecutorConfig(kind or settings.get("executor", "local"), params, folder)


@dataclass
class JobOutcome:
    job: Any
    result: Any = None
    error: BaseException | None = None
    log: str | None = None  # the job's stderr file (submitit), None in this process
    tries: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


class SubmissionError(BenchError, RuntimeError):
    """sbatch failed: no controller, a refused partition or account..."""


class JobGone(RuntimeError):
    """A SLURM job that left the queue without writing a result (cancelled, node failure)."""


def run_jobs(
    jobs: Sequence[Callable[[], Any]],
    config: ExecutorConfig | None = None,
    retries: int = 0,
    extract_array: int = 1,
    poll: float = 5.0,
    on_states: Callable[[list[str]], None] | None = None,
    on_retry: Callable[[JobOutcome], None] | None = None,
) -> list[JobOutcome]:
    """Run every job (retrying failures ``retries`` times); their outcomes, in order.

    ``extract_array`` > 1 runs each job's extraction first as that many array tasks
    (``job.extraction_jobs(n)``), the job itself after them (SLURM: an afterok dependency).
    ``on_states`` receives every job's state (pending / running / done / failed) when one changes;
    ``on_retry`` each failed try that is resubmitted.
    """
    config = config or ExecutorConfig()
    if config.kind == "local":
        return [_run_here(job, retries, on_retry) for job in jobs]
    return _Submitted(jobs, config, retries, extract_array, poll, on_states, on_retry).wait()


def _run_here(job: Callable[[], Any], retries: int, on_retry) -> JobOutcome:
    for attempt in range(1, retries + 2):
        try:
            return JobOutcome(job, result=job(), tries=attempt)
        except Exception as e:  # kept with its traceback; the caller decides to raise or report
            failed = JobOutcome(job, error=e, tries=attempt)
            if attempt <= retries and on_retry:
                on_retry(failed)
    return failed


class _Submitted:
    """Jobs on submitit: submit, poll, resubmit failures, collect outcomes."""

    def __init__(self, jobs, config: ExecutorConfig, retries: int, extract_array: int,
                 poll: float, on_states, on_retry):
        import submitit

        from bench.paths import jobs_dir

        folder = jobs_dir(config.folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.executor = submitit.AutoExecutor(
            folder=str(folder), cluster="local" if config.kind == "submitit-local" else "slurm")
        params = dict(config.params)
        if config.kind == "submitit-local":
            params = {"timeout_min": int(params.get("timeout_min", 240))}
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        self.jobs, self.retries, self.extract_array = list(jobs), retries, extract_array
        self.poll, self.on_states, self.on_retry = poll, on_states, on_retry
        self.outcomes: list[JobOutcome | None] = [None] * len(self.jobs)
        self.tries = [0] * len(self.jobs)
        self.missing = [0] * len(self.jobs)

    def wait(self) -> list[JobOutcome]:
        running = self._submit(list(range(len(self.jobs))))
        last: list[str] = []
        while running:
            retry = []
            for i, handle in list(running.items()):
                error = self._finished(i, handle)
                if error is False:
                    continue
                running.pop(i)
                if error is None:
                    self.outcomes[i] = JobOutcome(self.jobs[i], result=handle.result(),
                                                  tries=self.tries[i])
                elif self.tries[i] <= self.retries:
                    retry.append(i)
                    if self.on_retry:
                        self.on_retry(JobOutcome(self.jobs[i], error=error, tries=self.tries[i],
                                                 log=str(handle.paths.stderr)))
                else:
                    self.outcomes[i] = JobOutcome(self.jobs[i], error=error, tries=self.tries[i],
                                                  log=str(handle.paths.stderr))
            running.update(self._submit(retry) if retry else {})
            states = [self._state(i, running) for i in range(len(self.jobs))]
            if self.on_states and states != last:
                self.on_states(states)
            last = states
            if running:
                time.sleep(self.poll)
        return [o for o in self.outcomes if o is not None]

    def _submit(self, indices: list[int]) -> dict[int, Any]:
        import contextlib
        import io

        from submitit.core.utils import FailedJobError

        for i in indices:
            self.tries[i] += 1
            self.missing[i] = 0
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # sbatch's errors: in the message
                if self.extract_array <= 1:
                    with self.executor.batch():  # one SLURM job array
                        handles = [self.executor.submit(self.jobs[i]) for i in indices]
                    return dict(zip(indices, handles))
                return {i: self._submit_after_extraction(self.jobs[i]) for i in indices}
        except (FailedJobError, OSError) as e:
            if self.executor.cluster != "slurm":
                raise
            lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            raise SubmissionError(f"SLURM refused the submission ({lines[-1].strip()}): is a "
                                  "controller reachable from here (`sinfo`)? Or run with "
                                  "--executor local") from e

    def _submit_after_extraction(self, job) -> Any:
        with self.executor.batch():
            parts = [self.executor.submit(part) for part in job.extraction_jobs(self.extract_array)]
        if self.executor.cluster != "slurm":  # no job dependencies outside SLURM: wait here
            for part in parts:
                part.result()
            return self.executor.submit(job)
        ids = ":".join(p.job_id for p in parts)
        self.executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{ids}"})
        try:
            return self.executor.submit(job)
        finally:
            self.executor.update_parameters(slurm_additional_parameters={})

    def _finished(self, i: int, handle) -> BaseException | None | bool:
        """False while running; else the job's error (None if it succeeded)."""
        if handle.done():
            return handle.exception()
        if self.executor.cluster == "slurm" and _squeue_state(handle.job_id) == "":
            self.missing[i] += 1
            if self.missing[i] >= GONE_AFTER_POLLS and not handle.done():
                return JobGone(f"SLURM job {handle.job_id} left the queue without a result "
                               "(cancelled, or its node failed)")
        else:
            self.missing[i] = 0
        return False

    def _state(self, i: int, running: dict[int, Any]) -> str:
        if i not in running:
            outcome = self.outcomes[i]
            return "done" if outcome is not None and outcome.ok else "failed" if outcome else "pending"
        handle = running[i]
        try:
            raw = handle.state
        except Exception:  # noqa: BLE001  (sacct unavailable: submitit may raise)
            raw = "UNKNOWN"
        if raw == "UNKNOWN" and self.executor.cluster == "slurm":  # no accounting: ask squeue
            raw = _squeue_state(handle.job_id) or "UNKNOWN"
        return {"PENDING": "pending", "REQUEUED": "pending", "CONFIGURING": "pending"}.get(
            raw, "running")


def _squeue_state(job_id: str) -> str | None:
    """The job's state in squeue; "" when squeue no longer lists it, None when it cannot tell."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    states = dict(line.split(maxsplit=1) for line in out.stdout.splitlines() if " " in line)
    return states.get(str(job_id), "")


def summary(outcome: JobOutcome, lines: int = 2) -> str:
    """One line for a failed try: its error here, or the last lines of its log file."""
    if outcome.log is None or isinstance(outcome.error, JobGone):
        return f"{type(outcome.error).__name__}: {outcome.error}".splitlines()[0]
    path = Path(outcome.log)
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(t.strip() for t in text[-lines:]) or type(outcome.error).__name__
