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
import string
from dataclasses import dataclass, field, replace
from typing import Any

from bench.errors import BenchError, UsageError
from bench.run.jobs import BenchJob
from bench.run.spec import SPLITS, RunOptions, RunSpec

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
    parts = (template or "").split("@")
    fields = [{f for _, f, _, _ in string.Formatter().parse(p) if f} for p in parts]
    known = set().union(*fields) if template else set()
    if set(axes) - known:
        extra = ", ".join(sorted(set(axes) - known))
        hint = f"its axes are {', '.join(sorted(known))}" if known else "it has none"
        raise UsageError(f"backbone {backbone!r} has no sweep axis {extra} ({hint}); use layer=...")
    used = [p for p, f in zip(parts, fields) if f and f <= set(axes)]
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        values = dict(zip(names, combo))
        layers.append("@".join(p.format(**values) for p in used))
    return layers


@dataclass
class SweepPlan:
    jobs: list[BenchJob] = field(default_factory=list)  # one per (backbone, task, head)


def make_plan(backbones: list[str], tasks: list[str], grid: dict[str, list[str]],
              template: RunSpec, options: RunOptions) -> SweepPlan:
    """One job per (backbone, task, head); ``template`` gives every other spec field."""
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
                spec = replace(template, backbone=backbone, task=task, head=head, layers=layers,
                               pools=grid.get("pool", list(template.pools)))
                check_spec(spec)
                plan.jobs.append(BenchJob(spec, options))
    return plan


@dataclass
class DryRun:
    lines: list[str]  # the report, one line each
    resolved: int  # jobs resolvable here
    finished: int  # cells already done


def describe(plan: SweepPlan) -> DryRun:
    """The dry-run report: each job resolved here (the backbone built on the CPU), its cells,
    which are already done, and the feature cache it would add.

    A bad grid value (a layer the backbone does not have, a pool that does not apply) is an error
    here, before anything is submitted; missing weights or data only leave the size unknown.
    """
    from bench.results.tracking import ensure_experiment, find_records

    lines, total_bytes, cells, finished, resolved = [], 0, 0, 0, 0
    for job in plan.jobs:
        spec = job.spec
        try:
            prepared, size = _estimate(job)
        except BenchError as e:
            if isinstance(e, UsageError):
                raise UsageError(f"{spec.backbone} x {spec.task}: {e}") from e
            lines.append(f"job {spec.backbone} x {spec.task} head={spec.head}: not resolvable "
                         f"here ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
            continue
        experiment = job.options.experiment_id or ensure_experiment(job.options.suite)
        run = prepared.run
        done = set() if job.options.force else {
            r.identity for r in find_records([experiment], [c.identity for c in run.cells])}
        cells += len(run.cells)
        resolved += 1
        finished += len(done & {c.identity for c in run.cells})
        total_bytes += size
        lines.append(f"job {spec.backbone} x {spec.task} head={spec.head}: "
                     f"{_count(len(run.cells), 'cell')}, {len(done)} already done")
        lines.append(f"  extraction: {len(run.requests)} (layer, pool) on train/val/test, "
                     f"{size / 1e9:.3f} GB new cache")
        for cell in run.cells:
            state = "done" if cell.identity in done else "to run"
            lines.append(f"    {cell.layer} pool={cell.pool}: {state}  [{cell.identity[:12]}]")
    unresolved = len(plan.jobs) - resolved
    lines.append(f"{_count(len(plan.jobs), 'job')}"
                 f"{f' ({unresolved} not resolvable here)' if unresolved else ''}, "
                 f"{_count(cells, 'cell')}, {finished} already done; "
                 f"estimated new feature cache: {total_bytes / 1e9:.2f} GB")
    return DryRun(lines, resolved, finished)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _estimate(job: BenchJob) -> tuple[Any, int]:
    """(the job resolved here, bytes of cache it would add): the backbone runs on one CPU image.
    Identities depend on the resolved precision: ``--precision auto`` resolves for this
    machine's device, so give the policy explicitly when the jobs run on another kind."""
    import numpy as np
    import torch

    from bench.features.cache import FeatureCache
    from bench.features.extract import entry_fields
    from bench.run.spec import resolve

    options = job.options
    prepared = job.prepared or resolve(job.spec, options)
    run, task, backbone = prepared.run, prepared.task, prepared.backbone
    splits = [task.split(s) for s in SPLITS]
    cache = FeatureCache(options.cache_dir)
    x = backbone.transform()(splits[0].load(0)).unsqueeze(0)
    with torch.inference_mode():
        out = backbone.extract(x, run.requests, torch.zeros(1, dtype=torch.long))
    itemsize = np.dtype(run.precision.storage).itemsize
    size = 0
    for request, feats in out.items():
        for split in splits:
            entry = cache.entry(entry_fields(backbone, run.task_config, split, *request,
                                             run.precision))
            if not entry.complete():
                size += feats[0].numel() * itemsize * len(split)
    return prepared, size
