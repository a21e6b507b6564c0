"""A paper's cells as one plan: each cell resolved like ``bench run``, grouped into shared jobs.

Every cell of a paper (``bench.results.papers``) becomes a run spec with one explicit (layer,
pool) feature and is resolved by ``bench.run.spec.resolve``, so its identity is the one a hand-typed
``bench run`` of the same protocol gets, and a result logged either way counts for both. Cells of
one (backbone, task, arguments) and head form one ``BenchJob``; the jobs of one backbone and task
form one ``SharedJob``, whose features come from one backbone pass per split (every layer and
timestep any of its cells reads). Similarity tables become ``SimilaritySpec``s.

Where a cell cannot be resolved here (weights or data absent on this machine), the plan says so
per cell, after checking by name what can be checked: the preset, the task, the head and its
settings, and the layer against the preset's layer template (``block{block}@t{t}``). A name that
is wrong anywhere (an unknown preset or task, a layer the backbone lacks) is a one-line error
naming the paper file, the table and the cell.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from bench.errors import BenchError, UsageError
from bench.results.papers import Paper, PaperCell, PaperError
from bench.run.jobs import BenchJob, SharedJob
from bench.run.spec import SPLITS, RunOptions, RunSpec


@dataclass
class PlannedCell:
    cell: PaperCell
    identity: str | None  # the result identity, as `bench run` resolves it (None: not here)
    problem: str = ""  # why not resolvable here ("weights missing; data missing"), one line
    run_name: str = ""  # bench's record name for the cell (RunRecord.name), when resolved
    done: bool = False  # a finished result of this identity is in the suite
    checked: str = ""  # what was checked by name when it could not be resolved


@dataclass
class ForwardPass:
    """The cells one backbone pass per split feeds (one SharedJob or BenchJob)."""

    backbone: str
    task: str
    cells: list[str]  # cell ids
    points: list[tuple[str, str]]  # (canonical layer, pool) extracted, when resolved
    images: int | None  # train + val + test, when the task resolved here
    problem: str = ""  # what is missing here, in full


@dataclass
class PaperPlan:
    paper: Paper
    cells: dict[str, PlannedCell]  # by cell id, every table of kind table/curve
    similarity: dict[str, Any]  # table key -> SimilaritySpec (kind similarity)
    jobs: list[Any]  # BenchJob / SharedJob list that computes the cells
    passes: list[ForwardPass] = field(default_factory=list)  # one per job, in order
    options: RunOptions = field(default_factory=RunOptions)  # what the plan resolved with

    def pending_jobs(self, resolved_only: bool = False) -> list[Any]:
        """Jobs with a cell still to compute (also those not resolvable here: they may resolve
        where they run, unless ``resolved_only``)."""
        return [job for job, one in zip(self.jobs, self.passes)
                if any(not self.cells[c].done for c in one.cells)
                and not (resolved_only and one.problem)]

    def finished(self) -> list[Any]:
        """The finished records (RunRecord) of the cells already done when it was planned."""
        from bench.results.runs import find_records

        done = [c.identity for c in self.cells.values() if c.done]
        experiments = _experiments(self.options)
        return find_records(experiments, done) if done and experiments else []


def _experiments(options: RunOptions) -> list[str]:
    """The suite's experiment, if it exists (planning creates none)."""
    from bench.results.store import experiment_ids

    return [options.experiment_id] if options.experiment_id else experiment_ids([options.suite])


def plan_paper(paper: Paper, options: RunOptions, template: RunSpec | None = None) -> PaperPlan:
    """Resolve every cell of ``paper`` (``template``: the spec fields no cell sets, such as the
    precision and seed; its arguments go under each cell's) and group them into jobs."""
    from bench.run.similarity_run import similarity_spec

    template = template or RunSpec(backbone="", task="")
    plan = PaperPlan(paper, {}, {}, [], options=options)
    for table in paper.tables:
        if table.kind == "similarity":
            try:
                plan.similarity[table.key] = similarity_spec(dict(table.similarity or {}))
            except UsageError as e:
                raise PaperError(f"{paper.path}, table {table.key!r}, field 'similarity': "
                                 f"{e}") from e
    groups: dict[tuple, dict[tuple, list[tuple[PaperCell, RunSpec]]]] = {}
    for cell in paper.cells():
        spec = cell_spec(paper, cell, template)
        key = (spec.backbone, spec.task, _key(spec.backbone_args), _key(spec.task_args))
        head = (spec.head, _key(spec.head_args))
        if not spec.features:
            head += (cell.id,)  # a fusing head's cell is its own spec: all its layers
        groups.setdefault(key, {}).setdefault(head, []).append((cell, spec))
    built: dict[str, tuple[Any, str]] = {}  # one backbone per preset and arguments
    for heads in groups.values():
        _plan_group(plan, list(heads.values()), options, built)
    _mark_done(plan, options)
    return plan


def cell_spec(paper: Paper, cell: PaperCell, template: RunSpec) -> RunSpec:
    """The run spec of one cell (checked by name: preset, task, head and its settings)."""
    from bench.protocol import head_kind
    from bench.registry import backbones, tasks
    from bench.run.spec import check_spec

    with _naming(paper, cell, "head"):
        fuses = head_kind(cell.head).fuses_layers
    features = [] if fuses else [(cell.layer or "", cell.pool or "")]
    spec = replace(template, backbone=cell.backbone, task=cell.task, head=cell.head,
                   layers=(cell.layer or "").split("+") if fuses and cell.layer else [],
                   pools=[cell.pool] if fuses and cell.pool else [],
                   features=features,
                   backbone_args={**template.backbone_args, **cell.backbone_args},
                   task_args={**template.task_args, **cell.task_args},
                   head_args={**template.head_args, **cell.head_args})
    with _naming(paper, cell, "backbone"):
        backbones.entry(spec.backbone)
    with _naming(paper, cell, "task"):
        tasks.entry(spec.task)
    with _naming(paper, cell, "head_args"):
        check_spec(spec)
    return spec


@contextmanager
def _naming(paper: Paper, cell: PaperCell, name: str) -> Iterator[None]:
    """Turn a UsageError (or an unknown name) into one line naming the file, table and cell."""
    from bench.registry import UnknownNameError

    try:
        yield
    except PaperError:
        raise
    except (UsageError, UnknownNameError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise PaperError(f"{paper.path}, table {cell.table!r}, cell {cell.id!r}, field "
                         f"{name!r}: {first}") from error


def _plan_group(plan: PaperPlan, heads: list[list[tuple[PaperCell, RunSpec]]],
                options: RunOptions, built: dict[str, tuple[Any, str]]) -> None:
    """One backbone and task: each head's cells (with their one-cell specs) as one spec,
    resolved here or their problem said; the specs as one job."""
    from bench.run.spec import checked_requests, feature_requests, resolve

    paper = plan.paper
    specs = [replace(cells[0][1], features=list(dict.fromkeys(
        feature for _, one in cells for feature in one.features))) for cells in heads]
    task, backbone, problems = _build(specs[0], paper, heads[0][0][0], built)
    short = "; ".join(problem.split(" (")[0] for problem in problems)
    jobs: list[BenchJob] = []
    points: list[tuple[str, str]] = []
    for spec, cells in zip(specs, heads):
        if backbone is not None:  # every layer and pool checked, naming the cell
            for cell, one in cells:
                with _naming(paper, cell, "layer"):
                    for layer, _ in feature_requests(one, backbone):
                        backbone.feature_point(layer)
                with _naming(paper, cell, "pool"):
                    checked_requests(one, backbone)
        if problems:
            checked = _checked_by_name(spec.backbone, [c for c, _ in cells], backbone is not None)
            for cell, _ in cells:
                plan.cells[cell.id] = PlannedCell(cell, None, short, checked=checked[cell.id])
            jobs.append(BenchJob(spec, options))
            continue
        prepared = resolve(spec, options, backbone=backbone)
        for cell, one in cells:
            resolved = _resolved_cell(prepared, one, backbone)
            plan.cells[cell.id] = PlannedCell(cell, resolved.identity,
                                              run_name=prepared.run.run_name(resolved))
        points += prepared.run.requests
        jobs.append(BenchJob(spec, options, prepared=prepared))
    plan.jobs.append(jobs[0] if len(jobs) == 1 else SharedJob(jobs))
    plan.passes.append(ForwardPass(
        specs[0].backbone, specs[0].task, [c.id for cells in heads for c, _ in cells],
        list(dict.fromkeys(points)),
        None if task is None else sum(len(task.split(s)) for s in SPLITS), "; ".join(problems)))


def _build(spec: RunSpec, paper: Paper, cell: PaperCell,
           built: dict[str, tuple[Any, str]]) -> tuple[Any, Any, list[str]]:
    """(task, backbone, problems): each built here if it can be (a backbone once per preset and
    arguments: ``built``); what is missing, one phrase each ("weights missing (...)", "data
    missing (...)"). A bad argument is an error."""
    from bench.features.weights import WeightsError
    from bench.registry import backbones
    from bench.run.spec import build_task
    from bench.task import DatasetError

    task = backbone = None
    problems = []
    try:
        with _naming(paper, cell, "task_args"):
            task = build_task(spec)
    except BenchError as e:
        label = "data missing" if isinstance(e, DatasetError) else type(e).__name__
        problems.append(f"{label} ({_first(e)})")
    key = _key([spec.backbone, spec.backbone_args])
    if key not in built:
        try:
            with _naming(paper, cell, "backbone_args"):
                built[key] = (backbones.create(spec.backbone, **spec.backbone_args), "")
        except BenchError as e:
            label = "weights missing" if isinstance(e, WeightsError) else type(e).__name__
            built[key] = (None, f"{label} ({_first(e)})")
    backbone, problem = built[key]
    return task, backbone, problems + [problem] * bool(problem)


def _first(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def _resolved_cell(prepared: Any, spec: RunSpec, backbone: Any) -> Any:
    """The resolved cell of a one-cell spec among its job's cells (the same feature point)."""
    from bench.run.spec import feature_requests

    if not spec.features:  # a fusing head's cell: its spec is the job's
        return prepared.run.cells[0]
    wanted = tuple(feature_requests(spec, backbone)[:1])
    return next(c for c in prepared.run.cells if c.features == wanted)


def _checked_by_name(backbone: str, cells: list[PaperCell], built: bool) -> dict[str, str]:
    """What was checked of each cell when it could not be resolved: the preset, task and head
    always; the layer against the backbone itself (when it built) or its layer template."""
    from bench.registry import backbones

    if built:
        return {c.id: "preset, task, head, layer and pool checked" for c in cells}
    template = backbones.entry(backbone).layer_template
    pattern = _template_pattern(template) if template else None
    out = {}
    for cell in cells:
        if cell.layer is None:
            out[cell.id] = "preset, task and head checked; the preset's default layer"
        elif pattern is None:
            out[cell.id] = "preset, task and head checked; layer not checkable without weights"
        elif all(pattern.fullmatch(layer) for layer in cell.layer.split("+")):
            out[cell.id] = f"preset, task and head checked; layer matches {template}"
        else:
            out[cell.id] = (f"preset, task and head checked; layer {cell.layer!r} is not of the "
                            f"form {template} (checked when it resolves)")
    return out


def _template_pattern(template: str) -> re.Pattern[str]:
    """``block{block}@t{t}`` -> a regex of its names, each field a number."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name:
            parts.append(r"\d+")
    return re.compile("".join(parts))


def _mark_done(plan: PaperPlan, options: RunOptions) -> None:
    """Which resolved cells have a finished result in the suite (none with ``force``)."""
    from bench.results.runs import find_records

    identities = [c.identity for c in plan.cells.values() if c.identity]
    if options.force or not identities:
        return
    experiments = _experiments(options)
    found = {r.identity for r in find_records(experiments, identities)} if experiments else set()
    for planned in plan.cells.values():
        planned.done = planned.identity in found


def _key(args: Any) -> str:
    return json.dumps(args, sort_keys=True, default=str)


def describe_plan(plan: PaperPlan) -> list[str]:
    """The plan in lines: per table its cells (done, to run, not resolvable here and why), per
    job the cells one forward pass feeds, then the cost of what is to run (the sweep dry-run's
    report of those jobs: cells, cache, time where calibrated) and the similarity matrices."""
    from bench.run.sweep import SweepPlan, describe

    lines = [f"paper {plan.paper.name}: {plan.paper.title} ({plan.paper.citation})"]
    counts = {"done": 0, "to run": 0, "not resolvable here": 0}
    for table in plan.paper.tables:
        lines.append(f"table {table.key} ({table.kind}, {table.source}): {table.title}")
        if table.kind == "similarity":
            spec = plan.similarity[table.key]
            against = f" x {spec.against.backbone}" if spec.against else ""
            lines.append(f"  similarity matrix {spec.side.backbone}{against} on {spec.task} "
                         f"{spec.split} (n={spec.n or 'all'}, {spec.measure.name}): runs after "
                         "the cells, reused when logged")
            continue
        for cell in table.cells:
            lines.append("  " + _cell_line(plan.cells[cell.id], counts))
    lines.append("forward passes (one per backbone and task, shared by its cells):")
    for one in plan.passes:
        todo = [c for c in one.cells if not plan.cells[c].done]
        images = f"{one.images:,} images" if one.images is not None else "images unknown here"
        points = f", {_count(len(one.points), 'feature point')}" if one.points else ""
        lines.append(f"  {one.backbone} x {one.task}: one pass over {images}{points} feeds "
                     f"{_count(len(one.cells), 'cell')} ({len(todo)} to compute)")
        if one.problem:
            lines.append(f"    not resolvable here: {one.problem}")
    inner = [j for job in plan.pending_jobs(resolved_only=True)
             for j in (job.jobs if isinstance(job, SharedJob) else [job])]
    if inner:
        lines.append("cost of the cells to run (resolved here):")
        lines += ["  " + line for line in describe(SweepPlan(inner)).lines]
    lines.append(f"{_count(len(plan.cells), 'cell')}: {counts['done']} done, {counts['to run']} to run, "
                 f"{counts['not resolvable here']} not resolvable here; "
                 f"{len(plan.similarity)} similarity matrices; {len(plan.jobs)} jobs")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _cell_line(planned: PlannedCell, counts: dict[str, int]) -> str:
    cell = planned.cell
    where = f"{cell.backbone} {cell.task} {cell.layer or '(default layer)'} pool " \
            f"{cell.pool or '(default)'} {cell.head}"
    mark = " [protocol differs]" if cell.protocol else ""
    if planned.identity is None:
        counts["not resolvable here"] += 1
        state = f"not resolvable here: {planned.problem}; {planned.checked}"
    else:
        state = "done" if planned.done else "to run"
        counts[state] += 1
        state += f" [{planned.identity[:12]}]"
    return f"{cell.id}: {where}: paper {cell.value:g}{mark}: {state}"

