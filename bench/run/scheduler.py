"""The one scheduler: jobs run where an executor puts them: in this process, in local subprocesses,
on SLURM or on any cluster submitit has an executor for.

Every job is a picklable callable (``bench.run.jobs``); an executor only decides where it runs. The
submitit executors share one loop here: submit (one job array per batch), poll, resubmit failures
up to ``retries`` times, report each job's outcome. Failures come from submitit's job API
(``job.exception()``, the job's stderr path); a job its queue no longer lists without a result
(``scancel``, node failure) is reported as such instead of being waited on forever.

Polling is gentle on a shared cluster: each poll reads the jobs' result files (submitit's
``job.done()``, whose own watcher asks ``sacct`` about every job in one call, backing off), and the
queue is listed in one call for all jobs, every ``poll`` seconds at first, then every half of the
time since the last submission, up to once a minute (``_Queue``; submitit's watcher's schedule).
An executor refuses to start, in one line, where its jobs cannot run (``Executor.check``: the
cluster's tools missing, no controller answering), before any work.

Executors are plugins (``executors``): a ``bench.run.scheduler.Executor`` subclass registered with
``@executors.register(name)`` or the entry-point group ``bench.executors``. Every executor that
submitit knows (its own and its plugins', entry-point group ``submitit``) is a kind too, under
submitit's name: the kind goes to ``submitit.AutoExecutor(cluster=...)`` as it is. The built-in
kinds (``bench.run.executors``, this project's own entry point): ``local`` (this process),
``submitit-local``, ``slurm``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench.errors import BenchError, UsageError
from bench.registry import Registry

SLURM_FIELDS = {  # profile key / CLI flag -> submitit AutoExecutor parameter
    "partition": "slurm_partition", "gpus": "gpus_per_node", "cpus": "cpus_per_task",
    "mem_gb": "mem_gb", "time_min": "timeout_min", "account": "slurm_account",
    "qos": "slurm_qos", "constraint": "slurm_constraint", "array_parallelism":
    "slurm_array_parallelism",
}
PROFILE_KEYS = ("executor", "setup", *SLURM_FIELDS)
QUERY_EVERY_MAX_S = 60.0  # the longest wait between two listings of the queue
# A job missing from its queue this long without a result has left it (submitit, too, waits this
# long for a result file a shared filesystem may show late).
GONE_AFTER_S = 15.0


@dataclass
class ExecutorConfig:
    """Where jobs run: ``kind`` (a name in ``executors``) and the submitit parameters (from a
    profile and flags)."""

    kind: str = "local"
    params: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None  # submitit logs and pickles (default RESULTS/jobs)
    checked: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        executors.get(self.kind)  # an unknown kind fails here, naming the known ones

    @property
    def in_process(self) -> bool:
        """Whether jobs run in this process (the driver may hand them what it built)."""
        return executors.get(self.kind).in_process

    def check(self) -> None:
        """Refuse in one line (``ExecutorUnavailable``) where these jobs cannot run (asked once:
        the command and the library both check before their work)."""
        if not self.checked:
            self.create().check()
            self.checked = True

    def create(self) -> Executor:
        return executors.get(self.kind)(self)


class Executor(ABC):
    """Where jobs run. Register a subclass with ``@executors.register(name)`` or the entry-point
    group ``bench.executors`` and it is a ``--executor`` choice."""

    in_process: ClassVar[bool] = False

    def __init__(self, config: ExecutorConfig):
        self.config = config

    def check(self) -> None:
        """Refuse, with an ``ExecutorUnavailable`` naming what is missing and what to do, when
        jobs cannot run where this executor sends them (called before any work). By default
        they can."""
        return None

    @abstractmethod
    def run(self, jobs: Sequence[Callable[[], Any]], retries: int, extract_array: int,
            poll: float, on_states: Callable[[list[str]], None] | None,
            on_retry: Callable[[JobOutcome], None] | None) -> list[JobOutcome]:
        """Every job's outcome, in order (``run_jobs`` documents the arguments)."""


class SubmititExecutor(Executor):
    """Jobs through ``submitit.AutoExecutor(cluster=self.cluster)``. Subclasses say what their
    cluster adds: which parameters apply, job dependencies, a queue to ask about lost jobs."""

    cluster: ClassVar[str | None] = None  # submitit's executor name; None: the kind itself
    # (who refused, what to check) when submitting fails: one line instead of a traceback
    submission_hint: ClassVar[tuple[str, str] | None] = None

    def parameters(self) -> dict[str, Any]:
        """The ``update_parameters`` arguments (AutoExecutor ignores other clusters' prefixes)."""
        return {k: v for k, v in self.config.params.items() if v is not None}

    def submit_after(self, executor: Any, job: Callable[[], Any], parts: list[Any]) -> Any:
        """Submit ``job`` to run after the submitted ``parts``; without dependencies, wait here."""
        for part in parts:
            part.result()
        return executor.submit(job)

    def queue_states(self) -> dict[str, str] | None:
        """The raw state of every job of this user that the queue lists (one query, however many
        jobs are running: a job missing from it has left the queue); None when there is no queue
        to ask or it did not answer."""
        return None

    def run(self, jobs, retries, extract_array, poll, on_states, on_retry) -> list[JobOutcome]:
        return _Submitted(self, jobs, retries, extract_array, poll, on_states, on_retry).wait()


def _submitit_kinds(plugins: Registry[type[Executor]]) -> None:
    """Every executor submitit knows (its plugins' too) not named here already: passed through."""
    from submitit.core.plugins import get_executors

    for name in get_executors():
        if name not in plugins:
            plugins.add(SubmititExecutor, name)


executors: Registry[type[Executor]] = Registry("executor", Executor, classes=True,
                                               also=_submitit_kinds)


def load_profile(name: str, path: str | None = None) -> dict[str, Any]:
    """A named profile from the profiles YAML (``bench.paths.profiles_file``)."""
    import yaml

    from bench.paths import profiles_file

    file = profiles_file(path)
    if not file.exists():
        raise UsageError(f"profiles file {file} not found (needed for --profile {name}); "
                         "see docs/getting-started/slurm.md#profiles for its format")
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


class ExecutorUnavailable(BenchError, RuntimeError):
    """Jobs cannot run where the executor sends them: the cluster's tools are not installed here,
    or no controller answers."""


class JobGone(RuntimeError):
    """A job that left its queue without writing a result (cancelled, node failure)."""


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
    config.check()  # where the callers (bench.api) have not already
    return config.create().run(jobs, retries, extract_array, poll, on_states, on_retry)


class _Queue:
    """The jobs' queue as of its last listing, asked once for all jobs at a time: every ``poll``
    seconds at first, then every half of the time since the last submission, up to once a
    minute (as submitit's watcher asks sacct)."""

    def __init__(self, kind: SubmititExecutor, poll: float):
        self.kind, self.poll = kind, poll
        self.states: dict[str, str] = {}
        self.asked = self.listed = float("-inf")  # the last query; the last answer
        self.submitted = time.monotonic()
        self.missing_since: dict[str, float] = {}  # job id -> first listing that lacked it

    def submitted_now(self) -> None:
        """New jobs: list the queue often again (their start is when most changes)."""
        self.submitted = time.monotonic()

    def interval(self, now: float) -> float:
        return min(max(self.poll, QUERY_EVERY_MAX_S), max(self.poll, (now - self.submitted) / 2))

    def refresh(self, job_ids: list[str]) -> None:
        """List the queue if the interval has passed (one query for every job)."""
        now = time.monotonic()
        if now - self.asked < self.interval(now):
            return
        self.asked = now
        states = self.kind.queue_states()
        if states is None:  # no queue, or no answer: nothing is declared gone
            return
        self.states, self.listed = states, now
        for job_id in job_ids:
            if job_id in states:
                self.missing_since.pop(job_id, None)
            else:
                self.missing_since.setdefault(job_id, now)

    def gone(self, job_id: str) -> bool:
        """Whether the listings have lacked the job for ``GONE_AFTER_S`` (the caller checks
        after the listing that it has no result either)."""
        since = self.missing_since.get(job_id)
        return since is not None and self.listed - since >= GONE_AFTER_S


class _Submitted:
    """Jobs on submitit: submit, poll, resubmit failures, collect outcomes."""

    def __init__(self, kind: SubmititExecutor, jobs, retries: int, extract_array: int,
                 poll: float, on_states, on_retry):
        import submitit

        from bench.paths import jobs_dir

        folder = jobs_dir(kind.config.folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.executor = submitit.AutoExecutor(folder=str(folder),
                                              cluster=kind.cluster or kind.config.kind)
        self.executor.update_parameters(**kind.parameters())
        self.jobs, self.retries, self.extract_array = list(jobs), retries, extract_array
        self.poll, self.on_states, self.on_retry = poll, on_states, on_retry
        self.outcomes: list[JobOutcome | None] = [None] * len(self.jobs)
        self.tries = [0] * len(self.jobs)
        self.queue = _Queue(kind, poll)

    def wait(self) -> list[JobOutcome]:
        running = self._submit(list(range(len(self.jobs))))
        last: list[str] = []
        while running:
            # The listing first, the result files after it: a job that finished just before the
            # listing has its result by then, so a job missing from both has left the queue.
            self.queue.refresh([handle.job_id for handle in running.values()])
            retry = []
            for i, handle in list(running.items()):
                error = self._finished(handle)
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
        self.queue.submitted_now()
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # the submitter's errors: in the message
                if self.extract_array <= 1:
                    with self.executor.batch():  # one job array
                        handles = [self.executor.submit(self.jobs[i]) for i in indices]
                    return dict(zip(indices, handles))
                return {i: self._submit_after_extraction(self.jobs[i]) for i in indices}
        except (FailedJobError, OSError) as e:
            hint = self.kind.submission_hint
            if not hint:
                raise
            lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            raise SubmissionError(f"{hint[0]} refused the submission ({lines[-1].strip()}): "
                                  f"{hint[1]} Or run with --executor local") from e

    def _submit_after_extraction(self, job) -> Any:
        with self.executor.batch():
            parts = [self.executor.submit(part) for part in job.extraction_jobs(self.extract_array)]
        return self.kind.submit_after(self.executor, job, parts)

    def _finished(self, handle) -> BaseException | None | bool:
        """False while running; else the job's error (None if it succeeded)."""
        if handle.done():  # its result file, or submitit's watcher (sacct) saying it ended
            return handle.exception()
        if self.queue.gone(handle.job_id):
            return JobGone(f"{self.kind.config.kind} job {handle.job_id} left the queue "
                           "without a result (cancelled, or its node failed)")
        return False

    def _state(self, i: int, running: dict[int, Any]) -> str:
        if i not in running:
            outcome = self.outcomes[i]
            return "done" if outcome is not None and outcome.ok else "failed" if outcome else "pending"
        handle = running[i]
        try:
            raw = handle.state
        except Exception:  # noqa: BLE001  (no accounting: submitit may raise)
            raw = "UNKNOWN"
        if raw == "UNKNOWN":  # the queue's last listing, where there is one
            raw = self.queue.states.get(handle.job_id, "UNKNOWN")
        return {"PENDING": "pending", "REQUEUED": "pending", "CONFIGURING": "pending"}.get(
            raw, "running")


def summary(outcome: JobOutcome, lines: int = 2) -> str:
    """One line for a failed try: its error here, or the last lines of its log file."""
    if outcome.log is None or isinstance(outcome.error, JobGone):
        return f"{type(outcome.error).__name__}: {outcome.error}".splitlines()[0]
    path = Path(outcome.log)
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(t.strip() for t in text[-lines:]) or type(outcome.error).__name__
