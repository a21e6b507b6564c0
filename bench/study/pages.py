"""A report's pages: Markdown and standalone HTML per table, an index, figures, ``report.json``,
and the CSV/JSON export across every paper's report.

The report of paper NAME lives in ``REPORTS/NAME/`` (``bench.paths.reports_dir``), NAME a slug
checked when the paper was read; every file it writes is inside that folder. A new report is
written to a temporary folder beside it and swapped in by renames inside ``REPORTS``: the old one
is replaced only once the new one is complete, and a failure (a full disk) removes the temporary
folder and leaves the old report as it was. A folder that holds the report of another paper file
of the same name is never replaced.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.study.judge import DAGGER, DOUBLE_DAGGER, RULES, SLOT_NOTE, VERDICTS

if TYPE_CHECKING:
    from bench.study.judge import Report
    from bench.study.paper import PaperTable

EXPORT_CSV, EXPORT_JSON = "reports.csv", "reports.json"  # every paper's cells, in REPORTS
EXPORT_FIELDS = ("paper", "table", "id", "method", "backbone", "task", "layer", "pool", "head",
                 "metric", "paper_value", "ours", "low", "high", "difference", "margin",
                 "verdict", "direction", "why", "run_id", "command", "weights_sha256",
                 "code_version", "protocol", "assumed", "source", "recipe")


class ReportError(BenchError):
    """A report that cannot be written where it belongs (the message says why; nothing that was
    there before is lost)."""


# --- footnotes: one per distinct reason ---------------------------------------------------------
@dataclass
class Notes:
    """A table's footnotes, one per distinct text: marks ``†1`` (another protocol), ``*1`` (an
    assumed setting), ``[1]`` (a reason or note), ``‡`` (a result of its slot)."""

    marks: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, text) -> mark
    cells: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # -> cell ids

    def mark(self, kind: str, text: str, cell_id: str) -> str:
        if not text:
            return ""
        key = (kind, text)
        if key not in self.marks:
            n = sum(k == kind for k, _ in self.marks) + 1
            self.marks[key] = {"protocol": f"{DAGGER}{n}", "assumed": f"*{n}",
                               "slot": DOUBLE_DAGGER}.get(kind, f"[{n}]")
        self.cells.setdefault(key, []).append(cell_id)
        return self.marks[key]

    def lines(self) -> list[str]:
        out = []
        for (kind, text), mark in self.marks.items():
            ids = ", ".join(self.cells[(kind, text)])
            if kind == "protocol":
                out.append(f"{mark} run with another protocol than the paper's ({ids}): {text}")
            elif kind == "assumed":
                out.append(f"{mark} assumed, the paper does not print it ({ids}): {text}")
            elif kind == "slot":
                out.append(f"{SLOT_NOTE} ({ids})")
            else:
                out.append(f"{mark} {text} ({ids})")
        return out


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def rows(table: PaperTable, report: Report, notes: Notes | None = None) -> list[dict[str, str]]:
    """The table's cells as page rows (Markdown and HTML show the same); ``notes`` collects the
    footnotes their marks refer to."""
    notes = notes if notes is not None else Notes()
    others = list(dict.fromkeys(o.recipe for c in table.cells for o in report.cells[c.id].others))
    out = []
    for cell in table.cells:
        result = report.cells[cell.id]
        ours = "" if result.ours is None else _number(result.ours) + (
            "" if result.low is None else f" [{result.low:.2f}, {result.high:.2f}]")
        diff = result.difference
        marks = [notes.mark("protocol", cell.protocol, cell.id),
                 notes.mark("assumed", cell.assumed if cell.computed else "", cell.id),
                 notes.mark("slot", "slot" if result.by_slot else "", cell.id)]
        why = "" if result.by_slot else result.why
        refs = [notes.mark("note", text, cell.id) for text in (why, cell.note, result.recipe_note)
                if text]
        row = {"cell": " ".join([cell.id, *filter(None, marks)])}
        if table.kind == "curve":
            row |= {table.x or "x": str(cell.x), table.series or "series": cell.series}
        row |= {"backbone": cell.backbone or "-", "layer": cell.layer or "(default)",
                "pool": cell.pool or "(default)", "task": cell.task, "head": cell.head or "-",
                "metric": cell.metric, "paper": _number(cell.value),
                "recipe": result.recipe if cell.computed else "",
                "ours [95% interval]": ours, "ours - paper": "" if diff is None else f"{diff:+.2f}",
                "verdict": result.shown}
        shown = {o.recipe: o.shown for o in result.others}
        row |= {f"ours, {recipe} recipe": shown.get(recipe, "") for recipe in others}
        row |= {"run": result.run_id, "notes": " ".join(refs)}
        out.append(row)
    return out


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
        verdict = r.get("verdict", "").split(":")[0].replace(" ", "-")
        out.append(f'<tr class="{html.escape(verdict)}">' + "".join(
            f"<td>{html.escape(r[k])}</td>" for k in head) + "</tr>")
    return "\n".join(out + ["</table>"])


def details(table: PaperTable, report: Report) -> list[str]:
    """Per cell with a run or a command: its run id, the `bench run` that recomputes it, the
    settings selected, the weights' sha256 and the code version (one line each)."""
    out = []
    for cell in table.cells:
        result = report.cells[cell.id]
        if not result.command:
            continue
        parts = [f"`{result.command}`"]
        if result.run_id:
            parts.insert(0, f"run {result.run_id}")
        if result.settings:
            parts.append("selected " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else
                                                 f"{k} {v}" for k, v in result.settings.items()))
        if result.weights_sha256:
            parts.append(f"weights sha256 {result.weights_sha256}")
        if result.code_version:
            parts.append(f"code {result.code_version}")
        out.append(f"{cell.id}: " + "; ".join(parts))
    return out


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:left}th{background:#eee}tr.reproduced td{background:#e6f4e6}tr.differs td{
background:#fff4d6}tr.inconclusive td{background:#eef2fb}tr.not-run td,tr.unavailable-here td,
tr.not-computed td{background:#f2f2f2;color:#666}tr.failed td{background:#fbe3e3}
img{max-width:100%}.rules,.foot,.detail{font-size:0.85em;color:#555}code{font-size:0.9em}"""


def html_page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def png_tag(png: bytes, alt: str) -> str:
    """An image embedded in the page: the HTML stands alone."""
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}">')


def _bold(markdown: str) -> str:
    """``**x**`` as ``<b>x</b>`` (the rules' emphasis), the rest escaped."""
    parts = html.escape(markdown).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _code(markdown: str) -> str:
    """```x``` as ``<code>x</code>``, the rest escaped."""
    parts = html.escape(markdown).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _heading(title: str, line: str, note: str) -> tuple[list[str], list[str]]:
    """A page's first lines, as Markdown and as HTML: its title, what it is, the note if any."""
    md = [f"# {title}", "", line, ""]
    page = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(line)}</p>"]
    if note:
        md += [f"**Note.** {note}", ""]
        page.append(f"<p><b>Note.</b> {html.escape(note)}</p>")
    return md, page


def table_pages(table: PaperTable, report: Report) -> dict[str, bytes]:
    """A table's files: ``KEY.md``, ``KEY.html`` and its figures (relative to the folder)."""
    from bench.study.figures import curve_figure, png

    title = f"{report.paper.title}: {table.title}"
    figures: dict[str, bytes] = {}
    md, page = _heading(title, f"{report.paper.citation}; {table.source}. Suite "
                        f"{report.suite!r}.", table.note)
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
        notes = Notes()
        shown = rows(table, report, notes)
        md += [markdown_table(shown), ""]
        page.append(html_table(shown))
        foot = notes.lines()
        md += [*foot, ""] if foot else []
        page += [f'<p class="foot">{html.escape(n)}</p>' for n in foot]
        if table.kind == "curve":
            figures[f"{table.key}.png"] = png(curve_figure(table, report))
            md += [f"![{table.key}]({table.key}.png)", ""]
            page.append(png_tag(figures[f"{table.key}.png"], table.key))
        more = details(table, report)
        if more:
            md += ["## Cells in detail", "", *[f"- {line}" for line in more], ""]
            page += ["<h2>Cells in detail</h2><ul class=\"detail\">",
                     *[f"<li>{_code(line)}</li>" for line in more], "</ul>"]
    md += [RULES, ""]
    page.append(f'<p class="rules">{_bold(RULES)}</p>')
    return {f"{table.key}.md": "\n".join(md).encode(),
            f"{table.key}.html": html_page(title, page).encode()} | figures


def index_pages(report: Report) -> dict[str, bytes]:
    """``index.md`` and ``index.html``: the paper, findings, tables, claims, what is left out."""
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
    findings = report.findings()
    md, page = _heading(paper.title, f"{paper.citation}. Paper file: {paper.path or paper.name}"
                        f". Suite {report.suite!r}.", paper.note)
    md += [f"**{counts}**", "", "## Findings", "", *[f"- {line}" for line in findings], "",
           "## Tables", ""]
    page += [f"<p><b>{html.escape(counts)}</b></p>", "<h2>Findings</h2><ul>",
             *[f"<li>{html.escape(line)}</li>" for line in findings], "</ul>",
             "<h2>Tables</h2><ul>"]
    md += [f"- [{t.key}]({t.key}.md): {text}" for t, text in listed]
    page += [f'<li><a href="{t.key}.html">{t.key}</a>: {html.escape(text)}</li>'
             for t, text in listed]
    page.append("</ul>")
    if claims:
        md += ["", "## Claims", "", *[f"- {line}" for line in claims]]
        page += ["<h2>Claims</h2><ul>", *[f"<li>{html.escape(line)}</li>" for line in claims],
                 "</ul>"]
    if paper.left_out:
        left = [f"{x.what} ({x.source}): {x.reason}" for x in paper.left_out]
        md += ["", "## Left out of the paper file", "", *[f"- {line}" for line in left]]
        page += ["<h2>Left out of the paper file</h2><ul>",
                 *[f"<li>{html.escape(line)}</li>" for line in left], "</ul>"]
    md += ["", RULES, ""]
    page.append(f'<p class="rules">{_bold(RULES)}</p>')
    return {"index.md": "\n".join(md).encode(),
            "index.html": html_page(paper.title, page).encode()}


def render(report: Report, origin: str) -> dict[str, bytes]:
    """Every file of the report, by its path inside the report's folder."""
    saved = json.loads(report.to_json()) | {"origin": origin}  # the owner of the folder
    files = index_pages(report) | {"report.json": json.dumps(saved, indent=1).encode()}
    for table in report.paper.tables:
        pages = table_pages(table, report)
        twice = sorted(set(pages) & set(files))
        if twice:
            raise ReportError(f"table {table.key!r}: {', '.join(twice)} would be written twice "
                              "in the report's folder (a key that names another page)")
        files |= pages
    return files


# --- writing inside REPORTS ---------------------------------------------------------------------
def write(report: Report, root: Path, origin: str) -> list[Path]:
    """Write the report's files into ``root/NAME`` (replacing an earlier report of the same paper
    file, never anything outside ``root``) and refresh the export across papers."""
    from bench.locks import temp_name

    root = root.resolve()
    folder = root / report.paper.name
    if folder.parent != root or folder.name in ("", ".", ".."):
        raise ReportError(f"paper name {report.paper.name!r} is not a folder name inside {root}")
    _check_owner(folder, origin)
    files = render(report, origin)
    tmp, old = temp_name(folder), temp_name(folder).with_suffix(".old")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _clear(tmp, root)
        for name, content in files.items():
            target = (tmp / name).resolve()
            if tmp.resolve() not in target.parents:
                raise ReportError(f"report file {name!r} would be written outside {folder}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    except OSError as e:
        _clear(tmp, root)
        raise ReportError(f"cannot write the report of {report.paper.name!r} in {root}: "
                          f"{e.strerror or e} ({e.filename or root}); the previous report, if "
                          "any, is unchanged") from None
    _clear(old, root)
    write_exports(root)
    return [folder / name for name in files]


def _clear(path: Path, root: Path) -> None:
    """Remove one of our temporary folders, which lie directly in ``root`` (never a link)."""
    if path.parent != root or not path.name.startswith("."):
        raise ReportError(f"refusing to remove {path}: not a temporary folder of {root}")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _check_owner(folder: Path, origin: str) -> None:
    """A report folder is replaced only by a report of the same paper file."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ReportError(f"{folder} is not a report folder (a link or a file): bench writes "
                          "reports only into folders of its own; move it away")
    saved = folder / "report.json"
    if not saved.is_file():
        return
    try:
        owner = json.loads(saved.read_text()).get("origin", origin)
    except (OSError, ValueError, AttributeError):
        return  # damaged: ours to replace
    if owner != origin:
        raise ReportError(f"{folder} holds the report of another paper file of the same name "
                          f"({owner}): their reports would replace each other; rename one "
                          "paper (its `name`) or move that folder away")


def export_rows(root: Path) -> list[dict[str, Any]]:
    """Every cell of every report in ``root`` (its ``*/report.json``), one row each."""
    rows = []
    for saved in sorted(root.glob("*/report.json")):
        try:
            data = json.loads(saved.read_text())
        except (OSError, ValueError):
            continue
        for cell in data.get("cells", []):
            row = {**cell, "paper": data.get("paper", saved.parent.name),
                   "paper_value": cell.get("paper")}
            rows.append({k: row.get(k) for k in EXPORT_FIELDS})
    return rows


def write_exports(root: Path) -> dict[str, Path]:
    """``reports.csv`` and ``reports.json`` in ``root``: every paper's cells, side by side."""
    from bench.locks import temp_name

    rows = export_rows(root)
    text = io.StringIO()
    writer = csv.DictWriter(text, EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = {}
    for name, content in ((EXPORT_CSV, text.getvalue()), (EXPORT_JSON, json.dumps(rows, indent=1))):
        path = root / name
        tmp = temp_name(path)
        try:
            tmp.write_text(content)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ReportError(f"cannot write {path}: {e.strerror or e}; the report itself was "
                              "written") from None
        paths[name] = path
    return paths
