"""What a job will cost, known before it runs, and whether the disk under the cache holds it.

``job_cost`` resolves nothing itself: given a resolved job it counts the images of each split, the
feature points and their dimensions (read from complete cache entries, else from one calibration
forward pass), the bytes each point's cache entries take per split (images x dims x the cache
dtype's size), the extraction time (a timed calibration batch on a CUDA device; unknown on the
CPU, where the first batch of the real extraction tells) and each cell's probe memory, as its
head kind estimates it (``HeadKind.cost``): its memory plan within ``--memory-budget`` (the one
policy the trainers follow, ``bench.heads.memory``: which splits it holds and which it streams)
and its own state (e.g. the grid's weights, AdamW moments and gradients). A budget below one step
of the head's plan is refused here, before anything is extracted. ``bench run`` prints it before
extracting (``bench.run.jobs.work_notice``) and ``bench sweep --dry-run`` for every job
(``bench.run.sweep.describe``); ``disk_check`` is the one refusal both apply when the new cache
entries would not fit.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.ranges import size_text as size
from bench.run.spec import SPLITS, Prepared, head_config

SHARD_OVERHEAD = 8192  # bytes per shard beyond its rows: .npy header, sidecar, filesystem blocks
CALIBRATION_IMAGES = 64  # images timed on a CUDA device (at most the batch size)


class DiskSpaceError(BenchError, RuntimeError):
    """The cache's disk cannot hold what a run would add; found before anything is written."""


@dataclass(frozen=True)
class PointCost:
    """One (layer, pool) feature point of a job: its size in the cache per split."""

    layer: str
    pool: str
    dims: int  # numbers per image
    bytes: dict[str, int]  # part (a split, or ``train view V``) -> bytes of its cache entry
    new: dict[str, int]  # part -> bytes not in the cache yet
    keys: dict[str, str]  # part -> cache entry key (entries shared by jobs are counted once)
    shape: tuple[int, ...] = ()  # one image's feature shape


@dataclass(frozen=True)
class CellCost:
    """One result of a job: its features' bytes per split and its probe's memory (estimates)."""

    name: str  # "layer pool=P"
    identity: str
    dims: int
    bytes: dict[str, int]  # part -> bytes of its features
    probe_bytes: int | None  # the most feature bytes the head holds at once; None: not declared
    head_bytes: int | None  # the head's own state; None: not estimated for this head
    head_formula: str = ""  # how head_bytes was counted
    plan: Any = None  # the head's bench.heads.memory.MemoryPlan (what it holds, what it streams)

    @property
    def memory(self) -> int:
        return (self.probe_bytes or 0) + (self.head_bytes or 0)


@dataclass
class JobCost:
    """Everything ``bench run`` and ``bench sweep --dry-run`` say a job costs before it runs."""

    label: str  # "backbone x task head=..."
    storage: str  # the cache dtype
    images: dict[str, int]  # part (a split, or ``train view V``: ``--views``) -> images
    to_extract: dict[str, int]  # part -> images whose features are not all cached
    points: list[PointCost]
    cells: list[CellCost]
    seconds: float | None  # extraction estimate; None: unknown (no CUDA device to time)
    calibration: str  # how seconds was estimated, or why it is unknown
    # ``--online``: train images through the backbone during the grid's search (each epoch's
    # view, and view 0 once more for the standardisation statistics); its refit on train+val
    # pays up to as many again. No train features are cached.
    online_forwards: int = 0

    @property
    def new_bytes(self) -> int:
        return sum(sum(p.new.values()) for p in self.points)

    @property
    def total_bytes(self) -> int:
        return sum(sum(p.bytes.values()) for p in self.points)

    def new_entries(self) -> dict[str, int]:
        """Cache entry key -> bytes it adds (for sums over jobs that share entries)."""
        return {p.keys[s]: p.new[s] for p in self.points for s in p.keys if p.new[s]}

    def lines(self, done: set[str] | None = None, summary: bool = True) -> list[str]:
        """The report, one line each: images, points and time (unless not ``summary``), the
        cache, then each cell (``done``: the identities already logged, marked as such)."""
        images = ", ".join(f"{s} {n:,}" for s, n in self.images.items())
        todo = sum(self.to_extract.values())
        timing = (f"{duration(self.seconds)} ({self.calibration})" if self.seconds is not None
                  else f"time unknown ({self.calibration})")
        lines = [f"  cache ({self.storage}): {size(self.total_bytes)} on disk, "
                 f"{size(self.new_bytes)} of it new"]
        if summary:
            lines[:0] = [f"  images: {images} ({sum(self.images.values()):,}); "
                         f"{count(len(self.points), 'feature point')}",
                         f"  extraction: {todo:,} images through the backbone, {timing}" if todo
                         else "  extraction: none (every feature is cached)"]
        if self.online_forwards:
            lines.append(f"  online: {self.online_forwards:,} train images through the backbone "
                         "in the search, up to as many again in the refit (no train cache)")
        for cell in self.cells:
            state = "" if done is None else ("done: " if cell.identity in done else "to run: ")
            disk = ", ".join(f"{s} {size(n)}" for s, n in cell.bytes.items())
            probe = ("not declared by the head" if cell.plan is None
                     else f"{size(cell.probe_bytes)} of inputs ({cell.plan.describe()})")
            head = ("" if cell.head_bytes is None else
                    f" + {size(cell.head_bytes)} head state ({cell.head_formula})")
            lines.append(f"    {state}{cell.name}  [{cell.identity[:12]}]: {cell.dims:,} dims; "
                         f"disk {disk}; probe memory about {probe}{head}")
        return lines


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"about {seconds:.0f} s"
    return f"about {seconds / 60:.0f} min" if seconds < 5400 else f"about {seconds / 3600:.1f} h"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def job_cost(prepared: Prepared, cache: Any, label: str, shard_size: int,
             batch_size: int = CALIBRATION_IMAGES, memory_budget: int | str | None = "auto",
             cells_of: list[Prepared] | None = None) -> JobCost:
    """The cost of ``prepared``'s job with ``cache`` (a ``FeatureCache``). A point with an entry
    not yet complete runs the backbone on calibration images (timed on CUDA); the cache dtype
    was checked against them when the job was resolved (``bench.run.spec.resolve``). A
    ``memory_budget`` (``RunOptions.memory_budget``) below what a cell's head needs is its
    ``MemoryBudgetError``, before any work. ``cells_of``: the runs whose cells to cost
    (several heads sharing this extraction; default ``prepared``'s)."""
    from bench.heads.memory import resolve_budget
    from bench.precision import storage_numpy

    run = prepared.run
    splits = {name: prepared.task.split(name) for name in SPLITS}
    rows = {name: len(split) for name, split in splits.items()}
    parts = [part.name for part in run.parts]  # each train view counts its images
    images = {part.name: rows[part.split] for part in run.parts}
    itemsize = storage_numpy(run.precision.storage).itemsize
    entries = entries_of(prepared, cache)
    complete = {request: {name: e.complete() for name, e in by_part.items()}
                for request, by_part in entries.items()}
    to_extract = {name: images[name] for name in parts
                  if not all(complete[r][name] for r in run.requests)}
    shapes = {r: tuple(entries[r][parts[0]].feature_shape()) for r in run.requests
              if complete[r][parts[0]]}
    seconds, calibration = None, "nothing to extract"
    if len(shapes) < len(run.requests) or to_extract:
        measured, seconds, calibration = _calibrate(prepared, splits["train"], batch_size)
        shapes = measured | shapes
    dims = {r: math.prod(shape) for r, shape in shapes.items()}
    points = []
    for request in run.requests:
        total, new = {}, {}
        for name in parts:
            entry = entries[request][name]
            shards = -(-images[name] // (entry.manifest["shard_size"] if entry.exists()
                                         else shard_size))
            total[name] = images[name] * dims[request] * itemsize + shards * SHARD_OVERHEAD
            new[name] = 0 if complete[request][name] else _missing_bytes(entry, total[name])
        points.append(PointCost(*request, dims[request], total, new,
                                {name: entries[request][name].key for name in parts},
                                shapes[request]))
    by_request = {(p.layer, p.pool): p for p in points}
    budget = resolve_budget(memory_budget, prepared.device)
    cells = [_cell_cost(one, cell, [by_request[f] for f in cell.features], rows, budget)
             for one in cells_of or [prepared] for cell in one.run.cells]
    if to_extract and seconds is not None:
        seconds *= sum(to_extract.values())
    return JobCost(label, run.precision.storage, images, to_extract, points, cells, seconds,
                   calibration, online_forwards(prepared))


def online_forwards(prepared: Prepared) -> int:
    """``JobCost.online_forwards``: train images x epochs (+ 1 when standardised); 0 unless
    ``--online``."""
    from bench.run.spec import head_config

    run = prepared.run
    if not run.spec.online:
        return 0
    cfg = head_config(run.spec)
    return len(prepared.task.split("train")) * (cfg.epochs + bool(getattr(cfg, "standardise", False)))


def entries_of(prepared: Prepared, cache: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The cache entries a resolved job reads: (layer, pool) -> part (a split, or ``train view
    V``) -> ``CacheEntry``."""
    from bench.features.extract import entry_fields

    run = prepared.run
    return {request: {part.name: cache.entry(entry_fields(
        prepared.backbone, run.task_config, prepared.task.split(part.split), *request,
        run.precision, part.view)) for part in run.parts} for request in run.requests}


def _missing_bytes(entry: Any, total: int) -> int:
    """Bytes an entry still needs: all of it when absent, its missing shards' share otherwise."""
    if not entry.exists():
        return total
    missing = sum(entry.expected_rows(i) for i in entry.missing_shards())
    return total * missing // max(1, entry.manifest["num_items"])


def _calibrate(prepared: Prepared, split: Any, batch_size: int
               ) -> tuple[dict[tuple[str, str], tuple[int, ...]], float | None, str]:
    """Each request's feature shape from the backbone's output on train images; on CUDA also
    the seconds per image of a timed batch (after one untimed pass), else None and why."""
    import torch

    from bench.features.extract import calibration_images
    from bench.precision import autocast

    run, backbone, device = prepared.run, prepared.backbone, prepared.device
    cuda = device.type == "cuda"
    n = max(1, min(batch_size, CALIBRATION_IMAGES, len(split))) if cuda else 1
    x = torch.stack(calibration_images(split, backbone.transform(), n, run.spec.skip_corrupt)
                    ).to(device)
    n = len(x)
    ids = torch.arange(n, device=device)
    backbone.eval().to(device)

    def forward() -> dict[tuple[str, str], torch.Tensor]:
        with torch.inference_mode(), autocast(run.precision.extraction, device):
            return backbone.extract(x, run.requests, ids)

    out = forward()
    shapes = {request: tuple(features[0].shape) for request, features in out.items()}
    if not cuda:
        return shapes, None, "no CUDA device here to time a calibration batch"
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    forward()
    torch.cuda.synchronize(device)
    per_image = (time.perf_counter() - started) / n
    return shapes, per_image, (f"backbone forward of {n} calibration images on {device}, image "
                               "loading not counted")


def _cell_cost(prepared: Prepared, cell: Any, points: list[PointCost], rows: dict[str, int],
               budget: int | None) -> CellCost:
    """A cell's bytes per split and its head's memory, as its kind estimates them
    (``HeadKind.cost``) for these rows and dimensions within ``budget``."""
    from bench.heads.memory import Inputs
    from bench.precision import BF16, storage_numpy
    from bench.protocol import head_kind

    run = prepared.run
    kind = head_kind(run.spec.head)
    dims = sum(p.dims for p in points)
    per_split = {s: sum(p.bytes[s] for p in points) for s in points[0].bytes}
    # as a head reads the cache: bfloat16 bits come widened to float32 (ShardedArray)
    stored = 4 if run.precision.storage == BF16 else storage_numpy(run.precision.storage).itemsize
    inputs = Inputs(rows, dims, stored, storage_numpy(run.precision.probe_inputs).itemsize,
                    run.num_classes, tuple(p.shape for p in points))
    cost = kind.cost(head_config(run.spec), inputs, budget)
    return CellCost(f"{cell.layer} pool={cell.pool}", cell.identity, dims, per_split,
                    cost.plan.peak if cost.plan else None, cost.state, cost.formula, cost.plan)


@dataclass(frozen=True)
class DiskCheck:
    """The new cache entries' bytes against the free space of the cache's disk."""

    folder: Path
    needed: int
    free: int

    @property
    def fits(self) -> bool:
        return self.needed <= self.free

    def line(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"disk: {size(self.needed)} of new feature cache in {self.folder}, "
                f"{size(self.free)} free: {verdict}")

    def refusal(self, storage: str, command: str) -> DiskSpaceError:
        fixes = ["--cache-dtype fp16 (half of fp32)"] if storage == "float32" else []
        fixes += ["fewer feature points (--layer/--pool, a smaller --grid)",
                  "--cache-dir on a larger disk"]
        return DiskSpaceError(
            f"{command} would fill the disk under the feature cache: it needs {size(self.needed)}"
            f" in {self.folder}, which has {size(self.free)} free; nothing was started. Use "
            + ", or ".join(fixes))


def disk_check(folder: Path, needed: int) -> DiskCheck:
    """``needed`` bytes against the free space under ``folder`` (its nearest existing parent)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return DiskCheck(Path(folder), needed, shutil.disk_usage(probe).free)
