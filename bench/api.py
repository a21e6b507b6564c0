"""The library's front door: run a cell (over several seeds), run a sweep, reproduce a paper and
report on it, build a leaderboard, compare two results. No argparse here.

    from bench.api import run
    from bench.run.spec import RunSpec, RunOptions
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
from typing import TYPE_CHECKING

from bench.errors import BenchError, UsageError
from bench.results.leaderboard import Leaderboard
from bench.results.record import RunRecord
from bench.run.scheduler import ExecutorConfig, JobOutcome, run_jobs, summary
from bench.run.spec import RunOptions, RunSpec
from bench.run.sweep import SweepPlan

if TYPE_CHECKING:
    from bench.run.similarity_run import SimilarityResult, SimilaritySpec
    from bench.study.judge import Report
    from bench.study.paper import Paper
    from bench.study.plan import PaperPlan
    from bench.stats import Comparison, SeedAggregate


class JobFailedError(BenchError):
    """A job that failed where it ran (another process, a SLURM node); the message has its log."""


def job_options(options: RunOptions, executor: ExecutorConfig) -> RunOptions:
    """Options a job needs to agree with the driver wherever it runs: the experiment (created
    once, here), the tracking URI and the cache folder as absolute values."""
    from bench.paths import cache_dir, check_writable, results_dir, tracking_uri
    from bench.results.store import ensure_experiment

    check_writable(results_dir(), "BENCH_RESULTS")  # pending results and job logs go there
    cache = cache_dir(options.cache_dir)  # a file in its place fails here, before any work
    experiment_id = options.experiment_id or ensure_experiment(options.suite)
    if executor.in_process:
        return replace(options, experiment_id=experiment_id)
    return replace(options, experiment_id=experiment_id, tracking_uri=tracking_uri(),
                   cache_dir=str(cache), progress=False)


def run(spec: RunSpec, options: RunOptions | None = None,
        executor: ExecutorConfig | None = None) -> list[RunRecord]:
    """Extract (or reuse) the features of ``spec`` and evaluate each cell (at ``spec.seed``, for
    each variant the head expands the settings to); its records."""
    return run_seeds(spec, [spec.seed], options, executor).records


@dataclass
class SeedsReport:
    records: list[RunRecord]  # every cell of every variant and seed
    aggregates: dict[str, SeedAggregate]  # run name -> test metrics across seeds (>= 2 seeds)


def run_seeds(spec: RunSpec, seeds: list[int] | None = None, options: RunOptions | None = None,
              executor: ExecutorConfig | None = None) -> SeedsReport:
    """``run`` once per seed and per variant of the head's settings (``HeadKind.expand``, e.g.
    few-shot's list of shots) on the same cached features: one record per cell, variant and
    seed. ``seeds`` None: the head's default (``HeadKind.default_seeds``: seeds 0..n-1 when
    above one, e.g. few-shot's five draws; else ``spec.seed``). With several seeds, each cell's
    test metrics across seeds (mean, sample std) are logged on every record of that cell as
    ``test_top1_seed_mean``/``_seed_std``... and returned."""
    from bench.run.jobs import BenchJob, share_features
    from bench.protocol import head_kind
    from bench.run.spec import build_task, check_spec, resolve

    kind = head_kind(spec.head)
    if seeds is None:
        seeds = list(range(kind.default_seeds)) if kind.default_seeds > 1 else [spec.seed]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"seeds must be distinct and at least one, got {seeds}")
    executor = executor or ExecutorConfig()
    specs = [replace(spec, head_args=settings, seed=seed)
             for settings in kind.expand(spec.head_args) for seed in seeds]
    for one in specs:
        check_spec(one)  # bad settings fail before the tracking store is touched
    executor.check()  # so does an executor whose jobs cannot run (no SLURM here)
    options = job_options(options or RunOptions(), executor)
    if executor.in_process:  # the backbone is built (and its weights read) once
        first = resolve(specs[0], options)
        jobs = [BenchJob(one, options, prepared=first if i == 0 else resolve(
            one, options, backbone=first.backbone)) for i, one in enumerate(specs)]
    else:
        build_task(spec)  # missing data fails here, before anything is submitted
        jobs = [BenchJob(one, options) for one in specs]
    share_features(jobs, executor.in_process)
    records = []
    for outcome in run_jobs(jobs, executor):
        if not outcome.ok:
            raise_failure(outcome)
        records += outcome.result
    return SeedsReport(records, _log_seed_aggregates(records) if len(seeds) > 1 else {})


def _log_seed_aggregates(records: list[RunRecord]) -> dict[str, SeedAggregate]:
    from bench.metrics import names
    from bench.results.record import seed_metrics
    from bench.stats import aggregate_seeds
    from bench.results.runs import add_metrics

    cells: dict[str, list[RunRecord]] = {}
    for record in records:
        cells.setdefault(record.name, []).append(record)
    aggregates = {}
    for name, group in cells.items():
        aggregates[name] = aggregate_seeds(
            [{m: r.metrics[f"test_{m}"] for m in names()} for r in group])
        logged = seed_metrics(aggregates[name])
        for record in group:
            add_metrics(record.run_id, logged)
            record.metrics |= logged
    return aggregates


def raise_failure(outcome: JobOutcome) -> None:
    """Re-raise a job's error: as it was when it ran here, else with its log."""
    if outcome.log is None:
        raise outcome.error
    raise JobFailedError(f"job failed: {summary(outcome)} (log: {outcome.log})") from outcome.error


@dataclass
class SweepReport:
    records: list[RunRecord] = field(default_factory=list)
    failures: list[JobOutcome] = field(default_factory=list)


def sweep(plan: SweepPlan, executor: ExecutorConfig | None = None, retries: int = 1,
          extract_array: int = 1, poll: float = 5.0,
          on_states: Callable[[list[str]], None] | None = None,
          on_retry: Callable[[JobOutcome], None] | None = None) -> SweepReport:
    """Run every job of ``plan`` (failures retried, then reported with their logs)."""
    from bench.run.jobs import share_features
    from bench.run.sweep import describe

    if not plan.jobs:  # nothing to submit (a paper whose cells are all done)
        return SweepReport()
    executor = executor or ExecutorConfig()
    executor.check()  # before the tracking store is touched: no SLURM here, no controller
    share_features(plan.jobs, executor.in_process)
    for job in plan.jobs:
        job.options = job_options(job.options, executor)
    if executor.in_process:  # resolved once, here: costed, then run with the same backbone
        _prepare(plan.jobs)
        refusal = describe(plan).disk_refusal()  # before any job starts
        if refusal is not None:
            raise refusal
    # Elsewhere the submitting node builds no backbone: each job checks the disk where it runs,
    # before it extracts (``bench.run.jobs.work_notice``).
    report = SweepReport()
    for outcome in run_jobs(plan.jobs, executor, retries, extract_array, poll, on_states,
                            on_retry):
        if outcome.ok:
            report.records += outcome.result
        else:
            report.failures.append(outcome)
    return report


def _prepare(jobs: list) -> None:
    """Resolve each job that runs in this process once; one that cannot resolve is left to fail
    as a job (reported with the others' results)."""
    from bench.run.jobs import bench_jobs
    from bench.run.spec import resolve

    for job in bench_jobs(jobs):
        if job.prepared is None:
            try:
                job.prepared = resolve(job.spec, job.options)
            except BenchError:
                pass


@dataclass
class ReproduceReport:
    plan: PaperPlan
    records: list[RunRecord] = field(default_factory=list)  # every cell computed or reused
    failures: list[JobOutcome] = field(default_factory=list)  # jobs that failed, with their logs
    similarity: dict[str, SimilarityResult] = field(default_factory=dict)  # by table key
    similarity_failures: dict[str, str] = field(default_factory=dict)  # table key -> why
    # what could not run for want of weights or data (not a failure): "backbone x task" or
    # "similarity KEY" -> what is missing
    unavailable: dict[str, str] = field(default_factory=dict)


def reproduce_plan(paper: str | Paper, tables: list[str] | None = None,
                   options: RunOptions | None = None,
                   template: RunSpec | None = None, local_only: bool = False) -> PaperPlan:
    """The plan of a paper's cells (its ``tables``, default all), each resolved like ``bench
    run``, and its similarity matrices. ``paper``: a name (``bench.study.paper.paper_names``),
    a .yaml path or a ``Paper``; ``template``: the spec fields no cell sets (seed, precision,
    cache dtype, recipe; None: the defaults under the paper's recipe,
    ``bench.study.plan.STUDY_RECIPE``); ``local_only``: download nothing, list what is missing
    (a dry run)."""
    from bench.study.paper import load_paper
    from bench.study.plan import plan_paper

    paper = (load_paper(paper) if isinstance(paper, str) else paper).select(tables)
    return plan_paper(paper, options or RunOptions(), template, local_only)


def reproduce(plan: PaperPlan, executor: ExecutorConfig | None = None, retries: int = 1,
              extract_array: int = 1, poll: float = 5.0,
              on_states: Callable[[list[str]], None] | None = None,
              on_retry: Callable[[JobOutcome], None] | None = None) -> ReproduceReport:
    """Run a ``reproduce_plan`` as one sweep (finished cells reused, nothing submitted for a
    job whose cells are all done), then its similarity matrices (reused when logged). Cells
    whose weights or data are missing are ``unavailable`` (said, not failed): in this process
    their jobs are not started; elsewhere they run, and a job that finds its weights or data
    missing there is unavailable too."""
    from bench.features.weights import WeightsError
    from bench.study.similarity import colours
    from bench.task import DatasetError

    missing = (WeightsError, DatasetError)
    report = ReproduceReport(plan)
    local = (executor or ExecutorConfig()).in_process
    for one in plan.passes:
        if local and one.problem and any(not plan.cells[c].done for c in one.cells):
            report.unavailable[f"{one.backbone} x {one.task}"] = one.problem
    ran = sweep(SweepPlan(plan.pending_jobs(resolved_only=local)), executor, retries,
                extract_array, poll, on_states, on_retry)
    returned = {r.run_id for r in ran.records}  # cells done before are read back, once
    report.records = ran.records + [r for r in plan.finished() if r.run_id not in returned]
    for outcome in ran.failures:
        if isinstance(outcome.error, missing):
            spec = outcome.job.spec
            report.unavailable[f"{spec.backbone} x {spec.task}"] = _first_line(outcome.error)
        else:
            report.failures.append(outcome)
    for key, spec in plan.similarity.items():
        try:
            report.similarity[key] = similarity(spec, plan.options,
                                                colours(plan.paper.table(key)))
        except BenchError as e:
            if isinstance(e, UsageError):
                raise
            found = report.unavailable if isinstance(e, missing) else report.similarity_failures
            found[f"similarity {key}" if found is report.unavailable else key] = _first_line(e)
    return report


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def leaderboard(suites: list[str], metric: str = "test_top1", references: bool = False,
                title: str | None = None, log: bool = True, figures: bool = False,
                protocol: str = "linear") -> tuple[Leaderboard, dict[str, Path]]:
    """The backbone x task table of these suites for ``protocol``'s heads (``bench.results.leaderboard.
    protocols()``), written under the results folder (and logged to the first suite's
    experiment); its file paths, figures included when asked for."""
    from bench.results import leaderboard as boards
    from bench.paths import results_dir
    from bench.results.store import ensure_experiment

    from bench.study.references import reference_rows

    board = boards.build(suites, metric, reference_rows if references else None, protocol)
    paths = boards.write(board, results_dir(), title or f"bench leaderboard: {', '.join(suites)} "
                         f"({metric}, {protocol} protocol, best validation score per cell)")
    drawn = write_figures(suites) if figures else {}
    if log and not board.table.empty:
        boards.log(ensure_experiment(suites[0]), board, paths, drawn)
    return board, paths | {f"figure:{k}": v for k, v in drawn.items()}


def write_figures(suites: list[str]) -> dict[str, Path]:
    """Accuracy against timestep and pool for these suites' records, with the papers' values
    dashed where they measured the same task (``bench.study.figures.ablation_figures``)."""
    from bench.paths import figures_dir
    from bench.results.runs import find_records
    from bench.results.store import experiment_ids
    from bench.study.figures import ablation_figures

    folder = figures_dir()
    paths = {}
    for name, png in ablation_figures(find_records(experiment_ids(suites))).items():
        folder.mkdir(parents=True, exist_ok=True)
        paths[name] = folder / name
        paths[name].write_bytes(png)
    return paths


def compare(a: str, b: str, task: str | None = None, suites: list[str] | None = None,
            metric: str | None = None, protocol: str = "linear") -> Comparison:
    """Paired comparison of two results on the same test images, from their stored predictions.

    ``a`` and ``b`` are MLflow run ids, or, with ``task``, backbone names: each backbone's
    leaderboard record for that task (best validation score among ``protocol``'s heads in
    ``suites``). ``metric`` defaults to the task's headline (top1 or mean_per_class). Runs whose
    test split manifests differ (another task, or changed files) are refused (``UsageError``);
    runs logged before the manifest was recorded must at least name the same task.
    """
    from bench.results import leaderboard as boards
    from bench.stats import compare as paired
    from bench.results.artifacts import load_predictions
    from bench.results.runs import load_record

    if task is None:
        first, second = load_record(a), load_record(b)
    else:
        first, second = (boards.leading_record(suites or ["bench"], backbone, task, protocol)
                         for backbone in (a, b))
    known = first.test_manifest and second.test_manifest  # else logged before it was recorded
    if (first.test_manifest != second.test_manifest) if known else first.task != second.task:
        raise UsageError(
            f"{first.name} (task {first.task}) and {second.name} (task {second.task}) were "
            "tested on different test sets: a paired comparison needs the same test images; "
            "compare runs of one task on the same data")
    metric = metric or first.headline
    return paired(load_predictions(first.run_id), load_predictions(second.run_id), metric,
                  names=(first.name, second.name))


def similarity(spec: SimilaritySpec, options: RunOptions | None = None,
               colours: tuple[float, float] | None = None) -> SimilarityResult:
    """A similarity matrix (CKA, mutual kNN, CKNNA) between feature points on the same images,
    from the feature cache, with a permutation null and 95% intervals, logged as one MLflow run
    (reused when its identity is already logged) with its heatmaps (``colours``: their range, a
    paper's; default 0-1): see ``bench.run.similarity_run`` and ``bench.study.figures``."""
    from bench.run.similarity_run import similarity as compute
    from bench.study.figures import heatmaps

    return compute(spec, options, figures=lambda result: heatmaps(result, colours))


def report(paper: str, tables: list[str] | None = None, options: RunOptions | None = None,
           template: RunSpec | None = None) -> Report:
    """A paper's report (a name or a .yaml path; ``tables``: only these): every cell's value
    beside ours with its 95% interval and a verdict, the curves, the CKA heatmaps and the claims,
    written to results/reports/PAPER/ and logged as one MLflow run in ``options.suite``;
    ``template`` as given to ``reproduce_plan`` (seed, precision). See ``bench.study.report``."""
    from bench.study.report import make_report

    return make_report(paper, tables, options, template)
