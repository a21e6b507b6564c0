"""Published numbers and figures that backbone families contribute to leaderboards.

The engine knows no paper. A family registers a ``ReferenceSource`` (the ADM family registers the
paper's tables and ablation figures); leaderboards add its rows beside ours, labelled as the
source's, and sweeps draw its figures. Sources register on import, like presets: asking for
them discovers the backbone packages first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.results.record import RunRecord


@dataclass(frozen=True)
class ReferenceSource:
    name: str
    # tasks -> DataFrame indexed by a row label ("STUDY, TABLE: METHOD"), one column per task
    rows: Callable[[list[str]], Any]
    # result records -> {file name: PNG bytes}
    figures: Callable[[list[RunRecord]], dict[str, bytes]]


_SOURCES: dict[str, ReferenceSource] = {}


def register_reference(source: ReferenceSource) -> ReferenceSource:
    _SOURCES[source.name] = source
    return source


def sources() -> list[ReferenceSource]:
    from bench.registry import backbones

    backbones.load_all()  # imports the family modules, which register their sources
    return list(_SOURCES.values())


def reference_rows(tasks: list[str]) -> Any:
    """Every source's published rows for these tasks, one DataFrame (may be empty)."""
    import pandas as pd

    frames = [frame for s in sources() if not (frame := s.rows(tasks)).empty]
    return pd.concat(frames) if frames else pd.DataFrame()


def figures(records: list[RunRecord]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for source in sources():
        out |= source.figures(records)
    return out
