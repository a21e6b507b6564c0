"""Leaderboards: result records read back from MLflow, pivoted backbone x task.

A cell holds the test metric (default ``test_top1``) of the record with the best validation
score (the task's headline metric) among that backbone's protocols (layers, pools, heads) on that
task: selection on validation, never on test. Superseded records (an older protocol of the same
cell) never appear. The table is printed, written to ``results/leaderboard.md`` and ``.csv``,
and logged to MLflow (a ``leaderboard`` run holding it as a table and as files) so it is visible
in the MLflow UI beside the runs. Reference rows (``bench.references``: the paper's numbers) can
be added beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.record import RunRecord

METRICS = ("test_top1", "test_top5", "test_mean_per_class")


@dataclass
class Leaderboard:
    cells: Any  # DataFrame: backbone, task, run, metric, val (the selected record per cell)
    table: Any  # DataFrame: backbone x task
    metric: str


def select_cells(records: list[RunRecord], metric: str = "test_top1") -> Any:
    """One row per (backbone, task): the record with the best validation score (newest on ties)."""
    import pandas as pd

    rows = [{"backbone": r.backbone, "task": r.task, "run": r.name,
             metric: r.metrics.get(metric), "val": r.val_score, "start": r.start_time or 0.0}
            for r in records]
    if not rows:
        return pd.DataFrame(columns=["backbone", "task", "run", metric, "val"])
    df = pd.DataFrame(rows).sort_values(["val", "start"], ascending=[False, False], kind="stable")
    best = df.groupby(["backbone", "task"], sort=True).head(1)
    return best[["backbone", "task", "run", metric, "val"]].sort_values(
        ["backbone", "task"]).reset_index(drop=True)


def pivot(cells: Any, metric: str = "test_top1") -> Any:
    if cells.empty:
        return cells
    table = cells.pivot(index="backbone", columns="task", values=metric)
    table.columns.name = None
    return table.round(2)


def with_references(table: Any) -> Any:
    """The table plus the registered reference rows (the paper's numbers) for its tasks."""
    import pandas as pd

    from bench.references import reference_rows

    if table.empty:
        return table
    rows = reference_rows(list(table.columns))
    if rows.empty:
        return table
    out = pd.concat([table, rows.reindex(columns=table.columns)])
    out.index.name = table.index.name
    return out


def build(suites: list[str], metric: str = "test_top1", references: bool = False) -> Leaderboard:
    from bench.tracking import experiment_ids, find_records

    cells = select_cells(find_records(experiment_ids(suites)), metric)
    table = pivot(cells, metric)
    return Leaderboard(cells, with_references(table) if references else table, metric)


def write(board: Leaderboard, out_dir: Path, title: str) -> dict[str, Path]:
    """``leaderboard.md`` and ``.csv`` in ``out_dir``. An empty board never overwrites a table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv"}
    if board.table.empty and paths["md"].exists():
        return paths
    body = board.table.to_markdown() if not board.table.empty else "(no finished runs yet)"
    runs = board.cells.to_markdown(index=False) if not board.cells.empty else ""
    paths["md"].write_text(f"# {title}\n\n{body}\n\nSelected runs (best validation score per "
                           f"cell):\n\n{runs}\n")
    board.table.to_csv(paths["csv"])
    return paths


def log(experiment_id: str, board: Leaderboard, paths: dict[str, Path],
        figures: dict[str, Path] | None = None) -> str:
    """Log (or refresh) the experiment's leaderboard run; its run id."""
    from bench.tracking import log_leaderboard

    flat = board.table.reset_index() if not board.table.empty else board.cells
    return log_leaderboard(experiment_id, {"leaderboard.json": flat,
                                           "leaderboard_runs.json": board.cells},
                           paths.values(), (figures or {}).values())
