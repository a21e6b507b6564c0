"""A paper as data: its tables and figures as cells bench can compute, with the paper's numbers.

One YAML file per paper (``bench/papers/NAME.yaml``, or a package's entry point in the group
``bench.papers`` naming a YAML path, or an attribute returning a path or a mapping). Each table is
a list of cells (backbone preset, task, layer, pool, head, metric, the paper's value and where it
is printed), a curve (the same cells, plus the ``x`` and ``series`` they are drawn at) or a
similarity matrix (``bench similarity``'s settings). The file is checked when it is read: a
mistake is one line naming the file, the table, the cell and the field. Names of presets, tasks
and layers are checked when the paper is planned (``bench.run.reproduce``), by the registries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.errors import UsageError

PAPERS_DIR = Path(__file__).resolve().parent.parent / "papers"  # the shipped files
ENTRY_POINTS = "bench.papers"
KINDS = ("table", "curve", "similarity")
CELL_DEFAULTS = ("task", "head", "metric", "backbone", "layer", "pool", "backbone_args",
                 "task_args", "head_args", "protocol", "note")  # a table's defaults may set these
_ARGS = ("backbone_args", "task_args", "head_args")


class PaperError(UsageError):
    """A paper file that does not follow the schema, or an unknown paper, table or cell."""


@dataclass(frozen=True)
class PaperCell:
    """One number of the paper and what bench computes to check it."""

    id: str
    table: str  # its table's key
    backbone: str
    task: str
    head: str
    metric: str  # a bench.metrics name: top1, top5, mean_per_class
    value: float  # the paper's number (percent)
    source: str
    layer: str | None = None  # None: the preset's default layer
    pool: str | None = None  # None: the head's or preset's default pool
    x: Any = None  # curve tables: where the point is drawn
    series: str = ""  # curve tables: the line it belongs to
    note: str = ""
    protocol: str = ""  # "" = bench computes it with the paper's protocol; else what differs
    backbone_args: Mapping[str, Any] = field(default_factory=dict)
    task_args: Mapping[str, Any] = field(default_factory=dict)
    head_args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PaperTable:
    key: str
    kind: str  # "table" | "curve" | "similarity"
    title: str
    source: str
    cells: tuple[PaperCell, ...] = ()
    x: str | None = None  # curve: the field on the x axis
    series: str | None = None  # curve: one line per value of this field
    similarity: Mapping[str, Any] | None = None  # similarity: bench similarity's settings
    note: str = ""


@dataclass(frozen=True)
class Claim:
    """A sentence of the paper that compares two of its cells: ``higher`` beats ``lower``."""

    text: str
    higher: str
    lower: str


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    citation: str
    tables: tuple[PaperTable, ...]
    claims: tuple[Claim, ...] = ()
    path: str = ""  # the file it was read from

    def table(self, key: str) -> PaperTable:
        for table in self.tables:
            if table.key == key:
                return table
        raise PaperError(f"paper {self.name!r} has no table {key!r}; its tables: "
                         f"{', '.join(t.key for t in self.tables)}")

    def cells(self) -> list[PaperCell]:
        """Every cell of its tables and curves, in file order."""
        return [cell for table in self.tables for cell in table.cells]

    def cell(self, cell_id: str) -> PaperCell:
        for cell in self.cells():
            if cell.id == cell_id:
                return cell
        raise PaperError(f"paper {self.name!r} has no cell {cell_id!r}")

    def select(self, tables: list[str] | None) -> Paper:
        """This paper with only ``tables`` (None: all), and the claims whose cells remain."""
        if not tables:
            return self
        kept = tuple(self.table(key) for key in dict.fromkeys(tables))
        ids = {cell.id for table in kept for cell in table.cells}
        return replace(self, tables=kept,
                       claims=tuple(c for c in self.claims if {c.higher, c.lower} <= ids))


def paper_names() -> list[str]:
    """The shipped papers and those of installed packages (entry points), sorted."""
    return sorted(set(_shipped()) | set(_plugins()))


def load_paper(name_or_path: str) -> Paper:
    """A paper by name (shipped or an entry point) or from a ``.yaml`` file, schema-checked."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise PaperError(f"paper file {name_or_path}: no such file")
        return _read(path)
    shipped = _shipped()
    if name_or_path in shipped:
        return _read(shipped[name_or_path])
    plugins = _plugins()
    if name_or_path in plugins:
        given = plugins[name_or_path].load()
        given = given() if callable(given) else given
        if isinstance(given, Mapping):
            return parse_paper(given, f"entry point {name_or_path}")
        return _read(Path(given))
    raise PaperError(f"unknown paper {name_or_path!r}; papers: {', '.join(paper_names()) or 'none'}"
                     " (or give the path of a .yaml file)")


def _shipped() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PAPERS_DIR.glob("*.yaml"))}


def _plugins() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {point.name: point for point in entry_points(group=ENTRY_POINTS)}


def _read(path: Path) -> Paper:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).replace("\n", " ")[:200]
        raise PaperError(f"{path}: not valid YAML ({first})") from e
    return parse_paper(data, str(path))


class _Where:
    """Where a schema error is: the file, then table, cell and field as far as known."""

    def __init__(self, path: str, table: str = "", cell: str = ""):
        self.path, self.table, self.cell = path, table, cell

    def error(self, name: str, problem: str) -> PaperError:
        parts = [self.path]
        if self.table:
            parts.append(f"table {self.table!r}")
        if self.cell:
            parts.append(f"cell {self.cell!r}")
        parts.append(f"field {name!r}")
        return PaperError(f"{', '.join(parts)}: {problem}")

    def mapping(self, data: Any, name: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise self.error(name, f"expected a mapping, got {type(data).__name__}")
        for key in data:
            if key not in allowed:
                raise self.error(str(key), f"unknown field; allowed: {', '.join(allowed)}")
        for key in required:
            if data.get(key) in (None, ""):
                raise self.error(key, "required")
        return data

    def text(self, data: Mapping[str, Any], name: str, default: str = "") -> str:
        value = data.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(name, f"expected text, got {type(value).__name__}")
        return str(value)

    def args(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name) or {}
        if not isinstance(value, Mapping):
            raise self.error(name, f"expected a mapping of arguments, got {type(value).__name__}")
        return dict(value)

    def number(self, data: Mapping[str, Any], name: str) -> float:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(name, f"the paper's value must be a number, got {value!r}")
        return float(value)


_PAPER_FIELDS = ("name", "title", "citation", "tables", "claims")
_TABLE_FIELDS = ("key", "kind", "title", "source", "defaults", "cells", "x", "series",
                 "similarity", "note")
_CELL_FIELDS = ("id", "backbone", "task", "head", "metric", "layer", "pool", "value", "source",
                "note", "protocol", "x", "series", *_ARGS)


def parse_paper(data: Mapping[str, Any], path: str) -> Paper:
    """The schema check: a ``Paper`` from the YAML's mapping, or a PaperError saying where."""
    from bench import metrics

    top = _Where(path)
    data = top.mapping(data, "paper", _PAPER_FIELDS, ("name", "tables"))
    tables_data = data["tables"]
    if not isinstance(tables_data, list) or not tables_data:
        raise top.error("tables", "expected a non-empty list of tables")
    tables: list[PaperTable] = []
    seen: set[str] = set()
    for i, raw in enumerate(tables_data):
        key = str(raw.get("key", f"#{i + 1}")) if isinstance(raw, Mapping) else f"#{i + 1}"
        where = _Where(path, key)
        raw = where.mapping(raw, "table", _TABLE_FIELDS, ("key", "kind"))
        if key in {t.key for t in tables}:
            raise where.error("key", "two tables have this key")
        kind = where.text(raw, "kind")
        if kind not in KINDS:
            raise where.error("kind", f"{kind!r}: use one of {', '.join(KINDS)}")
        source = where.text(raw, "source")
        title = where.text(raw, "title", key)
        if kind == "similarity":
            if raw.get("cells"):
                raise where.error("cells", "a similarity table has no cells: give `similarity`")
            tables.append(PaperTable(key, kind, title, source,
                                     similarity=where.args(raw, "similarity") or None,
                                     note=where.text(raw, "note")))
            if not tables[-1].similarity:
                raise where.error("similarity", "required: {preset: NAME} or bench "
                                  "similarity's settings")
            continue
        if kind == "curve" and not raw.get("x"):
            raise where.error("x", "required for a curve: the field on the x axis")
        defaults = where.mapping(raw.get("defaults") or {}, "defaults", CELL_DEFAULTS)
        cells_data = raw.get("cells")
        if not isinstance(cells_data, list) or not cells_data:
            raise where.error("cells", "expected a non-empty list of cells")
        cells = []
        for j, cell in enumerate(cells_data):
            cell_id = str(cell.get("id", f"#{j + 1}")) if isinstance(cell, Mapping) else f"#{j + 1}"
            cells.append(_cell(_Where(path, key, cell_id), cell, defaults, key, source, kind,
                               raw.get("x"), raw.get("series"), seen, metrics.names()))
        tables.append(PaperTable(key, kind, title, source, tuple(cells),
                                 x=where.text(raw, "x") or None,
                                 series=where.text(raw, "series") or None,
                                 note=where.text(raw, "note")))
    claims = []
    for i, raw in enumerate(data.get("claims") or []):
        where = _Where(path, f"claims #{i + 1}")
        raw = where.mapping(raw, "claim", ("text", "higher", "lower"), ("text", "higher", "lower"))
        for name in ("higher", "lower"):
            if str(raw[name]) not in seen:
                raise where.error(name, f"no cell {raw[name]!r} in this paper")
        claims.append(Claim(str(raw["text"]), str(raw["higher"]), str(raw["lower"])))
    return Paper(top.text(data, "name"), top.text(data, "title"), top.text(data, "citation"),
                 tuple(tables), tuple(claims), path)


def _cell(where: _Where, raw: Any, defaults: Mapping[str, Any], table: str, source: str,
          kind: str, x_field: Any, series_field: Any, seen: set[str],
          metric_names: list[str]) -> PaperCell:
    raw = where.mapping(raw, "cell", _CELL_FIELDS, ("id",))
    merged = {**defaults, **raw}
    for name in ("backbone", "task", "head", "metric"):
        if not merged.get(name):
            raise where.error(name, "required (in the cell or the table's defaults)")
    cell_id = where.text(merged, "id")
    if cell_id in seen:
        raise where.error("id", "two cells of this paper have this id")
    seen.add(cell_id)
    metric = where.text(merged, "metric")
    if metric not in metric_names:
        raise where.error("metric", f"{metric!r}: use one of {', '.join(metric_names)}")
    x = merged.get("x", merged.get(str(x_field))) if kind == "curve" else merged.get("x")
    if kind == "curve" and x is None:
        raise where.error("x", f"required in a curve (or a field {x_field!r} of the cell)")
    series = merged.get("series", merged.get(str(series_field)) if series_field else "")
    text = {name: where.text(merged, name) or None for name in ("layer", "pool")}
    return PaperCell(
        id=cell_id, table=table, backbone=where.text(merged, "backbone"),
        task=where.text(merged, "task"), head=where.text(merged, "head"), metric=metric,
        value=where.number(merged, "value"), source=where.text(merged, "source", source),
        layer=text["layer"], pool=text["pool"], x=x,
        series=where.text({"series": series}, "series"),
        note=where.text(merged, "note"), protocol=where.text(merged, "protocol"),
        **{name: where.args(merged, name) for name in _ARGS})
