"""A paper's report: its tables beside our results, cell by cell, with a verdict each.

Each cell of a table or curve is resolved like ``bench reproduce`` resolves it
(``bench.run.reproduce.plan_paper``), so its result is found by identity among the suite's
finished records, wherever and however it was run. A cell's verdict says where the paper's value
falls against our 95% bootstrap interval:

- ``reproduced``: inside it (ends included); ``higher`` / ``lower``: ours is above / below it and
  the interval excludes it;
- ``not run``: no finished result with that identity; ``failed``: the cell cannot be resolved
  here (the reason is given), its last run ended FAILED or KILLED, or its result cannot be
  judged (no interval, no such metric). A missing result is never reproduced.

A claim ("A beats B") compares two cells: the paper's difference beside ours, with the 95% paired
bootstrap interval of the difference (``bench.stats.compare``, as ``bench compare``) when both
results are on the same test images, else the two intervals combined as independent (said so).
It ``holds`` when that interval lies above 0, ``does not hold`` below 0, else it is ``not
distinguishable``; ``not run`` when either cell has no result.

Similarity tables show the heatmaps of the finished matrix of their identity (``bench
similarity``'s figures) beside a description of the paper's panels.

``make_report`` writes ``results/reports/PAPER/`` (Markdown and standalone HTML pages per table,
an index, figures, ``report.json``) and logs the folder as one MLflow run (``bench.kind =
report``). The same content is logged once: a rerun that finds a finished report of the same
paper and tables saying the same keeps that run; a changed report is a new run and the older
ones are marked superseded.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError
from bench.run.spec import RunOptions, RunSpec

if TYPE_CHECKING:
    from bench.results.papers import Claim, Paper, PaperCell, PaperTable
    from bench.results.record import RunRecord
    from bench.results.runs import UnfinishedRun
    from bench.run.reproduce import PaperPlan, PlannedCell

VERDICTS = ("reproduced", "higher", "lower", "not run", "failed")
CLAIM_VERDICTS = ("holds", "does not hold", "not distinguishable", "not run")
UNRESOLVED = "cannot be resolved here: "
DAGGER, DOUBLE_DAGGER = "†", "‡"
SLOT_NOTE = (f"{DOUBLE_DAGGER} No result has the identity resolved here; ours is the suite's "
             "current result of the same cell (backbone, task, layer, pool, head, seed and chosen "
             "settings), whose run resolved the protocol otherwise: precision auto is bf16 on a "
             "GPU and fp32 on a CPU, or another code version, weights or data. Run `bench report` "
             "where the cells ran to match identities exactly.")
RULES = ("Verdicts: **reproduced** when the paper's value lies inside our 95% interval (over "
         "test images, bootstrap); **higher** / **lower** when ours is above / below it and the "
         "interval excludes it; **not run** when no finished result has the cell's identity; "
         "**failed** when the cell cannot be resolved here, its last run failed, or its result "
         "cannot be judged (the reason is given). A missing result is never reproduced.")


@dataclass
class CellResult:
    """One cell of the paper beside ours."""

    cell: PaperCell
    verdict: str  # one of VERDICTS
    why: str = ""  # not run / failed: the reason
    ours: float | None = None  # test_<metric>, percent
    low: float | None = None  # its 95% interval
    high: float | None = None
    run_id: str = ""
    test_manifest: str = ""  # what the test set was: claims pair results on the same one
    by_slot: bool = False  # ours is the slot's result, not of the identity resolved here

    @property
    def difference(self) -> float | None:
        return None if self.ours is None else self.ours - self.cell.value


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
    verdict: str  # "found" | "not run" | "failed"
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
        """One line: counts per verdict."""
        counts = ", ".join(f"{n} {v}" for v, n in self.counts().items())
        line = f"{len(self.cells)} cells: {counts}"
        if self.claims:
            line += "; claims: " + ", ".join(f"{n} {v}" for v, n in self.claim_counts().items())
        if self.similarity:
            found = sum(p.verdict == "found" for p in self.similarity.values())
            line += f"; similarity: {found} of {len(self.similarity)} matrices found"
        return line

    def to_json(self) -> str:
        """What the report says (its identity digests this): every cell, claim and matrix."""
        cells = [{"id": c.cell.id, "table": c.cell.table, "paper": c.cell.value,
                  "ours": c.ours, "low": c.low, "high": c.high, "verdict": c.verdict,
                  "why": c.why, "run_id": c.run_id, "by_slot": c.by_slot,
                  "protocol": c.cell.protocol}
                 for c in self.cells.values()]
        claims = [{"text": c.claim.text, "higher": c.claim.higher, "lower": c.claim.lower,
                   "paper": c.paper, "ours": c.ours, "low": c.low, "high": c.high,
                   "how": c.how, "verdict": c.verdict} for c in self.claims]
        similarity = [{"table": k, "verdict": p.verdict, "why": p.why, "identity": p.identity,
                       "run_id": p.run_id} for k, p in self.similarity.items()]
        return json.dumps({"paper": self.paper.name, "suite": self.suite,
                           "tables": [t.key for t in self.paper.tables], "cells": cells,
                           "claims": claims, "similarity": similarity}, indent=1)


# --- verdicts ------------------------------------------------------------------------------------
def judge_cell(cell: PaperCell, planned: PlannedCell, record: RunRecord | None,
               unfinished: UnfinishedRun | None, suite: str, by_slot: bool = False) -> CellResult:
    """The verdict of one cell from its finished record (or what tracking says of its runs).
    ``by_slot``: the record is its slot's current result, of another identity (``SLOT_NOTE``)."""
    from bench.results.record import ci_names

    if planned.identity is None:
        return CellResult(cell, "failed", UNRESOLVED + (planned.problem or "no identity"))
    if record is None:
        if unfinished is not None and unfinished.status != "RUNNING":
            error = f" ({unfinished.error})" if unfinished.error else ""
            return CellResult(cell, "failed", f"its last run {unfinished.run_id} ended "
                              f"{unfinished.status} without a result{error}; `bench reproduce` "
                              "runs it again", run_id=unfinished.run_id)
        why = f"no finished result with its identity in suite {suite!r}"
        if unfinished is not None:
            why += f" (run {unfinished.run_id} is RUNNING: being logged, or its process died)"
        return CellResult(cell, "not run", why)
    found = CellResult(cell, "failed", run_id=record.run_id or "",
                       test_manifest=record.test_manifest, by_slot=by_slot)
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
    found.verdict = ("reproduced" if found.low <= cell.value <= found.high else
                     "higher" if found.low > cell.value else "lower")
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

    from bench.errors import BenchError
    from bench.results.matrices import find_similarity
    from bench.run.similarity_run import logged, plan

    panel = SimilarityPanel(table, "not run", layout(table, spec))
    try:
        panel.identity = plan(spec, options).identity
    except BenchError as e:
        panel.verdict = "failed"
        panel.why = UNRESOLVED + (str(e).splitlines() or [type(e).__name__])[0]
        return panel
    found = [r for e in experiment_ids for r in find_similarity(e, panel.identity)]
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


def resolved_runs(plan: PaperPlan) -> list[Any]:
    """The ``ResolvedRun`` of each job of the plan resolved here (a SharedJob's jobs each)."""
    return [one.prepared.run for job in plan.jobs for one in getattr(job, "jobs", [job])
            if one.prepared is not None]


def slot_keys(plan: PaperPlan) -> dict[str, str]:
    """Each resolved cell's identity -> the slot key its record carries."""
    from bench.results.record import resolved_slot_key

    return {cell.identity: resolved_slot_key(run, cell) for run in resolved_runs(plan)
            for cell in run.cells}


def build(paper: Paper, plan: PaperPlan, suite: str, options: RunOptions,
          all_tables: bool = True) -> Report:
    """Judge every cell, claim and matrix of ``paper`` against the suite's results."""
    from bench.results.claims import ended_claims
    from bench.results.runs import find_records, find_slot_records, unfinished_runs
    from bench.results.store import experiment_ids

    ids = experiment_ids([suite])
    identities = [p.identity for p in plan.cells.values() if p.identity]
    records: dict[str, RunRecord] = {}
    for record in find_records(ids, identities):  # newest first: the first of an identity wins
        records.setdefault(record.identity, record)
    slots = {i: key for i, key in slot_keys(plan).items() if i not in records}
    by_slot = find_slot_records(ids, slots.values())
    missing = [i for i in identities if i not in records]
    jobs = [[c.identity for c in run.cells] for run in resolved_runs(plan)]
    unfinished = ended_claims(ids, [j for j in jobs if set(j) & set(missing)])
    unfinished |= unfinished_runs(ids, missing)
    cells = {}
    for table in paper.tables:
        for cell in table.cells:
            planned = plan.cells[cell.id]
            found = records.get(planned.identity)
            other = by_slot.get(slots.get(planned.identity, "")) if found is None else None
            cells[cell.id] = judge_cell(cell, planned, found or other,
                                        unfinished.get(planned.identity), suite, other is not None)
    claims = [judge_claim(c, cells[c.higher], cells[c.lower],
                          _compare(cells[c.higher], cells[c.lower])) for c in paper.claims]
    similarity = {t.key: judge_similarity(t, plan.similarity[t.key], ids, options)
                  for t in paper.tables if t.kind == "similarity"}
    return Report(paper, suite, cells, claims, similarity, all_tables)


# --- pages ---------------------------------------------------------------------------------------
def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def rows(table: PaperTable, report: Report) -> list[dict[str, str]]:
    """The table's cells as page rows (Markdown and HTML show the same)."""
    out = []
    for cell in table.cells:
        result = report.cells[cell.id]
        ours = "" if result.ours is None else _number(result.ours) + (
            "" if result.low is None else f" [{result.low:.2f}, {result.high:.2f}]")
        diff = result.difference
        marks = (DAGGER if cell.protocol else "") + (DOUBLE_DAGGER if result.by_slot else "")
        row = {"cell": cell.id + (f" {marks}" if marks else "")}
        if table.kind == "curve":
            row |= {table.x or "x": str(cell.x), table.series or "series": cell.series}
        row |= {"backbone": cell.backbone, "layer": cell.layer or "(default)",
                "pool": cell.pool or "(default)", "task": cell.task, "head": cell.head,
                "metric": cell.metric, "paper": _number(cell.value),
                "ours [95% interval]": ours, "ours - paper": "" if diff is None else f"{diff:+.2f}",
                "verdict": result.verdict, "source": cell.source,
                "notes": "; ".join(t for t in (result.why, cell.note) if t)}
        out.append(row)
    return out


def footnotes(table: PaperTable, report: Report) -> list[str]:
    out = [f"{DAGGER} {cell.id}: run with another protocol than the paper's: {cell.protocol}"
           for cell in table.cells if cell.protocol]
    return out + ([SLOT_NOTE] if any(report.cells[c.id].by_slot for c in table.cells) else [])


def markdown_table(rows: list[dict[str, str]]) -> str:
    def clean(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(clean(r[k]) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def html_table(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    out = ["<table><tr>" + "".join(f"<th>{html.escape(k)}</th>" for k in head) + "</tr>"]
    for r in rows:
        verdict = r.get("verdict", "").replace(" ", "-")
        out.append(f'<tr class="{verdict}">' + "".join(
            f"<td>{html.escape(r[k])}</td>" for k in head) + "</tr>")
    return "\n".join(out + ["</table>"])


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:left}th{background:#eee}tr.reproduced td{background:#e6f4e6}tr.higher td,
tr.lower td{background:#fff4d6}tr.not-run td{background:#f2f2f2;color:#666}
tr.failed td{background:#fbe3e3}img{max-width:100%}.rules,.foot{font-size:0.85em;color:#555}"""


def html_page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def png_tag(png: bytes, alt: str) -> str:
    """An image embedded in the page: the HTML stands alone."""
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}">')


def curve_figure(table: PaperTable, report: Report) -> Any:
    """The curve as a matplotlib figure: per series, ours as a line with its interval band (the
    cells with a result) and the paper's values as points (every cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [cell.x for cell in table.cells]
    labels = list(dict.fromkeys(map(str, xs)))
    numeric = all(_number_or_none(x) is not None for x in xs)

    def position(x: Any) -> float:  # a number as it is, anything else in file order
        return _number_or_none(x) if numeric else float(labels.index(str(x)))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = list(dict.fromkeys(cell.series for cell in table.cells))
    for k, name in enumerate(series):
        colour = f"C{k % 10}"
        cells = sorted((c for c in table.cells if c.series == name), key=lambda c: position(c.x))
        ax.plot([position(c.x) for c in cells], [c.value for c in cells], "o", color=colour,
                mfc="none", label=f"paper{': ' + name if name else ''}")
        done = [report.cells[c.id] for c in cells if report.cells[c.id].low is not None]
        if done:
            x = [position(r.cell.x) for r in done]
            ax.plot(x, [r.ours for r in done], "-", marker=".", color=colour,
                    label=f"ours{': ' + name if name else ''} (95% interval)")
            ax.fill_between(x, [r.low for r in done], [r.high for r in done], color=colour,
                            alpha=0.2, linewidth=0)
    if not numeric:
        ax.set_xticks(range(len(labels)), labels)
    metrics = ", ".join(dict.fromkeys(c.metric for c in table.cells))
    ax.set_xlabel(table.x or "x")
    ax.set_ylabel(f"{metrics} (%)")
    ax.set_title(f"{table.title} ({table.source})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _number_or_none(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def table_pages(table: PaperTable, report: Report) -> dict[str, bytes]:
    """A table's files: ``KEY.md``, ``KEY.html`` and its figures (relative to the folder)."""
    title = f"{report.paper.title}: {table.title}"
    figures: dict[str, bytes] = {}
    md = [f"# {title}", "", f"{report.paper.citation}; {table.source}. Suite {report.suite!r}.", ""]
    page = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{html.escape(report.paper.citation)}; {html.escape(table.source)}. Suite "
            f"{html.escape(report.suite)!r}.</p>"]
    if table.kind == "similarity":
        panel = report.similarity[table.key]
        md += [f"**The paper's layout.** {panel.layout}", ""]
        page.append(f"<p><b>The paper's layout.</b> {html.escape(panel.layout)}</p>")
        if panel.verdict == "found":
            md += [f"**Ours** (run {panel.run_id}): {panel.summary}.", ""]
            page.append(f"<p><b>Ours</b> (run {panel.run_id}): {html.escape(panel.summary)}.</p>")
            for name, content in panel.figures.items():
                figures[f"{table.key}/{name}"] = content
                md += [f"![{name}]({table.key}/{name})", ""]
                page.append(png_tag(content, name))
        else:
            md += [f"**Ours**: {panel.verdict}: {panel.why}", ""]
            page.append(f"<p><b>Ours</b>: {panel.verdict}: {html.escape(panel.why)}</p>")
    else:
        shown = rows(table, report)
        md += [markdown_table(shown), ""]
        page.append(html_table(shown))
        notes = footnotes(table, report)
        md += [*notes, ""] if notes else []
        page += [f'<p class="foot">{html.escape(n)}</p>' for n in notes]
        if table.kind == "curve":
            figures[f"{table.key}.png"] = png(curve_figure(table, report))
            md += [f"![{table.key}]({table.key}.png)", ""]
            page.append(png_tag(figures[f"{table.key}.png"], table.key))
    md += [RULES, ""]
    page.append(f'<p class="rules">{_bold(RULES)}</p>')
    return {f"{table.key}.md": "\n".join(md).encode(),
            f"{table.key}.html": html_page(title, page).encode()} | figures


def _bold(markdown: str) -> str:
    """``**x**`` as ``<b>x</b>`` (the rules' emphasis), the rest escaped."""
    parts = html.escape(markdown).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def index_pages(report: Report) -> dict[str, bytes]:
    """``index.md`` and ``index.html``: the paper, counts, tables, claims."""
    paper = report.paper
    counts = report.summary()
    listed = []
    for table in paper.tables:
        if table.kind == "similarity":
            what = report.similarity[table.key].verdict
        else:
            tally = {v: sum(report.cells[c.id].verdict == v for c in table.cells)
                     for v in VERDICTS}
            what = ", ".join(f"{n} {v}" for v, n in tally.items() if n)
        listed.append((table, f"{table.title} ({table.source}, {table.kind}): {what}"))
    claims = [c.line() for c in report.claims]
    md = [f"# {paper.title}", "", f"{paper.citation}. Paper file: {paper.path or paper.name}. "
          f"Suite {report.suite!r}.", "", f"**{counts}**", "", "## Tables", ""]
    md += [f"- [{t.key}]({t.key}.md): {text}" for t, text in listed]
    page = [f"<h1>{html.escape(paper.title)}</h1>",
            f"<p>{html.escape(paper.citation)}. Paper file: {html.escape(paper.path or paper.name)}"
            f". Suite {html.escape(report.suite)!r}.</p>", f"<p><b>{html.escape(counts)}</b></p>",
            "<h2>Tables</h2><ul>"]
    page += [f'<li><a href="{t.key}.html">{t.key}</a>: {html.escape(text)}</li>'
             for t, text in listed]
    page.append("</ul>")
    if claims:
        md += ["", "## Claims", "", *[f"- {line}" for line in claims]]
        page += ["<h2>Claims</h2><ul>", *[f"<li>{html.escape(line)}</li>" for line in claims],
                 "</ul>"]
    md += ["", RULES, ""]
    page.append(f'<p class="rules">{_bold(RULES)}</p>')
    return {"index.md": "\n".join(md).encode(),
            "index.html": html_page(paper.title, page).encode()}


def write(report: Report, folder: Path) -> list[Path]:
    """Write the report's files into ``folder``, replacing what an earlier report left there."""
    from bench.locks import temp_name

    files = index_pages(report) | {"report.json": report.to_json().encode()}
    for table in report.paper.tables:
        files |= table_pages(table, report)
    tmp = temp_name(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    for name, content in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return [folder / name for name in files]


# --- the command ---------------------------------------------------------------------------------
def make_report(paper_name: str, tables: list[str] | None = None,
                options: RunOptions | None = None, template: RunSpec | None = None) -> Report:
    """Judge, write and log the report of a paper (a name or a .yaml path) in ``options.suite``;
    ``template``: the spec fields no cell sets, as ``bench reproduce`` was given them (seed,
    precision), so the cells resolve to the identities it ran."""
    from bench.digest import json_digest
    from bench.paths import reports_dir
    from bench.results.papers import load_paper
    from bench.results.publish import log_report
    from bench.results.store import ensure_experiment
    from bench.run.reproduce import plan_paper

    options = options or RunOptions()
    whole = load_paper(paper_name)
    paper = whole.select(tables)
    report = build(paper, plan_paper(paper, options, template), options.suite, options,
                   all_tables=len(paper.tables) == len(whole.tables))
    if not report.any_run():
        unresolved = [c for c in report.cells.values() if c.why.startswith(UNRESOLVED)]
        where = (f"; {len(unresolved)} of {len(report.cells)} cells cannot be resolved here "
                 f"({unresolved[0].why[len(UNRESOLVED):]}): report where their weights and data "
                 "are") if unresolved else ""
        raise UsageError(f"paper {paper.name!r} has no results in suite {options.suite!r} yet: "
                         f"run `bench reproduce {paper_name}` first (or name the suite they are "
                         f"in with --suite){where}")
    report.folder = reports_dir() / paper.name
    report.files = write(report, report.folder)
    keys = [t.key for t in paper.tables]
    logged = log_report(ensure_experiment(options.suite), paper.name, keys, report.all_tables,
                        json_digest(json.loads(report.to_json()))[:32], report.summary(),
                        report.folder)
    report.run_id, report.reused = logged.run_id, logged.reused
    return report
