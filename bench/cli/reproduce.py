"""``bench reproduce PAPER``: a paper's tables as one plan and one sweep (local, submitit, SLURM)."""

from __future__ import annotations

import argparse
import sys

from bench.cli import options

STUDY_RECIPE = "paper"  # bench.study.plan.STUDY_RECIPE, spelt here: the parser imports no study


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce", help="a paper's tables and figures as one plan and one sweep: each cell "
        "resolved like `bench run`, one forward pass shared by the cells of a backbone and task")
    p.add_argument("paper", help="a paper name (bench/papers/NAME.yaml or an entry point in "
                   "bench.papers) or the path of a paper .yaml file")
    p.add_argument("--table", action="append", default=[], metavar="KEY",
                   help="only this table (repeat or comma-separate for several; default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve every cell here from local files only (nothing is downloaded) "
                   "and print the plan: cells done, to run, not resolvable here (and why), "
                   "forward passes, cache, time, what a full run would download; run nothing")
    options.add_feature_args(p, spec_args=False)
    p.add_argument("--seed", type=int, default=0, help="the probes' seed (default 0)")
    options.add_recipe_arg(p, STUDY_RECIPE, study=True)
    options.add_view_args(p)
    options.add_online_arg(p)
    p.add_argument("--suite", default="bench", help="MLflow experiment (one per suite)")
    p.add_argument("--force", action="store_true",
                   help="recompute cells that already have a finished result")
    options.add_schedule_args(p)
    p.set_defaults(func=main)


def spec_template(args: argparse.Namespace):
    """The run-spec fields no cell of a paper sets, from the flags that give them (`bench
    reproduce` and `bench report` both): the cells resolve to the identities they ran."""
    from bench.run.spec import RunSpec

    return RunSpec(backbone="", task="", seed=args.seed, precision=args.precision,
                   skip_corrupt=args.skip_corrupt, cache_dtype=args.cache_dtype,
                   recipe=args.recipe, **options.view_settings(args))


def main(args: argparse.Namespace) -> int:
    from bench.api import reproduce, reproduce_plan
    from bench.cli.runs import ID_CHARS, tally
    from bench.cli.sweep import LiveTable, _print_retry
    from bench.paths import tracking_uri
    from bench.run.scheduler import summary
    from bench.study.plan import describe_plan

    # every flag is read here, before any work: each reaches the plan, the jobs or the scheduler
    executor = options.executor(args)
    if not args.dry_run:
        executor.check()  # before the plan opens the tracking store: no SLURM here
    run_options = options.run_options(args)
    run_options.progress = run_options.progress and executor.in_process
    template = spec_template(args)
    schedule = (args.retries, args.extract_array, args.poll)
    tables = [t for a in args.table for t in options.csv(a)] or None
    plan = reproduce_plan(args.paper, tables, run_options, template, local_only=args.dry_run)
    print(f"executor: {executor.kind} {executor.params or ''}")
    print("\n".join(describe_plan(plan)), flush=True)
    if args.dry_run:
        return 0
    table = LiveTable([f"{j.spec.backbone:>20s} x {j.spec.task:<12s}" for j in plan.pending_jobs()])
    report = reproduce(plan, executor, *schedule,
                       None if executor.in_process else table.show, _print_retry(args.retries))
    for record in report.records:
        note = " (reused)" if record.reused else ""
        print(f"  {record.name}: test_{record.headline} "
              f"{record.metrics[f'test_{record.headline}']:.2f}  run "
              f"{record.run_id[:ID_CHARS]}{note}")
    print(tally(report.records, args.suite))
    for key, result in report.similarity.items():
        note = " (reused)" if result.reused else ""
        print(f"  similarity {key}: {result.name}, {len(result.rows)} x {len(result.cols)} "
              f"points  run {result.run_id}{note}")
    for what, why in report.unavailable.items():
        print(f"  unavailable here: {what}: {why}")
    print(f"MLflow: {tracking_uri()} (experiment {args.suite}); `bench report {args.paper}` "
          "sets the results beside the paper")
    for failure in report.failures:
        spec = failure.job.spec
        print(f"FAILED {spec.backbone} x {spec.task}: {summary(failure)}\n"
              f"  log: {failure.log or '(this process)'}", file=sys.stderr)
    for key, why in report.similarity_failures.items():
        print(f"FAILED similarity {key}: {why}", file=sys.stderr)
    return 1 if report.failures or report.similarity_failures else 0
