"""Verdicts: a paper's cells, claims and matrices set against the suite's results.

Each computed cell of a table or curve is resolved like ``bench reproduce`` resolves it
(``bench.study.plan.plan_paper``), so its result is found by identity among the suite's finished
records, wherever and however it was run. A cell's verdict compares the 95% bootstrap interval of
ours minus the paper's value with the equivalence margin ``m`` the paper file states (default one
point):

- ``reproduced``: the interval lies within [-m, +m];
- ``inconclusive``: it does not, and it is wider than the margin (2m) without lying wholly beyond
  it: more test images or seeds are needed to tell;
- ``differs``: otherwise, with its direction in words (``ours higher`` / ``ours lower``);
- ``not run``: no finished result with that identity; ``unavailable here``: the cell cannot be
  resolved on this machine (weights or data absent: what to download is said); ``failed``: its
  last run ended FAILED or KILLED, or its result cannot be judged (no interval, no such metric);
- ``not computed``: a published number bench does not compute (the paper file says why).
  A missing result is never reproduced.

A claim ("A beats B") compares two cells: the paper's difference beside ours, with the 95% paired
bootstrap interval of the difference (``bench.stats.compare``, as ``bench compare``) when both
results are on the same test images, else the two intervals combined as independent (said so).
It ``holds`` when that interval lies above 0, ``does not hold`` below 0, else it is ``not
distinguishable``; ``not run`` when either cell has no result.

Similarity tables find the finished matrix of their identity (its heatmaps) beside a description
of the paper's panels.

Each cell is judged under the recipe it was planned under (``bench.study.plan``: the paper's by
default); where the suite also holds its result under another recipe (``bench reproduce --recipe
bench``), that result is shown beside it (``CellResult.others``), never judged in its place.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.run.spec import RunOptions

if TYPE_CHECKING:
    from bench.results.record import RunRecord
    from bench.results.runs import UnfinishedRun
    from bench.run.spec import RunSpec
    from bench.study.paper import Claim, Paper, PaperCell, PaperTable
    from bench.study.plan import PaperPlan, PlannedCell

VERDICTS = ("reproduced", "differs", "inconclusive", "not run", "unavailable here", "failed",
            "not computed")
JUDGED = ("reproduced", "differs", "inconclusive")  # a result with an interval was compared
CLAIM_VERDICTS = ("holds", "does not hold", "not distinguishable", "not run")
HIGHER, LOWER = "ours higher", "ours lower"
DAGGER, DOUBLE_DAGGER = "†", "‡"
SLOT_NOTE = (f"{DOUBLE_DAGGER} No result has the identity resolved here; ours is the suite's "
             "current result of the same cell (backbone, task, layer, pool, head, seed and chosen "
             "settings), whose run resolved the protocol otherwise: precision auto is bf16 on a "
             "GPU and fp32 on a CPU, or another code version, weights or data. Run `bench report` "
             "where the cells ran to match identities exactly.")
RULES = ("Verdicts: **reproduced** when the 95% interval of ours minus the paper (bootstrap over "
         "test images) lies within the equivalence margin; **differs** (ours higher / ours lower) "
         "when it does not; **inconclusive** when the interval is wider than the margin and not "
         "wholly beyond it; **not run** when no finished result has the cell's identity; "
         "**unavailable here** when its weights or data are not on this machine; **failed** when "
         "its last run failed or its result cannot be judged (the reason is given); **not "
         "computed** for a published number bench does not compute. A missing result is never "
         "reproduced.")


def verdict(low: float, high: float, margin: float) -> tuple[str, str]:
    """(verdict, direction) of an interval [low, high] of ours minus the paper, for a margin."""
    if -margin <= low and high <= margin:
        return "reproduced", ""
    beyond = low > margin or high < -margin
    if high - low > 2 * margin and not beyond:
        return "inconclusive", ""
    return "differs", HIGHER if low + high > 0 else LOWER


@dataclass(frozen=True)
class RecipeResult:
    """A cell's finished result under another recipe than the one its verdict is of."""

    recipe: str
    ours: float
    low: float | None
    high: float | None
    run_id: str

    @property
    def shown(self) -> str:
        interval = "" if self.low is None else f" [{self.low:.2f}, {self.high:.2f}]"
        return f"{self.ours:.2f}{interval}"


@dataclass
class CellResult:
    """One cell of the paper beside ours."""

    cell: PaperCell
    verdict: str  # one of VERDICTS
    why: str = ""  # not run / unavailable / failed / not computed: the reason
    ours: float | None = None  # test_<metric>, percent
    low: float | None = None  # its 95% interval
    high: float | None = None
    run_id: str = ""
    test_manifest: str = ""  # what the test set was: claims pair results on the same one
    by_slot: bool = False  # ours is the slot's result, not of the identity resolved here
    direction: str = ""  # differs: HIGHER or LOWER
    margin: float = 1.0
    identity: str = ""  # the identity resolved here
    command: str = ""  # the one `bench run` that recomputes it
    weights_sha256: str = ""  # of the result judged
    code_version: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # the selected grid point (best.*)
    recipe: str = "bench"  # how ours was trained (bench.protocol.RECIPES)
    recipe_note: str = ""  # why that is not the recipe asked for ("": it is)
    others: list[RecipeResult] = field(default_factory=list)  # ours under other recipes

    @property
    def difference(self) -> float | None:
        return None if self.ours is None else self.ours - self.cell.value

    @property
    def shown(self) -> str:
        """The verdict in words: ``differs: ours higher``."""
        return f"{self.verdict}: {self.direction}" if self.direction else self.verdict


@dataclass
class ClaimResult:
    """A claim of the paper ("higher beats lower") and what our results say of it."""

    claim: Claim
    verdict: str  # one of CLAIM_VERDICTS
    paper: float  # the paper's difference, higher - lower, points
    ours: float | None = None
    low: float | None = None  # 95% interval of our difference
    high: float | None = None
    how: str = ""  # how the interval was obtained, or why there is none

    def line(self) -> str:
        """``A beats B: paper +X, ours +Y [a, b] (how): verdict``."""
        ours = ("ours: none" if self.ours is None else
                f"ours {self.ours:+.2f} [{self.low:+.2f}, {self.high:+.2f}]")
        return f"{self.claim.text}: paper {self.paper:+.2f}, {ours} ({self.how}): {self.verdict}"


@dataclass
class SimilarityPanel:
    """A similarity table: the paper's layout and our finished matrix, when there is one."""

    table: PaperTable
    verdict: str  # "found" | "not run" | "unavailable here" | "failed"
    layout: str  # the paper's panels, described from the table's fields
    why: str = ""
    identity: str = ""
    run_id: str = ""
    summary: str = ""  # our matrix in a line
    figures: dict[str, bytes] = field(default_factory=dict)  # PNG name -> bytes


@dataclass
class Report:
    paper: Paper
    suite: str
    cells: dict[str, CellResult]  # by cell id, tables and curves
    claims: list[ClaimResult]
    similarity: dict[str, SimilarityPanel]  # by table key
    all_tables: bool = True  # False: --table chose some
    folder: Path | None = None
    files: list[Path] = field(default_factory=list)
    run_id: str = ""
    reused: bool = False  # the same report was logged already

    def counts(self) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in self.cells.values()) for v in VERDICTS}

    def claim_counts(self) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in self.claims) for v in CLAIM_VERDICTS}

    def any_run(self) -> bool:
        """Whether anything of the paper was run at all (a result, a failed run, a matrix)."""
        return any(c.run_id for c in self.cells.values()) or any(
            p.verdict == "found" for p in self.similarity.values())

    def summary(self) -> str:
        """One line: counts per verdict (differs with its directions)."""
        found = self.counts()
        shown = []
        for v, n in found.items():
            if n or v in JUDGED:
                shown.append(f"{n} {v}")
            if v == "differs" and n:
                higher = sum(c.direction == HIGHER for c in self.cells.values())
                shown[-1] += f" ({higher} {HIGHER}, {n - higher} {LOWER})"
        counts = ", ".join(shown)
        line = f"{len(self.cells)} cells: {counts}"
        if self.claims:
            line += "; claims: " + ", ".join(f"{n} {v}" for v, n in self.claim_counts().items())
        if self.similarity:
            found = sum(p.verdict == "found" for p in self.similarity.values())
            line += f"; similarity: {found} of {len(self.similarity)} matrices found"
        return line

    def findings(self) -> list[str]:
        """The reviewer's summary: reproduced n of m judged, the median gap, the largest misses,
        and how many judged cells ran under another protocol than the paper's."""
        judged = [c for c in self.cells.values() if c.verdict in JUDGED]
        if not judged:
            return ["no cell has a result to judge yet"]
        gaps = [c.difference for c in judged]
        reproduced = sum(c.verdict == "reproduced" for c in judged)
        other = sum(bool(c.cell.protocol) for c in judged)
        recipes = {r: sum(c.recipe == r for c in judged) for r in dict.fromkeys(
            c.recipe for c in judged)}
        out = [f"reproduced {reproduced} of {len(judged)} cells with a result (margin "
               f"{_margins(judged)} points); median gap, ours minus the paper: "
               f"{statistics.median(gaps):+.2f} points",
               f"protocol: {len(judged) - other} judged under the paper's protocol, {other} under "
               f"another ({DAGGER}: the gap may be the protocol's)",
               "recipe: " + ", ".join(f"{n} judged under {r}'s" for r, n in recipes.items())]
        misses = sorted((c for c in judged if c.verdict == "differs"),
                        key=lambda c: -abs(c.difference))[:3]
        if misses:
            out.append("largest misses: " + "; ".join(
                f"{c.cell.id} {c.difference:+.2f} ({c.direction})" for c in misses))
        return out

    def to_json(self) -> str:
        """What the report says (its identity digests this): the paper's text as shown (titles,
        sources, notes) and every cell, claim and matrix."""
        paper = self.paper
        cells = [{"id": c.cell.id, "table": c.cell.table, "method": c.cell.method,
                  "backbone": c.cell.backbone, "task": c.cell.task, "layer": c.cell.layer,
                  "pool": c.cell.pool, "head": c.cell.head, "metric": c.cell.metric,
                  "paper": c.cell.value, "ours": c.ours, "low": c.low, "high": c.high,
                  "difference": c.difference, "margin": c.margin, "verdict": c.verdict,
                  "direction": c.direction, "why": c.why, "run_id": c.run_id,
                  "by_slot": c.by_slot, "identity": c.identity, "command": c.command,
                  "settings": c.settings, "weights_sha256": c.weights_sha256,
                  "code_version": c.code_version, "protocol": c.cell.protocol,
                  "assumed": c.cell.assumed, "note": c.cell.note, "source": c.cell.source,
                  "recipe": c.recipe, "recipe_note": c.recipe_note,
                  "others": [vars(o) for o in c.others]}
                 for c in self.cells.values()]
        claims = [{"text": c.claim.text, "higher": c.claim.higher, "lower": c.claim.lower,
                   "paper": c.paper, "ours": c.ours, "low": c.low, "high": c.high,
                   "how": c.how, "verdict": c.verdict} for c in self.claims]
        similarity = [{"table": k, "verdict": p.verdict, "why": p.why, "identity": p.identity,
                       "run_id": p.run_id} for k, p in self.similarity.items()]
        tables = [{"key": t.key, "kind": t.kind, "title": t.title, "source": t.source,
                   "note": t.note} for t in paper.tables]
        left_out = [vars(left) for left in paper.left_out]
        return json.dumps({"paper": paper.name, "title": paper.title, "citation": paper.citation,
                           "note": paper.note, "file": paper.origin, "suite": self.suite,
                           "tables": tables, "left_out": left_out, "findings": self.findings(),
                           "cells": cells, "claims": claims, "similarity": similarity}, indent=1)


def _margins(cells: list[CellResult]) -> str:
    return "/".join(f"{m:g}" for m in sorted({c.margin for c in cells}))


# --- verdicts ------------------------------------------------------------------------------------
def judge_cell(cell: PaperCell, planned: PlannedCell, record: RunRecord | None,
               unfinished: UnfinishedRun | None, suite: str, by_slot: bool = False,
               margin: float = 1.0) -> CellResult:
    """The verdict of one cell from its finished record (or what tracking says of its runs).
    ``by_slot``: the record is its slot's current result, of another identity (``SLOT_NOTE``)."""
    from bench.results.record import ci_names

    base = {"margin": margin, "identity": planned.identity or ""}
    if not cell.computed:
        return CellResult(cell, "not computed", cell.not_computed, **base)
    if planned.identity is None:
        return CellResult(cell, "unavailable here", planned.problem or "not resolvable here",
                          **base)
    if record is None:
        if unfinished is not None and unfinished.status != "RUNNING":
            error = f" ({unfinished.error})" if unfinished.error else ""
            return CellResult(cell, "failed", f"its last run {unfinished.run_id} ended "
                              f"{unfinished.status} without a result{error}; `bench reproduce` "
                              "runs it again", run_id=unfinished.run_id, **base)
        why = f"no finished result with its identity in suite {suite!r}"
        if unfinished is not None:
            why += f" (run {unfinished.run_id} is RUNNING: being logged, or its process died)"
        return CellResult(cell, "not run", why, **base)
    found = CellResult(cell, "failed", run_id=record.run_id or "",
                       test_manifest=record.test_manifest, by_slot=by_slot,
                       weights_sha256=record.weights_sha256, code_version=record.code_version,
                       settings=dict(record.best), **base)
    metric = f"test_{cell.metric}"
    if metric not in record.metrics:
        found.why = f"its result {record.run_id} has no {metric}"
        return found
    found.ours = record.metrics[metric]
    if any(name not in record.metrics for name in ci_names(cell.metric)):
        found.why = (f"its result {record.run_id} has no 95% interval (logged before bench "
                     "recorded intervals); re-run it with --force")
        return found
    found.low, found.high = record.interval(cell.metric)
    found.verdict, found.direction = verdict(found.low - cell.value, found.high - cell.value,
                                             margin)
    if by_slot:
        found.why = f"{DOUBLE_DAGGER} run {record.run_id}, another identity"
    return found


def judge_claim(claim: Claim, higher: CellResult, lower: CellResult,
                paired: Any = None) -> ClaimResult:
    """A claim's verdict. ``paired``: a ``bench.stats.Comparison`` of higher - lower on the same
    test images (None: the two intervals are combined as independent)."""
    out = ClaimResult(claim, "not run", higher.cell.value - lower.cell.value)
    missing = [c for c in (higher, lower) if c.ours is None or c.low is None]
    if missing:
        out.how = "; ".join(f"{c.cell.id} {c.verdict}" + (f": {c.why}" if c.why else "")
                            for c in missing)
        return out
    if paired is not None:
        out.ours, out.low, out.high = paired.difference, paired.low, paired.high
        out.how = (f"95% paired bootstrap interval over the same {paired.n} test images, "
                   f"{paired.p_text()}")
    else:
        half = math.hypot((higher.high - higher.low) / 2, (lower.high - lower.low) / 2)
        out.ours = higher.ours - lower.ours
        out.low, out.high = out.ours - half, out.ours + half
        out.how = ("unpaired: the two results are not on the same test images, so their 95% "
                   "intervals are combined as independent")
    out.verdict = ("holds" if out.low > 0 else "does not hold" if out.high < 0 else
                   "not distinguishable")
    return out


def _add_other_recipe(cells: dict[str, CellResult], plan: PaperPlan, other: PaperPlan,
                      experiments: list[str]) -> None:
    """Each cell's finished result under ``other``'s recipe, where that is another identity."""
    from bench.results.runs import find_records

    wanted = {o.identity: cell_id for cell_id, o in other.cells.items()
              if o.identity and o.identity != plan.cells[cell_id].identity}
    found: dict[str, RunRecord] = {}
    for record in find_records(experiments, list(wanted)) if wanted and experiments else []:
        found.setdefault(record.identity, record)  # newest first
    for identity, record in found.items():
        result = cells[wanted[identity]]
        metric = result.cell.metric
        if f"test_{metric}" not in record.metrics:
            continue
        low, high = record.interval(metric) or (None, None)
        result.others.append(RecipeResult(other.cells[wanted[identity]].recipe,
                                          record.metrics[f"test_{metric}"], low, high,
                                          record.run_id or ""))


def _compare(higher: CellResult, lower: CellResult) -> Any:
    """The paired comparison of two results on the same test images, else None."""
    from bench.results.artifacts import load_predictions
    from bench.stats import compare

    if not (higher.test_manifest and higher.test_manifest == lower.test_manifest
            and higher.cell.metric == lower.cell.metric and higher.run_id and lower.run_id):
        return None
    return compare(load_predictions(higher.run_id), load_predictions(lower.run_id),
                   higher.cell.metric, names=(higher.cell.id, lower.cell.id))


def layout(table: PaperTable, spec: Any) -> str:
    """The paper's figure as a sentence, from the table's fields and its similarity spec."""
    def side(s: Any) -> str:
        pools = f", pools {', '.join(s.pools)}" if s.pools else ""
        return f"{s.backbone} {', '.join(s.layers) or 'default layers'}{pools}"

    cols = side(spec.against) if spec.against is not None else "the same points"
    n = f"{spec.n} images" if spec.n else "every image"
    return (f"{table.source}: {table.title}. Rows: {side(spec.side)}; columns: {cols}; "
            f"{spec.measure.name} on {n} of {spec.task} ({spec.split}). The paper's own values "
            "are not in the repository: compare the panels by eye.")


def judge_similarity(table: PaperTable, spec: Any, experiment_ids: list[str],
                     options: RunOptions) -> SimilarityPanel:
    """The finished matrix of the table's identity, if any (its heatmaps), and the paper's layout."""
    import numpy as np

    from bench.features.weights import WeightsError
    from bench.run.similarity_run import logged, plan
    from bench.study.queries import finished_matrices
    from bench.task import DatasetError

    panel = SimilarityPanel(table, "not run", layout(table, spec))
    try:
        panel.identity = plan(spec, options).identity
    except BenchError as e:
        missing = isinstance(e, (WeightsError, DatasetError))
        panel.verdict = "unavailable here" if missing else "failed"
        panel.why = (str(e).splitlines() or [type(e).__name__])[0]
        return panel
    found = finished_matrices(experiment_ids, panel.identity)
    if not found:
        panel.why = "no finished matrix with its identity (`bench reproduce` computes it)"
        return panel
    result = logged(found[0])
    panel.verdict, panel.run_id = "found", found[0].run_id or ""
    panel.summary = (f"{len(result.rows)} x {len(result.cols)} points, n = {result.n} images, "
                     f"{result.protocol['measure']['measure']}, mean value "
                     f"{float(np.nanmean(result.values)):.3f}")
    panel.figures = {name: path.read_bytes() for name, path in sorted(result.files.items())
                     if name.endswith(".png")}
    return panel


def run_command(cell: PaperCell, template: RunSpec | None, suite: str,
                recipe: str = "bench") -> str:
    """The one ``bench run`` that computes this cell under ``recipe`` (the same identity, so its
    result counts for the paper too)."""
    from bench.protocol import head_kind

    def arg(flag: str, values: Any) -> list[str]:
        return [part for key, value in values.items() for part in (flag, f"{key}={_cli(value)}")]

    parts = ["bench", "run", "--backbone", cell.backbone, "--task", cell.task, "--head", cell.head]
    if recipe != "bench":
        parts += ["--recipe", recipe]
    if cell.layer:
        layers = cell.layer.split("+") if head_kind(cell.head).fuses_layers else [cell.layer]
        parts += ["--layer", ",".join(layers)]
    if cell.pool:
        parts += ["--pool", cell.pool]
    given = template
    parts += arg("--backbone-arg", {**(given.backbone_args if given else {}), **cell.backbone_args})
    parts += arg("--task-arg", {**(given.task_args if given else {}), **cell.task_args})
    parts += arg("--probe-arg", {**(given.head_args if given else {}), **cell.head_args})
    if given is not None:
        if given.seed:
            parts += ["--seed", str(given.seed)]
        for flag, value, default in (("--precision", given.precision, "auto"),
                                     ("--cache-dtype", given.cache_dtype, "auto")):
            if value != default:
                parts += [flag, value]
        if given.skip_corrupt:
            parts.append("--skip-corrupt")
        if given.views > 1:
            parts += ["--views", str(given.views), "--augment", given.augment]
        if given.online and head_kind(cell.head).online:
            parts += ["--online"] + (["--augment", given.augment]
                                     if given.augment != "paper" else [])
    if suite != "bench":
        parts += ["--suite", suite]
    return shlex.join(parts)


def _cli(value: Any) -> str:
    """A value as ``--x-arg KEY=VALUE`` reads it back (JSON where JSON would parse)."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.dumps(value)


def build(paper: Paper, plan: PaperPlan, suite: str, options: RunOptions,
          all_tables: bool = True, others: tuple[PaperPlan, ...] = ()) -> Report:
    """Judge every cell, claim and matrix of ``paper`` against the suite's results; ``others``:
    plans of the same cells under other recipes, whose results are shown beside."""
    from bench.study.queries import find_results

    found = find_results(plan, suite)
    cells = {}
    for table in paper.tables:
        for cell in table.cells:
            planned = plan.cells[cell.id]
            record = found.records.get(planned.identity or "")
            other = found.by_slot.get(planned.identity or "") if record is None else None
            cells[cell.id] = judge_cell(cell, planned, record or other,
                                        found.unfinished.get(planned.identity or ""), suite,
                                        other is not None, paper.margin_of(cell))
            cells[cell.id].recipe = planned.recipe
            cells[cell.id].recipe_note = planned.recipe_note
            if cell.computed:
                cells[cell.id].command = run_command(cell, plan.template, suite, planned.recipe)
    for other in others:
        _add_other_recipe(cells, plan, other, found.experiments)
    claims = [judge_claim(c, cells[c.higher], cells[c.lower],
                          _compare(cells[c.higher], cells[c.lower])) for c in paper.claims]
    similarity = {t.key: judge_similarity(t, plan.similarity[t.key], found.experiments, options)
                  for t in paper.tables if t.kind == "similarity"}
    return Report(paper, suite, cells, claims, similarity, all_tables)
