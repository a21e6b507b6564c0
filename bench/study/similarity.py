"""A paper's similarity figures: the settings of its similarity tables, named presets among them.

A similarity table of a paper file holds ``bench similarity``'s settings inline; one that declares
``preset: NAME`` is also what ``bench similarity --preset NAME`` runs (flags given override it),
and a table may start from another's settings with ``similarity: {preset: NAME, ...}``. The
figure's colour range is the table's (``colours``), the paper's own. The engine
(``bench.run.similarity_run``) computes matrices and knows none of this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError
from bench.run.similarity_run import similarity_spec

if TYPE_CHECKING:
    from bench.run.similarity_run import SimilaritySpec
    from bench.run.spec import RunSpec
    from bench.study.paper import Paper, PaperTable

FROM_TEMPLATE = ("precision", "skip_corrupt", "cache_dtype")  # `bench reproduce`'s, unless set


@dataclass(frozen=True)
class Preset:
    """A similarity table that names itself as a preset: its settings and figure."""

    name: str
    settings: Mapping[str, Any]
    colours: tuple[float, float] | None
    where: str  # "PAPER, table KEY"


def presets() -> dict[str, Preset]:
    """Every similarity table of every known paper that declares a preset name; a name declared
    twice is an error naming both tables."""
    from bench.study.paper import all_papers

    found: dict[str, Preset] = {}
    for paper in all_papers():
        for table in paper.tables:
            if table.kind != "similarity" or not table.preset:
                continue
            where = f"{paper.name}, table {table.key}"
            if table.preset in found:
                raise UsageError(f"similarity preset {table.preset!r} is declared by "
                                 f"{found[table.preset].where} and by {where}: rename one")
            found[table.preset] = Preset(table.preset, dict(table.similarity or {}),
                                         table.colours, where)
    return found


def preset(name: str) -> Preset:
    known = presets()
    if name not in known:
        raise UsageError(f"similarity preset {name!r}: use one of {', '.join(sorted(known))} "
                         "(a paper's similarity table that declares `preset: NAME`)")
    return known[name]


def expand(settings: Mapping[str, Any], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Settings with their ``preset`` replaced by its table's settings (the others over it)."""
    given = dict(settings)
    name = given.pop("preset", None)
    if not name:
        return given
    if name in seen:
        raise UsageError(f"similarity preset {name!r} starts from itself ({' -> '.join(seen)})")
    base = expand(preset(name).settings, (*seen, name))
    return base | {k: v for k, v in given.items() if v not in (None, [])}


def table_spec(paper: Paper, table: PaperTable, template: RunSpec | None = None) -> SimilaritySpec:
    """The matrix a paper's similarity table asks for; ``template``'s precision, skip_corrupt and
    cache dtype (as `bench reproduce` was given them) where the table sets none."""
    from bench.study.paper import PaperError

    try:
        settings = expand(table.similarity or {})
        if template is not None:
            settings = {k: getattr(template, k) for k in FROM_TEMPLATE} | settings
        return similarity_spec(settings)
    except UsageError as e:
        raise PaperError(f"{paper.path}, table {table.key!r}, field 'similarity': {e}") from e


def colours(table: PaperTable) -> tuple[float, float] | None:
    """A table's colour range: its own, else that of the preset it starts from."""
    if table.colours is not None:
        return table.colours
    name = (table.similarity or {}).get("preset")
    return preset(name).colours if name else None
