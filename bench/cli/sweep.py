"""``bench sweep``: backbones x tasks x grid as jobs, here, in subprocesses or on SLURM."""

from __future__ import annotations

import argparse
import sys
import time

from bench.cli import options


def add_parser(sub) -> None:
    from bench.protocol import head_kinds

    p = sub.add_parser("sweep", help="backbones x tasks x grid as jobs (local, submitit, SLURM)")
    p.add_argument("--backbones", required=True, type=options.csv,
                   help="comma-separated backbone presets")
    p.add_argument("--tasks", required=True, type=options.csv, help="comma-separated tasks")
    p.add_argument("--grid", nargs="*", default=[], metavar="AXIS=V1,V2",
                   help="grid axes: layer, pool, head, and backbone axes such as block and t")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve every job here and print its costs (images, cache bytes per "
                   "split, extraction time, probe memory), its cells, what is done and whether "
                   "the cache's disk holds it; run nothing")
    options.add_feature_args(p)
    options.add_keep_arg(p)
    options.add_view_args(p)
    options.add_online_arg(p)
    options.add_probe_args(p, head_kinds())
    options.add_schedule_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import leaderboard, sweep
    from bench.cli.runs import ID_CHARS, tally
    from bench.results.leaderboard import FOOTER, footnotes, written_lines
    from bench.paths import tracking_uri
    from bench.run.sweep import describe, make_plan, parse_grid

    executor = options.executor(args)
    grid = parse_grid(args.grid)
    template = options.run_spec(args, args.backbones[0], args.tasks[0], [], [])
    run_options = options.run_options(args)
    run_options.progress = False
    plan = make_plan(args.backbones, args.tasks, grid, template, run_options)
    if args.dry_run:
        print(f"executor: {executor.kind} {executor.params or ''}")
        dry = describe(plan)
        print("\n".join(dry.lines))
        if not dry.resolved:
            print("bench: no job of this sweep is resolvable here (see above): nothing would run",
                  file=sys.stderr)
            return 1
        if dry.finished == 0:
            from bench.results.leaderboard import elsewhere, suites_with_results

            if set(suites_with_results()) - {args.suite}:
                print(f"note: {elsewhere([args.suite])}")
        return 0
    table = LiveTable([f"{j.spec.backbone:>20s} x {j.spec.task:<12s} head={j.spec.head:<9s}"
                       for j in plan.jobs])
    report = sweep(plan, executor, args.retries, args.extract_array, args.poll,
                   None if executor.in_process else table.show, _print_retry(args.retries))
    for record in report.records:
        note = " (reused)" if record.reused else ""
        print(f"  {record.name}: test_top1 {record.metrics['test_top1']:.2f} val_{record.headline}"
              f" {record.val_score:.2f}  run {record.run_id[:ID_CHARS]}{note}", flush=True)
    print(tally(report.records, args.suite))
    board, paths = leaderboard([args.suite], references=True, figures=True,
                               title=f"bench sweep: {args.suite}", protocol="all")
    if not board.table.empty:  # its marks explained, as `bench leaderboard` prints them
        print("\n\n".join(["", board.display.to_markdown(), FOOTER, *footnotes(board.cells)]))
    for name, path in paths.items():
        if name.startswith("figure:"):
            print(f"figure: {path}")
    print("\n".join(written_lines(board, paths)))
    print(options.ui_hint(tracking_uri(), args.suite))
    from bench.run.scheduler import summary

    for failure in report.failures:
        spec = failure.job.spec
        print(f"FAILED {spec.backbone} x {spec.task} head={spec.head}: {summary(failure)}\n"
              f"  log: {failure.log or '(this process)'}", file=sys.stderr)
    return 1 if report.failures else 0


def _print_retry(retries: int):
    from bench.run.scheduler import summary

    def show(outcome) -> None:
        spec = outcome.job.spec
        print(f"retrying {spec.backbone} x {spec.task} ({outcome.tries}/{retries}): "
              f"{summary(outcome)}", flush=True)
    return show


class LiveTable:
    """The jobs' states, reprinted whenever one changes."""

    def __init__(self, labels: list[str]):
        self.labels = labels

    def show(self, states: list[str]) -> None:
        counts = {s: states.count(s) for s in ("pending", "running", "done", "failed")}
        print(time.strftime("%H:%M:%S"), " ".join(f"{k} {v}" for k, v in counts.items()))
        print("\n".join(f"  {label}  {state}" for label, state in zip(self.labels, states)),
              flush=True)
