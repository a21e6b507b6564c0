"""A paper's cells as one plan: each cell resolved like ``bench run``, grouped into shared jobs.

Every computed cell of a paper (``bench.study.paper``) becomes a run spec with one explicit
(layer, pool) feature and is resolved by ``bench.run.spec.resolve``, so its identity is the one a
hand-typed ``bench run`` of the same protocol gets, and a result logged either way counts for
both. Cells of one (backbone, task, arguments) and head form one ``BenchJob``; the jobs of one
backbone and task form one ``SharedJob``, whose features come from one backbone pass per split
(every layer and timestep any of its cells reads). Similarity tables become ``SimilaritySpec``s,
their backbones, tasks and arguments checked by name.

Where a cell cannot be resolved here (weights or data absent on this machine), the plan says so
per cell and lists what a full run would download, after checking by name what can be checked:
the preset, the task, the head and its settings, the arguments, and the layer against the
preset's layer template (``block{block}@t{t}``). A name that is wrong anywhere (an unknown preset
or task, a misspelt argument, a layer the backbone lacks) is a one-line error naming the paper
file, the table and the cell, before any work. With ``local_only`` (a dry run) nothing is
downloaded: weights and data are looked up where they would be.

Recipes (``bench.protocol.RECIPES``): a cell trains under its own ``recipe:`` if it names one
(a head without that recipe is an error naming the cell), else under the template's
(``bench reproduce --recipe``; ``STUDY_RECIPE``, the paper's, by default). A cell whose head
has no such recipe (knn, mlp, bn-linear, difformer for ``paper``) is planned under bench's own,
and the plan and the report say so (``PlannedCell.recipe_note``): it is a cell of the paper
still, computed the only way bench can.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from bench.errors import BenchError, UsageError
from bench.points import LayerTemplate
from bench.run.jobs import BenchJob, SharedJob
from bench.run.spec import SPLITS, RunOptions, RunSpec
from bench.study.paper import Paper, PaperCell, PaperError, PaperTable

STUDY_RECIPE = "paper"  # the recipe a paper's cells train under unless told otherwise


@dataclass
class PlannedCell:
    cell: PaperCell
    identity: str | None  # the result identity, as `bench run` resolves it (None: not here)
    problem: str = ""  # why not resolvable here ("weights missing; data missing"), one line
    run_name: str = ""  # bench's record name for the cell (RunRecord.name), when resolved
    done: bool = False  # a finished result of this identity is in the suite
    checked: str = ""  # what was checked by name when it could not be resolved
    recipe: str = "bench"  # the recipe it is planned under (bench.protocol.RECIPES)
    recipe_note: str = ""  # why that is not the one asked for ("": it is)


@dataclass(frozen=True)
class Missing:
    """Something a full run would fetch that is not on this machine."""

    kind: str  # "weights" | "data"
    what: str  # the URL, hub file or dataset; else the loader's own sentence
    where: str = ""  # where it goes
    size: int | None = None  # bytes, when the registered metadata says

    def line(self) -> str:
        from bench.ranges import size_text

        where = f" -> {self.where}" if self.where else ""
        size = size_text(self.size) if self.size else "size not in the registered metadata"
        return f"{self.kind}: {self.what}{where} ({size})"


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
    template: RunSpec | None = None  # the spec fields no cell sets (seed, precision)
    missing: list[Missing] = field(default_factory=list)  # what a full run would download

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


def plan_paper(paper: Paper, options: RunOptions, template: RunSpec | None = None,
               local_only: bool = False) -> PaperPlan:
    """Resolve every cell of ``paper`` (``template``: the spec fields no cell sets, such as the
    precision and seed; its arguments go under each cell's) and group them into jobs.
    ``local_only``: download nothing (a dry run), list what is missing instead."""
    from bench.paths import downloads_off
    from bench.study.similarity import table_spec

    template = template or RunSpec(backbone="", task="", recipe=STUDY_RECIPE)
    plan = PaperPlan(paper, {}, {}, [], options=options, template=template)
    with downloads_off() if local_only else nullcontext():
        for table in paper.tables:
            if table.kind == "similarity":
                plan.similarity[table.key] = table_spec(paper, table, template)
                _check_similarity_names(paper, table, plan.similarity[table.key])
        groups: dict[tuple, dict[tuple, list[tuple[PaperCell, RunSpec]]]] = {}
        for cell in paper.cells():
            if not cell.computed:
                plan.cells[cell.id] = PlannedCell(cell, None)
                continue
            spec = cell_spec(paper, cell, template)
            key = (spec.backbone, spec.task, _key(spec.backbone_args), _key(spec.task_args))
            head = (spec.head, spec.recipe, _key(spec.head_args))
            if not spec.features:
                head += (cell.id,)  # a fusing head's cell is its own spec: all its layers
            groups.setdefault(key, {}).setdefault(head, []).append((cell, spec))
        built: dict[str, tuple[Any, str]] = {}  # one backbone per preset and arguments
        for heads in groups.values():
            _plan_group(plan, list(heads.values()), options, built)
        if local_only:  # what the similarity matrices would download too
            for spec in plan.similarity.values():
                for side in filter(None, (spec.side, spec.against)):
                    _backbone(plan, side.backbone, side.backbone_args, built, None)
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
    recipe, _ = cell_recipe(paper, cell, template)
    spec = replace(template, backbone=cell.backbone, task=cell.task, head=cell.head, recipe=recipe,
                   online=cell_online(cell, template)[0],
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


def cell_online(cell: PaperCell, template: RunSpec) -> tuple[bool, str]:
    """(whether ``cell`` trains through the backbone, why not where ``--online`` asked for it):
    a head that needs cached features (``HeadKind.online`` false) trains on them, said per cell,
    as a head without the asked recipe trains under bench's own."""
    from bench.protocol import head_kind

    if not template.online or head_kind(cell.head).online:
        return template.online, ""
    return False, f"head {cell.head} cannot train online: on cached train features"


def cell_recipe(paper: Paper, cell: PaperCell, template: RunSpec) -> tuple[str, str]:
    """(the recipe ``cell`` trains under, why it is not the template's or "" when it is): its
    own ``recipe:`` (refused for a head without it), else the template's where its head has it,
    else bench's own."""
    from bench.protocol import DEFAULT_RECIPE, RECIPES, head_kind, recipe_settings

    with _naming(paper, cell, "recipe"):
        kind = head_kind(cell.head)
        RECIPES.get(template.recipe)
        if cell.recipe:
            recipe_settings(kind, cell.recipe)  # a head without it: refused
            asked = "" if cell.recipe == template.recipe else \
                f"the cell asks for recipe {cell.recipe}"
            return cell.recipe, asked
    if template.recipe == DEFAULT_RECIPE or template.recipe in kind.recipes:
        return template.recipe, ""
    return DEFAULT_RECIPE, f"head {cell.head} has no {template.recipe} recipe: bench's own"


def _check_similarity_names(paper: Paper, table: PaperTable, spec: Any) -> None:
    """A similarity table's presets, task and their arguments by name, before any cell runs."""
    from bench.registry import UnknownNameError, backbones, check_arguments, tasks

    try:
        for side in filter(None, (spec.side, spec.against)):
            check_arguments("backbone", backbones.entry(side.backbone), side.backbone_args)
        check_arguments("task", tasks.entry(spec.task), spec.task_args)
    except (UsageError, UnknownNameError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise PaperError(f"{paper.path}, table {table.key!r}, field 'similarity': {first}") from e


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
    task, backbone, problems = _build(specs[0], plan, heads[0][0][0], built)
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
            for cell, one in cells:
                plan.cells[cell.id] = PlannedCell(cell, None, short, checked=checked[cell.id],
                                                  **_recipe(plan, cell, one))
            jobs.append(BenchJob(spec, options))
            continue
        prepared = resolve(spec, options, backbone=backbone)
        for cell, one in cells:
            resolved = _resolved_cell(prepared, one, backbone)
            plan.cells[cell.id] = PlannedCell(cell, resolved.identity,
                                              run_name=prepared.run.run_name(resolved),
                                              **_recipe(plan, cell, one))
        points += prepared.run.requests
        jobs.append(BenchJob(spec, options, prepared=prepared))
    plan.jobs.append(jobs[0] if len(jobs) == 1 else SharedJob(jobs))
    plan.passes.append(ForwardPass(
        specs[0].backbone, specs[0].task, [c.id for cells in heads for c, _ in cells],
        list(dict.fromkeys(points)),
        None if task is None else sum(len(task.split(s)) for s in SPLITS), "; ".join(problems)))


def _recipe(plan: PaperPlan, cell: PaperCell, spec: RunSpec) -> dict[str, str]:
    """A planned cell's recipe and, where it or its training is not the one asked for, why."""
    notes = (cell_recipe(plan.paper, cell, plan.template)[1], cell_online(cell, plan.template)[1])
    return {"recipe": spec.recipe, "recipe_note": "; ".join(note for note in notes if note)}


def _build(spec: RunSpec, plan: PaperPlan, cell: PaperCell,
           built: dict[str, tuple[Any, str]]) -> tuple[Any, Any, list[str]]:
    """(task, backbone, problems): each built here if it can be (a backbone once per preset and
    arguments: ``built``); what is missing, one phrase each ("weights missing (...)", "data
    missing (...)"), in full, and added to ``plan.missing``. A bad argument is an error."""
    from bench.run.spec import build_task
    from bench.task import DatasetError

    paper = plan.paper
    task = backbone = None
    problems = []
    try:
        with _naming(paper, cell, "task_args"):
            task = build_task(spec)
    except BenchError as e:
        label = "data missing" if isinstance(e, DatasetError) else type(e).__name__
        problems.append(f"{label} ({_first(e)})")
        _add_missing(plan, _missing_data(spec, e))
    backbone, problem = _backbone(plan, spec.backbone, spec.backbone_args, built, cell)
    return task, backbone, problems + [problem] * bool(problem)


def _backbone(plan: PaperPlan, name: str, args: dict[str, Any],
              built: dict[str, tuple[Any, str]], cell: PaperCell | None) -> tuple[Any, str]:
    """(backbone, problem), built once per preset and arguments; missing weights are listed."""
    from bench.features.weights import WeightsError
    from bench.registry import backbones

    key = _key([name, args])
    if key not in built:
        try:
            with _naming(plan.paper, cell, "backbone_args") if cell else nullcontext():
                built[key] = (backbones.create(name, **args), "")
        except BenchError as e:
            label = "weights missing" if isinstance(e, WeightsError) else type(e).__name__
            built[key] = (None, f"{label} ({_first(e)})")
            if isinstance(e, WeightsError):
                _add_missing(plan, _missing_weights(name, args, e))
    return built[key]


def _missing_weights(name: str, args: dict[str, Any], error: Exception) -> list[Missing]:
    """The files a full run would download for this preset: its registered release, looked up
    on this machine without the network (``bench.features.weights.locate``), with their sizes
    where the source publishes them; else the file the loader asked for."""
    from bench.features.weights import locate
    from bench.registry import backbones

    released = backbones.entry(name).released
    if released is not None and released.applies(args):
        missing = locate(released).missing
        if missing:
            return [Missing("weights", f"{released.hub_id}: {file.name}" if released.hub_id
                            else file.name, str(file.target() or "Hugging Face cache"),
                            file.size) for file in missing]
    return [Missing("weights", getattr(error, "source", "") or _first(error),
                    str(getattr(error, "target", "") or ""))]


def _missing_data(spec: RunSpec, error: Exception) -> list[Missing]:
    """What a task needs from the network: its registered downloads, else its own sentence."""
    from bench.registry import tasks

    try:
        made = tasks.create(spec.task, **spec.task_args)
    except BenchError:
        made = None
    downloads = list(getattr(made, "downloads", ()) or ())
    if downloads:
        return [Missing("data", d.url, str(getattr(made, "dir", "")), None) for d in downloads]
    return [Missing("data", f"task {spec.task}, no public download ({_first(error)}); "
                    f"`bench data download --task {spec.task}` says how to get it")]


def _add_missing(plan: PaperPlan, found: Missing | list[Missing]) -> None:
    for one in found if isinstance(found, list) else [found]:
        if one not in plan.missing:
            plan.missing.append(one)


def _first(error: Exception) -> str:
    """An error's first line, whole (never cut mid-word)."""
    return (str(error).splitlines() or [type(error).__name__])[0]


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
    pattern = LayerTemplate(template).pattern() if template else None
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


# --- the plan in words ---------------------------------------------------------------------------
def describe_plan(plan: PaperPlan) -> list[str]:
    """The plan in lines: per table its notes and cells (done, to run, not resolvable here and
    why, not computed and why), per job the cells one forward pass feeds, then the cost of what
    is to run (the sweep dry-run's report of those jobs: cells, cache, time where calibrated),
    the similarity matrices, what a full run would download and what the file leaves out."""
    from bench.run.sweep import SweepPlan, describe

    paper = plan.paper
    lines = [f"paper {paper.name}: {paper.title} ({paper.citation})"]
    if paper.note:
        lines.append(f"  note: {paper.note}")
    if plan.template is not None:
        lines.append(f"recipe: {plan.template.recipe} (`--recipe`; a cell naming its own keeps "
                     "it, a head without this recipe trains under bench's own: said per cell)")
    counts = {"done": 0, "to run": 0, "not resolvable here": 0, "not computed": 0}
    for table in paper.tables:
        lines.append(f"table {table.key} ({table.kind}, {table.source}): {table.title}")
        if table.note:
            lines.append(f"  note: {table.note}")
        if table.kind == "similarity":
            spec = plan.similarity[table.key]
            against = f" x {spec.against.backbone}" if spec.against else ""
            lines.append(f"  similarity matrix {spec.side.backbone}{against} on {spec.task} "
                         f"{spec.split} (n={spec.n or 'all'}, {spec.measure.name}): runs after "
                         "the cells, reused when logged")
            continue
        assumed: dict[str, list[str]] = {}
        for cell in table.cells:
            lines.append("  " + _cell_line(plan.cells[cell.id], counts))
            if cell.assumed and cell.computed:
                assumed.setdefault(cell.assumed, []).append(cell.id)
        lines += [f"  assumed ({', '.join(ids)}): {text}" for text, ids in assumed.items()]
    lines.append("forward passes (one per backbone and task, shared by its cells):")
    for one in plan.passes:
        todo = [c for c in one.cells if not plan.cells[c].done]
        images = f"{one.images:,} images" if one.images is not None else "images unknown here"
        points = f", {count(len(one.points), 'feature point')}" if one.points else ""
        lines.append(f"  {one.backbone} x {one.task}: one pass over {images}{points} feeds "
                     f"{count(len(one.cells), 'cell')} ({len(todo)} to compute)")
        if one.problem:
            lines.append(f"    not resolvable here: {one.problem}")
    inner = [j for job in plan.pending_jobs(resolved_only=True)
             for j in (job.jobs if isinstance(job, SharedJob) else [job])]
    if inner:
        lines.append("cost of the cells to run (resolved here):")
        lines += ["  " + line for line in describe(SweepPlan(inner)).lines]
    if plan.missing:
        lines.append("missing on this machine (weights a full run downloads; data from `bench "
                     "data download`):")
        lines += [f"  {one.line()}" for one in plan.missing]
    for left in paper.left_out:
        lines.append(f"left out: {left.what} ({left.source}): {left.reason}")
    lines.append(f"{count(len(plan.cells), 'cell')}: {counts['done']} done, {counts['to run']} to "
                 f"run, {counts['not resolvable here']} not resolvable here, "
                 f"{counts['not computed']} not computed; "
                 f"{count(len(plan.similarity), 'similarity matrix', 'similarity matrices')}; "
                 f"{count(len(plan.jobs), 'job')}")
    return lines


def count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _cell_line(planned: PlannedCell, counts: dict[str, int]) -> str:
    cell = planned.cell
    if not cell.computed:
        counts["not computed"] += 1
        return (f"{cell.id}: {cell.method or cell.id} on {cell.task}: paper {cell.value:g}: "
                f"not computed: {cell.not_computed}")
    where = f"{cell.backbone} {cell.task} {cell.layer or '(default layer)'} pool " \
            f"{cell.pool or '(default)'} {cell.head}"
    mark = (" [protocol differs]" if cell.protocol else "") + (" [assumed]" if cell.assumed else "")
    if planned.identity is None:
        counts["not resolvable here"] += 1
        state = f"not resolvable here: {planned.problem}; {planned.checked}"
    else:
        state = "done" if planned.done else "to run"
        counts[state] += 1
        state += f" [{planned.identity[:12]}]"
    recipe = f"; recipe {planned.recipe}" + (
        f" ({planned.recipe_note})" if planned.recipe_note else "")
    return f"{cell.id}: {where}: paper {cell.value:g}{mark}: {state}{recipe}"


def resolved_runs(plan: PaperPlan) -> list[Any]:
    """The ``ResolvedRun`` of each job of the plan resolved here (a SharedJob's jobs each)."""
    return [one.prepared.run for job in plan.jobs for one in getattr(job, "jobs", [job])
            if one.prepared is not None]


def slot_keys(plan: PaperPlan) -> dict[str, str]:
    """Each resolved cell's identity -> the slot key its record carries."""
    from bench.results.record import resolved_slot_key

    return {cell.identity: resolved_slot_key(run, cell) for run in resolved_runs(plan)
            for cell in run.cells}
