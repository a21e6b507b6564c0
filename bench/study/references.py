"""Published numbers beside ours: the paper files' reference rows for leaderboards.

A table of a paper file that names its ``study`` ("seed paper", "follow-up", "released
checkpoint") gives leaderboard rows: each of its cells is a row ``STUDY, LABEL: METHOD`` (the
table's ``label``, the cell's ``method``), one column per task, whether bench computes the cell or
not. The numbers exist once, in the paper files; nothing else in bench holds them.
"""

from __future__ import annotations

from typing import Any


def reference_rows(tasks: list[str]) -> Any:
    """Every known paper's published rows for these tasks, one DataFrame (may be empty): rows
    labelled 'seed paper, ImageNet table: METHOD', 'follow-up, Table 1: METHOD', 'released
    checkpoint, ...: METHOD'. Studies never share a row (another protocol, another number)."""
    import pandas as pd

    from bench.study.paper import all_papers

    rows = [{"label": f"{table.study}, {table.label or table.title}: {cell.method or cell.id}",
             "task": cell.task, "acc": cell.value}
            for paper in all_papers() for table in paper.tables if table.study
            for cell in table.cells if cell.task in tasks]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).pivot_table(index="label", columns="task", values="acc",
                                           aggfunc="first")
    frame.index.name = None
    frame.columns.name = None
    return frame
