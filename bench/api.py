"""The library's front door: run a cell, run a sweep, build a leaderboard. No argparse here.

    from bench.api import run
    from bench.spec import RunSpec, RunOptions
    records = run(RunSpec(backbone="pixels", task="digits"), RunOptions(suite="mine"))

``run`` resolves the spec in this process when the job runs here (the backbone is built once);
for submitit and SLURM it checks what it can without a model (names, head settings, the data's
layout) and the job resolves where it runs. Either way a cell whose identity already has a
finished result is reused, not recomputed (``RunOptions.force`` recomputes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.errors import BenchError
from bench.leaderboard import Leaderboard
from bench.record import RunRecord
from bench.scheduler import ExecutorConfig, JobOutcome, run_jobs, summary
from bench.spec import RunOptions, RunSpec
from bench.sweep import SweepPlan


class JobFailedError(BenchError):
    """A job that failed where it ran (another process, a SLURM node); the message has its log."""


def job_options(options: RunOptions, executor: ExecutorConfig) -> RunOptions:
    """Options a job needs to agree with the driver wherever it runs: the experiment (created
    once, here), the tracking URI and the cache folder as absolute values."""
    from bench.paths import cache_dir, tracking_uri
    from bench.tracking import ensure_experiment

    experiment_id = options.experiment_id or ensure_experiment(options.suite)
    if executor.kind == "local":
        return replace(options, experiment_id=experiment_id)
    return replace(options, experiment_id=experiment_id, tracking_uri=tracking_uri(),
                   cache_dir=str(cache_dir(options.cache_dir)), progress=False)


def run(spec: RunSpec, options: RunOptions | None = None,
        executor: ExecutorConfig | None = None) -> list[RunRecord]:
    """Extract (or reuse) the features of ``spec`` and evaluate each cell; its records."""
    from bench.jobs import BenchJob
    from bench.spec import build_task, check_spec, resolve

    executor = executor or ExecutorConfig()
    options = job_options(options or RunOptions(), executor)
    check_spec(spec)
    if executor.kind == "local":
        job = BenchJob(spec, options, prepared=resolve(spec, options))
    else:
        build_task(spec)  # missing data fails here, before anything is submitted
        job = BenchJob(spec, options)
    [outcome] = run_jobs([job], executor)
    if not outcome.ok:
        raise_failure(outcome)
    return outcome.result


def raise_failure(outcome: JobOutcome) -> None:
    """Re-raise a job's error: as it was when it ran here, else with its log."""
    if outcome.log is None:
        raise outcome.error
    raise JobFailedError(f"job failed: {summary(outcome)}\n  log: {outcome.log}") from outcome.error


@dataclass
class SweepReport:
    records: list[RunRecord] = field(default_factory=list)
    failures: list[JobOutcome] = field(default_factory=list)


def sweep(plan: SweepPlan, executor: ExecutorConfig | None = None, retries: int = 1,
          extract_array: int = 1, poll: float = 5.0,
          on_states: Callable[[list[str]], None] | None = None,
          on_retry: Callable[[JobOutcome], None] | None = None) -> SweepReport:
    """Run every job of ``plan`` (failures retried, then reported with their logs)."""
    executor = executor or ExecutorConfig()
    for job in plan.jobs:
        job.options = job_options(job.options, executor)
    report = SweepReport()
    for outcome in run_jobs(plan.jobs, executor, retries, extract_array, poll, on_states,
                            on_retry):
        if outcome.ok:
            report.records += outcome.result
        else:
            report.failures.append(outcome)
    return report


def leaderboard(suites: list[str], metric: str = "test_top1", references: bool = False,
                title: str | None = None, log: bool = True,
                figures: bool = False) -> tuple[Leaderboard, dict[str, Path]]:
    """The backbone x task table of these suites, written under the results folder (and logged
    to the first suite's experiment); its file paths, figures included when asked for."""
    from bench import leaderboard as boards
    from bench.paths import results_dir
    from bench.tracking import ensure_experiment

    board = boards.build(suites, metric, references)
    paths = boards.write(board, results_dir(), title or f"bench leaderboard: {', '.join(suites)} "
                         f"({metric}, best validation protocol per cell)")
    drawn = write_figures(suites) if figures else {}
    if log and not board.table.empty:
        boards.log(ensure_experiment(suites[0]), board, paths, drawn)
    return board, paths | {f"figure:{k}": v for k, v in drawn.items()}


def write_figures(suites: list[str]) -> dict[str, Path]:
    """The reference sources' figures (the paper's ablations) for these suites' records."""
    from bench.paths import results_dir
    from bench.references import figures
    from bench.tracking import experiment_ids, find_records

    folder = results_dir() / "figures"
    paths = {}
    for name, png in figures(find_records(experiment_ids(suites))).items():
        folder.mkdir(parents=True, exist_ok=True)
        paths[name] = folder / name
        paths[name].write_bytes(png)
    return paths
