"""Where jobs run: in this process, in local subprocesses through submitit, or on SLURM.

Every job is a picklable callable (``bench.jobs``); an executor only decides where it runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXECUTORS = ("local", "submitit-local", "slurm")


def submitit_executor(kind: str, folder: Path, **slurm: Any):
    """A submitit executor: ``submitit-local`` (subprocesses) or ``slurm`` (sbatch)."""
    import submitit

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "submitit-local":
        executor = submitit.AutoExecutor(folder=str(folder), cluster="local")
        executor.update_parameters(timeout_min=int(slurm.get("timeout_min", 240)))
        return executor
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    executor.update_parameters(**{k: v for k, v in slurm.items() if v is not None})
    return executor


def run_jobs(
    jobs: Sequence[Callable[[], Any]],
    executor: str = "local",
    folder: str | os.PathLike | None = None,
    **params: Any,
) -> list[Any]:
    """Run ``jobs`` and return their results in order; a failed job raises with its log path."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; executors: {', '.join(EXECUTORS)}")
    if executor == "local":
        return [job() for job in jobs]
    from bench.cache import results_dir

    ex = submitit_executor(executor, Path(folder or results_dir() / "jobs"), **params)
    with ex.batch():  # one job array on SLURM
        submitted = [ex.submit(job) for job in jobs]
    return [job.result() for job in submitted]
