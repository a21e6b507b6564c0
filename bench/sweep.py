"""``bench sweep``: backbones x tasks x grid points, as jobs on this machine or on SLURM.

The job graph: per (backbone, task, head) one ``BenchJob`` covering every (layer, pool) of the
grid, so one backbone pass per image (per diffusion timestep) feeds all of them and every grid
point's probe reads the shared cache. With ``--extract-array N`` the extraction runs first as an
N-task array (task k writes shards i with i % N == k) and the probe job depends on it.

Grid axes: ``layer``, ``pool``, ``head``, and any axis a backbone preset names in its
``layer_template`` (``block`` and ``t`` for the diffusion U-Net: ``block{block}@t{t}``).
Rerunning a sweep skips finished cells (MLflow ``bench.cell`` tags; ``--force`` recomputes);
a failed job is resubmitted up to ``--retries`` times and reported with its log path.
"""

from __future__ import annotations

import argparse
import itertools
import os
import string
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ENGINE_AXES = ("layer", "pool", "head")
SLURM_FIELDS = {  # profile / flag name -> submitit AutoExecutor parameter
    "partition": "slurm_partition", "gpus": "gpus_per_node", "cpus": "cpus_per_task",
    "mem_gb": "mem_gb", "time_min": "timeout_min", "account": "slurm_account",
    "qos": "slurm_qos", "constraint": "slurm_constraint", "array_parallelism":
    "slurm_array_parallelism",
}


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['block=19,24', 't=90,150'] -> {'block': ['19', '24'], 't': ['90', '150']}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values.strip(","):
            raise ValueError(f"grid axis {item!r}: expected NAME=V1,V2,...")
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def grid_layers(template: str | None, backbone: str, grid: dict[str, list[str]]) -> list[str]:
    """Layer names for a backbone from the grid's layer axis and its template axes."""
    axes = {k: v for k, v in grid.items() if k not in ENGINE_AXES}
    layers = list(grid.get("layer", []))
    if not axes:
        return layers
    parts = (template or "").split("@")
    fields = [{f for _, f, _, _ in string.Formatter().parse(p) if f} for p in parts]
    known = set().union(*fields) if template else set()
    if set(axes) - known:
        extra = ", ".join(sorted(set(axes) - known))
        hint = f"its axes are {', '.join(sorted(known))}" if known else "it has none"
        raise ValueError(f"backbone {backbone!r} has no sweep axis {extra} ({hint}); use layer=...")
    used = [p for p, f in zip(parts, fields) if f and f <= set(axes)]
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        values = dict(zip(names, combo))
        layers.append("@".join(p.format(**values) for p in used))
    return layers


@dataclass
class SweepPlan:
    jobs: list[Any] = field(default_factory=list)  # BenchJob per (backbone, task, head)

    def cells(self) -> list[tuple[Any, str, str, str]]:
        return [(job, layer, pool, job.cell_id(layer, pool)) for job in self.jobs
                for layer, pool, _ in job.probe_cells()]


def make_plan(args: argparse.Namespace, experiment_id: str) -> SweepPlan:
    from bench.cli import feature_job_kwargs, probe_overrides
    from bench.jobs import BenchJob
    from bench.registry import backbones, tasks
    from bench.tracking import tracking_uri

    grid = parse_grid(args.grid)
    heads = grid.get("head", [args.head])
    plan = SweepPlan()
    for backbone in args.backbones:
        entry = backbones.entry(backbone)
        layers = grid_layers(entry.layer_template, backbone, grid)
        for task in args.tasks:
            tasks.entry(task)
            for head in heads:
                ns = argparse.Namespace(**{**vars(args), "backbone": backbone, "task": task,
                                           "layer": layers, "pool": grid.get("pool", [])})
                kwargs = feature_job_kwargs(ns)
                kwargs["cache_dir"] = str(Path(kwargs["cache_dir"]).resolve()) if kwargs[
                    "cache_dir"] else None
                kwargs["progress"] = False
                plan.jobs.append(BenchJob(
                    **kwargs, head=head, probe=probe_overrides(args), seed=args.seed,
                    suite=args.suite, experiment_id=experiment_id, tracking_uri=tracking_uri(),
                    force=args.force))
    return plan


def describe(plan: SweepPlan, experiment_id: str, force: bool) -> list[str]:
    """The dry-run report: jobs, their extractions, cache size estimates, finished cells."""
    from bench.tracking import finished_cells

    done = {} if force else finished_cells(experiment_id, [c for *_, c in plan.cells()])
    lines, total_bytes = [], 0
    for job in plan.jobs:
        cells = [(layer, pool) for layer, pool, _ in job.probe_cells()]
        todo = [c for c in cells if job.cell_id(*c) not in done]
        lines.append(f"job {job.backbone} x {job.task} head={job.head}: {len(cells)} cells, "
                     f"{len(cells) - len(todo)} already done")
        size, note = _estimate(job)
        total_bytes += size or 0
        lines.append(f"  extraction: {len(job.layers or ['default'])} layer(s) x "
                     f"{len(job.pools or ['default'])} pool(s) on train/val/test, {note}")
        for layer, pool in cells:
            state = "done" if job.cell_id(layer, pool) in done else "to run"
            lines.append(f"    {layer or '(default layer)'} pool={pool or '(default)'}: {state}")
    lines.append(f"{len(plan.jobs)} jobs, {len(plan.cells())} cells, {len(done)} already done; "
                 f"estimated new feature cache: {total_bytes / 1e9:.2f} GB")
    return lines


def _estimate(job) -> tuple[int | None, str]:
    """Bytes of cache the job would add (fp16), by running the backbone on one image."""
    try:
        import torch

        from bench.cache import FeatureCache
        from bench.extract import entry_fields

        backbone, task, requests, device, precision = replace(job, device="cpu").build()
        splits = [task.split(s) for s in ("train", "val", "test")]
        cache = FeatureCache(job.cache_dir)
        x = backbone.transform()(splits[0].load(0)).unsqueeze(0)
        with torch.inference_mode():
            out = backbone.extract(x, requests, torch.zeros(1, dtype=torch.long))
        size = 0
        for request, feats in out.items():
            for split in splits:
                entry = cache.entry(entry_fields(backbone, task.config, split, *request, precision))
                if not entry.complete():
                    size += feats[0].numel() * 2 * len(split)
        items = sum(len(s) for s in splits)
        return size, f"{items} images, {size / 1e9:.3f} GB new cache"
    except Exception as e:  # weights or data not there yet: the plan is still worth printing
        return None, f"size unknown ({type(e).__name__}: {str(e).splitlines()[0][:160]})"


def executor_params(args: argparse.Namespace) -> dict[str, Any]:
    """Profile settings (config file), overridden by explicit flags, as submitit parameters."""
    profile = load_profile(args.profile, args.profiles) if args.profile else {}
    merged = {**profile, **{k: getattr(args, k) for k in SLURM_FIELDS if getattr(args, k) is not None}}
    args.executor = args.executor or profile.get("executor", "local")
    params = {SLURM_FIELDS[k]: v for k, v in merged.items() if k in SLURM_FIELDS}
    if "setup" in merged:  # shell lines run before each job (module load, conda activate...)
        params["slurm_setup"] = list(merged["setup"])
    return params


def load_profile(name: str, path: str | None) -> dict[str, Any]:
    import yaml

    file = Path(path or os.environ.get("BENCH_PROFILES") or
                Path.home() / ".config" / "bench" / "profiles.yaml").expanduser()
    if not file.exists():
        raise FileNotFoundError(f"profiles file {file} not found (needed for --profile {name}); "
                                "see the README's SLURM section for its format")
    profiles = yaml.safe_load(file.read_text()) or {}
    if name not in profiles:
        raise ValueError(f"no profile {name!r} in {file}; profiles: {', '.join(profiles)}")
    unknown = set(profiles[name]) - set(SLURM_FIELDS) - {"executor", "setup"}
    if unknown:
        raise ValueError(f"profile {name!r}: unknown keys {sorted(unknown)}; "
                         f"known: executor, setup, {', '.join(SLURM_FIELDS)}")
    return profiles[name]


def run_sweep(args: argparse.Namespace) -> int:
    from bench import leaderboard
    from bench.cache import results_dir
    from bench.tracking import ensure_experiment, tracking_uri

    params = executor_params(args)
    experiment_id = ensure_experiment(args.suite)
    plan = make_plan(args, experiment_id)
    if args.dry_run:
        print(f"executor: {args.executor} {params or ''}")
        print("\n".join(describe(plan, experiment_id, args.force)))
        return 0
    failures = execute(plan, args, params)
    cells, table = leaderboard.build([args.suite])
    table = leaderboard.with_paper(table)
    paths = leaderboard.write(table, cells, results_dir(), f"bench sweep: {args.suite}")
    figures = write_figures(args.suite)
    if not table.empty:
        leaderboard.log_to_mlflow(experiment_id, table, cells, paths, figures)
        print("\n" + table.to_markdown())
    for path in figures.values():
        print(f"figure: {path}")
    print(f"\nleaderboard: {paths['md']}; MLflow: {tracking_uri()} (experiment {args.suite})")
    for job, error, log in failures:
        print(f"FAILED {job.backbone} x {job.task} head={job.head}: {error}\n  log: {log}",
              file=sys.stderr)
    return 1 if failures else 0


def write_figures(suite: str) -> dict[str, Path]:
    """The paper's ablation plots for this suite's block x timestep x pool runs, as PNG files."""
    from bench.cache import results_dir
    from bench.figures import ablation_figures
    from bench.tracking import find_runs

    folder = results_dir() / "figures"
    paths = {}
    for name, png in ablation_figures(find_runs([suite])).items():
        folder.mkdir(parents=True, exist_ok=True)
        paths[name] = folder / name
        paths[name].write_bytes(png)
    return paths


def execute(plan: SweepPlan, args: argparse.Namespace, params: dict[str, Any]) -> list[tuple]:
    """Run every job, retrying failures; returns (job, error, log path) of those that failed.

    Jobs whose cells all have a finished run are not run (or submitted) again: their results
    are printed as reused, so a rerun of a finished sweep puts nothing in the SLURM queue.
    """
    todo = _unfinished_jobs(plan, args.force)
    if args.executor == "local":
        failures = []
        for job in (plan.jobs[i] for i in todo):
            try:
                _print_results(job, job())
            except Exception as e:  # one failing cell must not stop the sweep
                failures.append((job, f"{type(e).__name__}: {e}", "(this process)"))
        return failures
    from bench.executors import submitit_executor

    folder = Path(args.job_dir or Path(os.environ.get("BENCH_RESULTS", "results")) / "jobs")
    executor = submitit_executor(args.executor, folder.resolve(), **params)
    pending = set(todo)
    tries = {i: 0 for i in pending}
    running: dict[int, Any] = {}
    failures: list[tuple] = []
    states: dict[int, str] = {}
    while pending or running:
        if pending:
            batch = sorted(pending)
            submitted = _submit(executor, [plan.jobs[i] for i in batch], args.extract_array)
            running.update(zip(batch, submitted))
            pending.clear()
        for i, handle in list(running.items()):
            states[i] = _state(handle)
            if not handle.done():
                continue
            running.pop(i)
            error = handle.exception()
            if error is None:
                _print_results(plan.jobs[i], handle.result())
                continue
            tries[i] += 1
            if tries[i] <= args.retries:
                print(f"retrying {plan.jobs[i].backbone} x {plan.jobs[i].task} "
                      f"({tries[i]}/{args.retries}): {_error_summary(error)[:200]}")
                pending.add(i)
            else:
                failures.append((plan.jobs[i], _error_summary(error)[:300],
                                 str(handle.paths.stderr)))
        _print_states(plan, states)
        if running:
            time.sleep(args.poll)
    return failures


def _unfinished_jobs(plan: SweepPlan, force: bool) -> list[int]:
    """Indices of the jobs with a cell still to compute; the others' results are printed."""
    if force or not plan.jobs:
        return list(range(len(plan.jobs)))
    from bench.tracking import finished_cells

    done = finished_cells(plan.jobs[0].experiment_id, [c for *_, c in plan.cells()])
    todo = []
    for i, job in enumerate(plan.jobs):
        ids = [job.cell_id(layer, pool) for layer, pool, _ in job.probe_cells()]
        if all(c in done for c in ids):
            _print_results(job, [done[c] for c in ids])
        else:
            todo.append(i)
    if len(todo) < len(plan.jobs):
        print(f"{len(plan.jobs) - len(todo)} of {len(plan.jobs)} jobs already done "
              "(finished MLflow runs): not run again; --force recomputes", flush=True)
    return todo


def _error_summary(error: BaseException) -> str:
    """The job's own exception line(s), out of submitit's FailedJobError text (traceback, then
    "You can check full logs ... at paths:" and the log paths), or the error's last line."""
    lines = str(error).strip().splitlines()
    for k, line in enumerate(lines):
        if line.startswith("You can check full logs"):
            trace = [t for t in lines[:k] if t.strip() and set(t.strip()) != {"-"}]
            code = [j for j, t in enumerate(trace) if t[:1].isspace()]  # traceback frames
            exception = trace[code[-1] + 1:] if code else trace[-1:]
            if exception:
                return " ".join(t.strip() for t in exception)
            break
    return lines[-1].strip() if lines else type(error).__name__


def _submit(executor, jobs: list[Any], extract_array: int) -> list[Any]:
    """Submit jobs; with extract_array > 1, each one after its own extraction array."""
    from bench.jobs import ExtractJob

    if extract_array <= 1:
        with executor.batch():  # one SLURM job array
            handles = [executor.submit(job) for job in jobs]
        return handles
    handles = []
    slurm = executor.cluster == "slurm"
    for job in jobs:
        fields = {f: getattr(job, f) for f in ExtractJob.__dataclass_fields__
                  if f in job.__dataclass_fields__}
        with executor.batch():
            parts = [executor.submit(ExtractJob(**fields, array_index=k, array_size=extract_array))
                     for k in range(extract_array)]
        if slurm:
            ids = ":".join(p.job_id for p in parts)
            executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{ids}"})
        else:  # no job dependencies outside SLURM: wait for the array here
            for part in parts:
                part.result()
        handles.append(executor.submit(job))
        if slurm:
            executor.update_parameters(slurm_additional_parameters={})
    return handles


def _state(handle) -> str:
    if handle.done():
        return "failed" if handle.exception() is not None else "done"
    try:
        raw = handle.state
    except Exception:  # noqa: BLE001  (sacct unavailable: submitit may raise)
        raw = "UNKNOWN"
    if raw == "UNKNOWN" and getattr(handle, "job_id", None):  # no accounting: ask squeue
        import subprocess

        try:
            raw = subprocess.run(["squeue", "-h", "-j", str(handle.job_id), "-o", "%T"],
                                 capture_output=True, text=True, timeout=10,
                                 check=False).stdout.split("\n")[0].strip() or "UNKNOWN"
        except (OSError, subprocess.SubprocessError):
            pass
    return {"PENDING": "pending", "RUNNING": "running", "REQUEUED": "pending",
            "CONFIGURING": "pending", "COMPLETING": "running"}.get(
        raw, "running" if raw == "UNKNOWN" else raw.lower())


_last_table: list[str] = []


def _print_states(plan: SweepPlan, states: dict[int, str]) -> None:
    """The live table: reprinted whenever a job's state changes."""
    rows = [f"  {plan.jobs[i].backbone:>20s} x {plan.jobs[i].task:<12s} "
            f"head={plan.jobs[i].head:<9s} {len(plan.jobs[i].probe_cells()):3d} cells  {state}"
            for i, state in sorted(states.items())]
    if rows != _last_table:
        counts = {s: list(states.values()).count(s) for s in ("pending", "running", "done",
                                                                 "failed")}
        print(time.strftime("%H:%M:%S"), " ".join(f"{k} {v}" for k, v in counts.items()))
        print("\n".join(rows), flush=True)
        _last_table[:] = rows


def _print_results(job, results: list[dict[str, Any]]) -> None:
    for r in results:
        note = " (reused)" if r.get("reused") else ""
        print(f"  {r['run_name']}: test_top1 {r['test_top1']:.2f} val_top1 "
              f"{r['val_top1']:.2f}{note}", flush=True)


def add_cli(sub) -> None:
    from bench.cli import add_probe_args

    p = sub.add_parser("sweep", help="backbones x tasks x grid as jobs (local, submitit, SLURM)")
    p.add_argument("--backbones", required=True, type=lambda s: [v for v in s.split(",") if v],
                   help="comma-separated backbone presets")
    p.add_argument("--tasks", required=True, type=lambda s: [v for v in s.split(",") if v],
                   help="comma-separated tasks")
    p.add_argument("--grid", nargs="*", default=[], metavar="AXIS=V1,V2",
                   help="grid axes: layer, pool, head, and backbone axes such as block and t")
    p.add_argument("--dry-run", action="store_true",
                   help="print jobs, extractions, cache size estimate and finished cells; run nothing")
    p.add_argument("--retries", type=int, default=1, help="resubmissions of a failed job")
    p.add_argument("--extract-array", type=int, default=1,
                   help="split each extraction over an N-task job array (SLURM)")
    p.add_argument("--profile", help="named executor profile from the profiles file")
    p.add_argument("--profiles", help="profiles YAML (default $BENCH_PROFILES or "
                   "~/.config/bench/profiles.yaml)")
    p.add_argument("--job-dir", help="submitit logs and pickles (default results/jobs)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between status polls")
    for name in SLURM_FIELDS:
        kind = str if name in ("partition", "account", "qos", "constraint") else int
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind,
                       help=f"SLURM {SLURM_FIELDS[name]}")
    from bench.cli import add_feature_args

    features = argparse.ArgumentParser(add_help=False)
    add_feature_args(features)
    for action in features._actions:
        if action.dest not in ("help", "backbone", "task", "layer", "pool"):
            p._add_action(action)
    add_probe_args(p)
    p.set_defaults(func=run_sweep, executor=None, layer=[], pool=[])
