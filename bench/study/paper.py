"""A paper as data: its tables and figures as cells bench can compute, with the paper's numbers.

One YAML file per paper (``bench/papers/NAME.yaml``, or a package's entry point in the group
``bench.papers`` naming a YAML path, or an attribute returning a path or a mapping). Each table is
a list of cells (backbone preset, task, layer, pool, head, metric, the paper's value and where it
is printed), a curve (the same cells, plus the ``x`` and ``series`` they are drawn at) or a
similarity matrix (``bench similarity``'s settings, inline). A cell the paper prints but bench
cannot compute (no preset, task or head for it) keeps its number with ``not_computed: REASON``:
it is shown in the report and is a published reference row of the leaderboard, never judged.

The file is checked when it is read, before any work: a mistake is one line naming the file, the
table, the cell and the field. Names that become folder and file names (the paper's ``name``, a
table's ``key``, a cell's ``id``) are slugs; a paper's name belongs to one file. The YAML itself is
read strictly: UTF-8 only, at most ``MAX_BYTES``, no key twice in a mapping, and at most
``MAX_NODES`` values once its aliases are expanded. Anchors and aliases are allowed because
PyYAML's own dumper writes them for any value shared in the data it dumps (a generated paper
file has them); the bound on the expanded size, counted on the composed nodes before anything is
built, is what stops a "billion laughs" document.
Names of presets, tasks and layers are checked when the paper is planned (``bench.study.plan``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.errors import UsageError
from bench.registry import Registry

PAPERS_DIR = Path(__file__).resolve().parent.parent / "papers"  # the shipped files
ENTRY_POINTS = "bench.papers"
KINDS = ("table", "curve", "similarity")
CELL_DEFAULTS = ("task", "head", "metric", "backbone", "layer", "pool", "backbone_args",
                 "task_args", "head_args", "protocol", "note", "assumed", "recipe",
                 "not_computed")  # a table's defaults may set these
_ARGS = ("backbone_args", "task_args", "head_args")
SLUG = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")
RESERVED_KEYS = ("index", "report")  # the report folder's own pages (index.md, report.json)
MAX_BYTES = 1 << 20  # the shipped seed paper is 40 KB
MAX_NODES = 100_000  # values after YAML aliases are expanded; the seed paper has about 3,000
DEFAULT_MARGIN = 1.0  # points: ours minus the paper within +-margin counts as reproduced
# How a cell's head is trained: a recipe of ``bench.protocol.RECIPES``, "bench" (ours: cached
# features, settings selected on val) or "paper" (the seed paper's released recipe: SGD, StepLR,
# 28 epochs, no selection). A cell without ``recipe`` is trained under the recipe `bench
# reproduce --recipe` names (paper by default; ``bench.study.plan``); a cell naming one
# trains under it whatever the flag says. A recipe bench does not have is refused.


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
    method: str = ""  # the paper's name for the row (leaderboard reference rows); "" = the id
    not_computed: str = ""  # why bench does not compute this published number ("" = it does)
    assumed: str = ""  # a setting the paper does not state, chosen by bench, and why
    recipe: str = ""  # how its head is trained (bench.protocol.RECIPES); "": as reproduce says

    @property
    def computed(self) -> bool:
        return not self.not_computed


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
    study: str = ""  # reference rows: whose numbers ("seed paper", "follow-up")
    label: str = ""  # reference rows: the table's short name ("ImageNet table")
    preset: str = ""  # similarity: `bench similarity --preset NAME` gives these settings
    colours: tuple[float, float] | None = None  # similarity: the figure's colour range
    margin: float | None = None  # None: the paper's


@dataclass(frozen=True)
class Claim:
    """A sentence of the paper that compares two of its cells: ``higher`` beats ``lower``."""

    text: str
    higher: str
    lower: str


@dataclass(frozen=True)
class LeftOut:
    """A table or figure of the paper that the file does not hold, and why."""

    what: str
    source: str
    reason: str


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    citation: str
    tables: tuple[PaperTable, ...]
    claims: tuple[Claim, ...] = ()
    path: str = ""  # the file it was read from (or the entry point)
    margin: float = DEFAULT_MARGIN
    left_out: tuple[LeftOut, ...] = ()
    note: str = ""  # what holds for the whole file (where its numbers were read, versions)

    @property
    def origin(self) -> str:
        """Which paper file this is, wherever it was named from: its resolved path (or the entry
        point): a report folder belongs to one origin."""
        return str(Path(self.path).resolve()) if self.path and Path(self.path).is_file() \
            else self.path

    def table(self, key: str) -> PaperTable:
        for table in self.tables:
            if table.key == key:
                return table
        raise PaperError(f"paper {self.name!r} has no table {key!r}; its tables: "
                         f"{', '.join(t.key for t in self.tables)}")

    def cells(self) -> list[PaperCell]:
        """Every cell of its tables and curves, in file order (``not_computed`` ones too)."""
        return [cell for table in self.tables for cell in table.cells]

    def cell(self, cell_id: str) -> PaperCell:
        for cell in self.cells():
            if cell.id == cell_id:
                return cell
        raise PaperError(f"paper {self.name!r} has no cell {cell_id!r}")

    def margin_of(self, cell: PaperCell) -> float:
        """The equivalence margin of a cell: its table's, else the paper's."""
        margin = self.table(cell.table).margin
        return self.margin if margin is None else margin

    def select(self, tables: list[str] | None) -> Paper:
        """This paper with only ``tables`` (None: all), and the claims whose cells remain."""
        if not tables:
            return self
        kept = tuple(self.table(key) for key in dict.fromkeys(tables))
        ids = {cell.id for table in kept for cell in table.cells}
        return replace(self, tables=kept,
                       claims=tuple(c for c in self.claims if {c.higher, c.lower} <= ids))


# --- finding papers ------------------------------------------------------------------------------
class _Papers(Registry[Paper]):
    """The shipped paper files and installed packages' (entry points in ``bench.papers``): a
    lazy registry, so listing reads no file; a paper is read and checked when asked for. A
    name offered twice is refused when it is asked for (one name, one report folder)."""

    def __init__(self) -> None:
        super().__init__("paper", Paper, lazy=True, group=ENTRY_POINTS)
        self._offers: dict[str, list[str]] = {}  # name -> where it is offered

    def _load_builtins(self) -> None:
        for path in sorted(PAPERS_DIR.glob("*.yaml")):
            self._offer(path.stem, str(path), lambda p=path: p)

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for point in entry_points(group=self.group):
            self._offer(point.name, f"entry point {point.value}", point.load)

    def _offer(self, name: str, origin: str, load: Any) -> None:
        self._offers.setdefault(name, []).append(origin)
        if len(self._offers[name]) == 1:
            self.add_lazy(name, load)

    def get(self, name: str) -> Paper:
        self.discover()
        offered = self._offers.get(name, [])
        if len(offered) > 1:
            raise PaperError(f"paper {name!r} is offered by {' and by '.join(offered)}: one "
                             "name, one paper; uninstall or rename one of them")
        return super().get(name)

    def unknown(self, name: str, near: str | None = None) -> PaperError:  # type: ignore[override]
        return PaperError(f"unknown paper {name!r}; papers: {', '.join(sorted(self.names())) or 'none'}"
                          " (or give the path of a .yaml file)")

    def _add_loaded(self, name: str, loaded: Any) -> None:
        [origin] = self._offers[name]
        if isinstance(loaded, Path):  # a shipped file: named after it
            paper = _read(loaded)
            if paper.name != name:
                raise PaperError(f"{paper.path}, field 'name': {paper.name!r} differs from the "
                                 f"file's name {name!r}: a shipped paper is named after its file")
        else:  # an entry point: a mapping, a path, or a callable giving one
            given = loaded() if callable(loaded) else loaded
            paper = (parse_paper(given, origin) if isinstance(given, Mapping)
                     else _read(Path(given)))
            paper = _unique(paper, origin, self, allowed=name)
        self.add(paper, name)


def paper_names() -> list[str]:
    """The shipped papers and those of installed packages (entry points), sorted."""
    return sorted(_Papers().names())


def load_paper(name_or_path: str) -> Paper:
    """A paper by name (shipped or an entry point) or from a ``.yaml`` file, schema-checked; its
    name must not be another paper's (they would share a report folder and supersede each
    other's reports). Papers are files that may change while a process runs: listed afresh on
    every call."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise PaperError(f"paper file {name_or_path}: no such file")
        return _unique(_read(path), str(path.resolve()), _Papers())
    return _Papers().get(name_or_path)


def _unique(paper: Paper, origin: str, papers: _Papers, allowed: str = "") -> Paper:
    """Refuse a paper whose name is another paper's (``allowed``: the name it was asked for,
    which is its own); a shipped file read by its own path is itself."""
    papers.discover()
    offered = [o for o in papers._offers.get(paper.name, [])
               if o != origin and Path(o).resolve() != Path(origin)]
    if paper.name != allowed and offered:
        raise PaperError(f"{paper.path}, field 'name': {paper.name!r} is the name of the "
                         f"{'shipped' if not offered[0].startswith('entry point') else 'installed'}"
                         f" paper {offered[0]}; their reports would supersede each other: give "
                         "this paper another name")
    return paper


def all_papers() -> list[Paper]:
    """Every paper bench knows (shipped and installed), loaded: reference rows, presets."""
    return [load_paper(name) for name in paper_names()]


# --- reading YAML strictly ----------------------------------------------------------------------
def _read(path: Path) -> Paper:
    return parse_paper(read_yaml(path), str(path))


def read_yaml(path: Path) -> Any:
    """The YAML document of a paper file, or a PaperError: too large, not UTF-8, not YAML, a key
    given twice in one mapping, or an anchor or alias anywhere."""
    import yaml

    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise PaperError(f"{path}: {size:,} bytes; a paper file is at most {MAX_BYTES:,} bytes")
        raw = path.read_bytes()
    except OSError as e:
        raise PaperError(f"{path}: cannot read it ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PaperError(f"{path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                         "save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_strict_loader())  # a SafeLoader, stricter
    except _Refused as e:
        raise PaperError(f"{path}: {e}") from None
    except RecursionError:
        raise PaperError(f"{path}: nested too deeply to be a paper file") from None
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())
        raise PaperError(f"{path}: not valid YAML ({first})") from e


class _Refused(Exception):
    """What the strict loader refuses, with the line."""


@functools.cache
def _strict_loader() -> type:
    """SafeLoader refusing duplicate keys and documents that expand past ``MAX_NODES`` (an alias
    repeats its anchor's node: "billion laughs"); built on first use, PyYAML is imported lazily."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_document(self) -> Any:
            node = super().compose_document()
            _expanded_size(node)
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a complex key: SafeLoader's own error follows
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise _Refused(f"line {key_node.start_mark.line + 1}: key {key!r} is given "
                                   f"twice in one mapping (first on line {seen[key]})")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    return Loader


def _expanded_size(root: Any) -> int:
    """Nodes of the document with every alias expanded (each shared node counted once per
    reference, computed once per node), refused past ``MAX_NODES`` or when an alias contains
    itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise _Refused(f"line {node.start_mark.line + 1}: an alias refers to a node that "
                           "contains it (a recursive document)")
        open_nodes.add(id(node))
        value = node.value
        children = ([n for pair in value for n in pair] if isinstance(value, list) and value
                    and isinstance(value[0], tuple) else value if isinstance(value, list) else [])
        total = 1 + sum(size(child) for child in children)
        if total > MAX_NODES:
            raise _Refused(f"line {node.start_mark.line + 1}: the document expands to more than "
                           f"{MAX_NODES:,} values (aliases repeating anchors); a paper file is "
                           "far smaller")
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root) if root is not None else 0


# --- the schema ----------------------------------------------------------------------------------
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

    def slug(self, data: Mapping[str, Any], name: str, what: str) -> str:
        """A name that becomes a folder or file name: lower-case letters, digits, - and _."""
        value = self.text(data, name)
        if not SLUG.fullmatch(value):
            raise self.error(name, f"{value!r} is not a valid {what}: use 1-64 lower-case "
                             "letters, digits, - and _, starting and ending with a letter or "
                             "digit (it names files and folders)")
        return value

    def args(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name) or {}
        if not isinstance(value, Mapping):
            raise self.error(name, f"expected a mapping of arguments, got {type(value).__name__}")
        for key in value:
            if not isinstance(key, str) or not key.isidentifier():
                raise self.error(name, f"argument name {key!r} is not a Python identifier")
        return dict(value)

    def number(self, data: Mapping[str, Any], name: str) -> float:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(name, f"the paper's value must be a number, got {value!r}")
        return float(value)

    def percent(self, data: Mapping[str, Any], name: str) -> float:
        value = self.number(data, name)
        if not 0 <= value <= 100:
            raise self.error(name, f"{value:g} is not a percentage: the paper's values are "
                             "percentages in [0, 100] (write 0.62 as 62)")
        return value

    def margin(self, data: Mapping[str, Any], default: float | None) -> float | None:
        if data.get("margin") is None:
            return default
        value = data.get("margin")
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 < value <= 100):
            raise self.error("margin", f"{value!r}: the equivalence margin is a number of points "
                             "in (0, 100]")
        return float(value)

    def colours(self, data: Mapping[str, Any]) -> tuple[float, float] | None:
        value = data.get("colours")
        if value is None:
            return None
        if (not isinstance(value, list) or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
                or not -1 <= value[0] < value[1] <= 1):
            raise self.error("colours", f"{value!r}: give [low, high], -1 <= low < high <= 1")
        return float(value[0]), float(value[1])


_PAPER_FIELDS = ("name", "title", "citation", "note", "tables", "claims", "margin", "left_out")
_TABLE_FIELDS = ("key", "kind", "title", "source", "defaults", "cells", "x", "series",
                 "similarity", "note", "study", "label", "preset", "colours", "margin")
_CELL_FIELDS = ("id", "backbone", "task", "head", "metric", "layer", "pool", "value", "source",
                "note", "protocol", "x", "series", "method", "not_computed", "assumed", "recipe",
                *_ARGS)
_SIMILARITY_ONLY = ("similarity", "preset", "colours")


def parse_paper(data: Mapping[str, Any], path: str) -> Paper:
    """The schema check: a ``Paper`` from the YAML's mapping, or a PaperError saying where."""
    from bench import metrics

    top = _Where(path)
    data = top.mapping(data, "paper", _PAPER_FIELDS, ("name", "tables"))
    name = top.slug(data, "name", "paper name")
    margin = top.margin(data, DEFAULT_MARGIN)
    tables_data = data["tables"]
    if not isinstance(tables_data, list) or not tables_data:
        raise top.error("tables", "expected a non-empty list of tables")
    tables: list[PaperTable] = []
    seen: set[str] = set()
    for i, raw in enumerate(tables_data):
        key = str(raw.get("key", f"#{i + 1}")) if isinstance(raw, Mapping) else f"#{i + 1}"
        where = _Where(path, key)
        raw = where.mapping(raw, "table", _TABLE_FIELDS, ("key", "kind"))
        where.slug(raw, "key", "table key")
        if key in RESERVED_KEYS:
            raise where.error("key", f"{key!r} names the report's own page: use another key")
        if key in {t.key for t in tables}:
            raise where.error("key", "two tables have this key")
        kind = where.text(raw, "kind")
        if kind not in KINDS:
            raise where.error("kind", f"{kind!r}: use one of {', '.join(KINDS)}")
        common = dict(source=where.text(raw, "source"), note=where.text(raw, "note"),
                      study=where.text(raw, "study"), label=where.text(raw, "label"),
                      margin=where.margin(raw, None))
        title = where.text(raw, "title", key)
        if kind == "similarity":
            tables.append(_similarity_table(where, raw, key, title, common))
            continue
        for extra in _SIMILARITY_ONLY:
            if raw.get(extra) is not None:
                raise where.error(extra, f"only a similarity table has {extra!r}")
        if kind == "curve" and not raw.get("x"):
            raise where.error("x", "required for a curve: the field on the x axis")
        defaults = where.mapping(raw.get("defaults") or {}, "defaults", CELL_DEFAULTS)
        cells_data = raw.get("cells")
        if not isinstance(cells_data, list) or not cells_data:
            raise where.error("cells", "expected a non-empty list of cells")
        cells = []
        for j, cell in enumerate(cells_data):
            cell_id = str(cell.get("id", f"#{j + 1}")) if isinstance(cell, Mapping) else f"#{j + 1}"
            cells.append(_cell(_Where(path, key, cell_id), cell, defaults, key,
                               common["source"], kind, raw.get("x"), raw.get("series"), seen,
                               metrics.names()))
        tables.append(PaperTable(key, kind, title, cells=tuple(cells),
                                 x=where.text(raw, "x") or None,
                                 series=where.text(raw, "series") or None, **common))
    claims = []
    for i, raw in enumerate(data.get("claims") or []):
        where = _Where(path, f"claims #{i + 1}")
        raw = where.mapping(raw, "claim", ("text", "higher", "lower"), ("text", "higher", "lower"))
        for side in ("higher", "lower"):
            if str(raw[side]) not in seen:
                raise where.error(side, f"no cell {raw[side]!r} in this paper")
        claims.append(Claim(str(raw["text"]), str(raw["higher"]), str(raw["lower"])))
    left_out = []
    for i, raw in enumerate(data.get("left_out") or []):
        where = _Where(path, f"left_out #{i + 1}")
        raw = where.mapping(raw, "left_out", ("what", "source", "reason"),
                            ("what", "source", "reason"))
        left_out.append(LeftOut(*(where.text(raw, f) for f in ("what", "source", "reason"))))
    return Paper(name, top.text(data, "title"), top.text(data, "citation"), tuple(tables),
                 tuple(claims), path, margin, tuple(left_out), top.text(data, "note"))


def check_settings(settings: Mapping[str, Any]) -> None:
    """Names and types of a table's settings (the presets, backbones and tasks they name are
    checked when the paper is planned)."""
    from bench.run.similarity_run import SETTINGS, check_types  # torch: only when read

    named = ("preset", *SETTINGS)
    unknown = sorted(set(settings) - set(named), key=str)
    if unknown:
        raise UsageError(f"similarity setting {', '.join(map(str, unknown))}: use "
                         f"{', '.join(named)}")
    if "preset" in settings and not isinstance(settings["preset"], str):
        raise UsageError(f"similarity setting 'preset': expected a name, got {settings['preset']!r}")
    check_types({k: v for k, v in settings.items() if k != "preset"})


def _similarity_table(where: _Where, raw: Mapping[str, Any], key: str, title: str,
                      common: dict[str, Any]) -> PaperTable:
    """A similarity table: its settings checked by name and type here (the names of presets and
    tasks when it is planned)."""
    if raw.get("cells"):
        raise where.error("cells", "a similarity table has no cells: give `similarity`")
    settings = where.args(raw, "similarity")
    if not settings:
        raise where.error("similarity", "required: {preset: NAME} or bench similarity's settings")
    try:
        check_settings(settings)
    except UsageError as e:
        raise where.error("similarity", str(e)) from None
    preset = where.text(raw, "preset")
    if preset and not SLUG.fullmatch(preset):
        raise where.error("preset", f"{preset!r}: a preset name is a slug (lower-case letters, "
                          "digits, - and _)")
    return PaperTable(key, "similarity", title, similarity=settings, preset=preset,
                      colours=where.colours(raw), **common)


def _cell(where: _Where, raw: Any, defaults: Mapping[str, Any], table: str, source: str,
          kind: str, x_field: Any, series_field: Any, seen: set[str],
          metric_names: list[str]) -> PaperCell:
    raw = where.mapping(raw, "cell", _CELL_FIELDS, ("id",))
    merged = {**defaults, **raw}
    cell_id = where.slug(merged, "id", "cell id")
    not_computed = where.text(merged, "not_computed")
    required = ("task", "metric") if not_computed else ("backbone", "task", "head", "metric")
    for name in required:
        if not merged.get(name):
            raise where.error(name, "required (in the cell or the table's defaults)")
    if cell_id in seen:
        raise where.error("id", "two cells of this paper have this id")
    seen.add(cell_id)
    metric = where.text(merged, "metric")
    if metric not in metric_names:
        raise where.error("metric", f"{metric!r}: use one of {', '.join(metric_names)}")
    from bench.protocol import RECIPES

    recipe = where.text(merged, "recipe")
    if recipe and recipe not in RECIPES:
        raise where.error("recipe", f"{recipe!r} does not exist in this bench; recipes: "
                          f"{', '.join(RECIPES)}")
    x = merged.get("x", merged.get(str(x_field))) if kind == "curve" else merged.get("x")
    if kind == "curve" and x is None:
        raise where.error("x", f"required in a curve (or a field {x_field!r} of the cell)")
    if x is not None and (isinstance(x, bool) or not isinstance(x, (str, int, float))
                          or (isinstance(x, float) and not math.isfinite(x))):
        raise where.error("x", f"expected a number or text, got {x!r}")
    series = merged.get("series", merged.get(str(series_field)) if series_field else "")
    text = {name: where.text(merged, name) or None for name in ("layer", "pool")}
    return PaperCell(
        id=cell_id, table=table, backbone=where.text(merged, "backbone"),
        task=where.text(merged, "task"), head=where.text(merged, "head"), metric=metric,
        value=where.percent(merged, "value"), source=where.text(merged, "source", source),
        layer=text["layer"], pool=text["pool"], x=x,
        series=where.text({"series": series}, "series"),
        note=where.text(merged, "note"), protocol=where.text(merged, "protocol"),
        method=where.text(merged, "method"), not_computed=not_computed,
        assumed=where.text(merged, "assumed"), recipe=recipe,
        **{name: where.args(merged, name) for name in _ARGS})
