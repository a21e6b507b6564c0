"""Sweeps: backbones x tasks x grid points, planned as jobs for the scheduler.

The job graph: per (backbone, task, head) one ``BenchJob`` covering every (layer, pool) of the
grid, so one backbone pass per image (per diffusion timestep) feeds all of them and every grid
point's probe reads the shared cache.

Grid axes: ``layer``, ``pool``, ``head``, and any axis a backbone preset names in its
``layer_template`` (``block`` and ``t`` for the diffusion U-Net: ``block{block}@t{t}``).
Finished cells are found by identity (``bench.run.spec``) when each job resolves; ``--dry-run``
resolves every job here and lists them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from bench.errors import BenchError, UsageError
from bench.points import LayerTemplate
from bench.run.costs import DiskCheck, DiskSpaceError, JobCost
from bench.run.jobs import BenchJob
from bench.run.spec import RunOptions, RunSpec

ENGINE_AXES = ("layer", "pool", "head")


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['block=19,24', 't=90,150'] -> {'block': ['19', '24'], 't': ['90', '150']}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values.strip(","):
            raise UsageError(f"grid axis {item!r}: expected NAME=V1,V2,...")
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def grid_layers(template: str | None, backbone: str, grid: dict[str, list[str]]) -> list[str]:
    """Layer names for a backbone from the grid's layer axis and its template axes."""
    axes = {k: v for k, v in grid.items() if k not in ENGINE_AXES}
    layers = list(grid.get("layer", []))
    if not axes:
        return layers
    known = LayerTemplate(template).axes if template else set()
    if set(axes) - known:
        extra = ", ".join(sorted(set(axes) - known))
        hint = f"its axes are {', '.join(sorted(known))}" if known else "it has none"
        raise UsageError(f"backbone {backbone!r} has no sweep axis {extra} ({hint}); use layer=...")
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        layers.append(LayerTemplate(template).fill(dict(zip(names, combo))))
    return layers


@dataclass
class SweepPlan:
    jobs: list[BenchJob] = field(default_factory=list)  # one per (backbone, task, head)


def make_plan(backbones: list[str], tasks: list[str], grid: dict[str, list[str]],
              template: RunSpec, options: RunOptions) -> SweepPlan:
    """One job per (backbone, task, head, variant); ``template`` gives every other spec field."""
    from bench.protocol import head_kind
    from bench.registry import backbones as backbone_registry
    from bench.registry import tasks as task_registry
    from bench.run.spec import check_spec

    plan = SweepPlan()
    for backbone in backbones:
        entry = backbone_registry.entry(backbone)
        layers = grid_layers(entry.layer_template, backbone, grid) or list(template.layers)
        for task in tasks:
            task_registry.entry(task)
            for head in grid.get("head", [template.head]):
                # one job per variant of the head's settings (few-shot's --shots 1,5)
                for settings in head_kind(head).expand(template.head_args):
                    spec = replace(template, backbone=backbone, task=task, head=head,
                                   layers=layers, pools=grid.get("pool", list(template.pools)),
                                   head_args=settings)
                    check_spec(spec)
                    plan.jobs.append(BenchJob(spec, options))
    return plan


@dataclass
class DryRun:
    lines: list[str]  # the report, one line each
    resolved: int  # jobs resolvable here
    finished: int  # cells already done
    costs: list[JobCost] = field(default_factory=list)  # of the jobs resolvable here
    disk: DiskCheck | None = None  # the new cache of those jobs against the cache disk's space

    def disk_refusal(self) -> DiskSpaceError | None:
        """The error a sweep whose new cache would not fit stops with (None: it fits)."""
        if self.disk is None or self.disk.fits:
            return None
        storage = "float32" if any(c.storage == "float32" for c in self.costs) else "float16"
        return self.disk.refusal(storage, "this sweep")


def describe(plan: SweepPlan) -> DryRun:
    """The plan with its costs: each job resolved here (its backbone run on calibration images),
    its images, feature points, cache bytes per split, extraction time (on a CUDA device) and
    cells (done or to run, with their probe memory), then the totals and whether the cache's
    disk holds them (entries shared by jobs counted once). ``api.sweep`` refuses a plan whose
    ``disk`` does not fit.

    A bad grid value (a layer the backbone does not have, a pool that does not apply) is an error
    here, before anything is submitted; missing weights or data only leave the cost unknown.
    Identities depend on the resolved precision: ``--precision auto`` resolves for this
    machine's device, so give the policy explicitly when the jobs run on another kind.
    """
    from bench.features.cache import FeatureCache
    from bench.results.runs import find_records
    from bench.results.store import ensure_experiment
    from bench.run.costs import count, disk_check, duration, job_cost, size
    from bench.run.jobs import bench_jobs, job_label
    from bench.run.spec import resolve

    dry = DryRun([], 0, 0)
    cells, new_entries, folders = 0, {}, set()
    jobs = bench_jobs(plan.jobs)
    for job in jobs:
        label, options = job_label(job.spec), job.options
        cache = FeatureCache(options.cache_dir)
        try:
            prepared = job.prepared or resolve(job.spec, options)
            cost = job_cost(prepared, cache, label, options.shard_size, options.batch_size,
                            options.memory_budget)
        except BenchError as e:
            if isinstance(e, UsageError):
                raise UsageError(f"{job.spec.backbone} x {job.spec.task}: {e}") from e
            dry.lines.append(f"job {label}: not resolvable here "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:160]})")
            continue
        experiment = options.experiment_id or ensure_experiment(options.suite)
        run = prepared.run
        done = set() if options.force else {
            r.identity for r in find_records([experiment], [c.identity for c in run.cells])}
        cells += len(run.cells)
        dry.resolved += 1
        dry.finished += len(done & {c.identity for c in run.cells})
        dry.costs.append(cost)
        new_entries |= cost.new_entries()
        folders.add(cache.root)
        dry.lines.append(f"job {label}: {count(len(run.cells), 'cell')}, {len(done)} already done")
        dry.lines += cost.lines(done)
    unresolved = len(jobs) - dry.resolved
    images = sum(sum(c.to_extract.values()) for c in dry.costs)
    timed = [c.seconds for c in dry.costs if c.to_extract]
    seconds = (duration(sum(timed)) if timed and None not in timed else
               "unknown (no CUDA device here to time a calibration batch)" if timed else "none")
    largest = max((cell.memory for c in dry.costs for cell in c.cells), default=0)
    dry.lines.append(
        f"{count(len(jobs), 'job')}"
        f"{f' ({unresolved} not resolvable here)' if unresolved else ''}, "
        f"{count(cells, 'cell')}, {dry.finished} already done; "
        f"{images:,} images to extract, "
        f"{count(sum(len(c.points) for c in dry.costs), 'feature point')}; "
        f"{size(sum(new_entries.values()))} new cache (of "
        f"{size(sum(c.total_bytes for c in dry.costs))} in all); extraction time {seconds}; "
        f"largest probe memory about {size(largest)} (an estimate)")
    if len(folders) == 1:
        dry.disk = disk_check(folders.pop(), sum(new_entries.values()))
        dry.lines.append(dry.disk.line() + ("" if dry.disk.fits else
                                            ": bench sweep would refuse to start"))
    return dry
