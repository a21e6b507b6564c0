"""Leaderboards: runs read back from MLflow, pivoted backbone x task.

A cell holds the ``test_top1`` (or the task's headline metric) of the run with the best
validation score among that backbone's protocols (layers, pools, heads) on that task: selection
on validation, never on test. The table is printed, written to ``results/leaderboard.md`` and
``.csv``, and logged to MLflow (a run tagged ``bench.kind=leaderboard`` holding it as a table and
as files) so it is visible in the MLflow UI beside the runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def select_cells(runs: Any, metric: str = "test_top1") -> Any:
    """One row per (backbone, task): the run with the best val score (headline metric)."""
    import pandas as pd

    if runs.empty:
        return pd.DataFrame(columns=["backbone", "task", "run", metric, "val"])
    df = runs.copy()
    df["backbone"] = df["tags.bench.backbone"]
    df["task"] = df["tags.bench.task"]
    headline = df.get("tags.bench.headline", pd.Series("top1", index=df.index)).fillna("top1")
    df["val"] = [row.get(f"metrics.val_{h}", row.get("metrics.val_top1"))
                 for (_, row), h in zip(df.iterrows(), headline)]
    df[metric] = df[f"metrics.{metric}"]
    df["run"] = df["tags.mlflow.runName"]
    df = df.sort_values(["val", "start_time"], ascending=[False, False], kind="stable")
    best = df.groupby(["backbone", "task"], sort=True).head(1)
    return best[["backbone", "task", "run", metric, "val"]].reset_index(drop=True)


def pivot(cells: Any, metric: str = "test_top1") -> Any:
    if cells.empty:
        return cells
    table = cells.pivot(index="backbone", columns="task", values=metric)
    table.columns.name = None
    return table.round(2)


def with_paper(table: Any) -> Any:
    """The table plus rows 'paper: METHOD' with the paper's reported numbers for its tasks."""
    import pandas as pd

    from bench.figures import PAPER_DIR

    frames = []
    if (PAPER_DIR / "finegrained.csv").exists():
        frames.append(pd.read_csv(PAPER_DIR / "finegrained.csv"))
    if (PAPER_DIR / "imagenet_headline.csv").exists():
        frames.append(pd.read_csv(PAPER_DIR / "imagenet_headline.csv").assign(task="imagenet"))
    if not frames or table.empty:
        return table
    paper = pd.concat(frames)
    paper = paper[paper["task"].isin(table.columns)]
    if paper.empty:
        return table
    rows = paper.pivot_table(index="method", columns="task", values="acc", aggfunc="first")
    rows.index = [f"paper: {m}" for m in rows.index]
    out = pd.concat([table, rows.reindex(columns=table.columns)])
    out.index.name = table.index.name
    return out


def build(experiments: list[str], metric: str = "test_top1") -> tuple[Any, Any]:
    from bench.tracking import find_runs

    cells = select_cells(find_runs(experiments), metric)
    return cells, pivot(cells, metric)


def write(table: Any, cells: Any, out_dir: Path, title: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv"}
    body = table.to_markdown() if not table.empty else "(no finished runs yet)"
    runs = cells.to_markdown(index=False) if not cells.empty else ""
    paths["md"].write_text(f"# {title}\n\n{body}\n\nSelected runs (best validation score per cell):"
                           f"\n\n{runs}\n")
    table.to_csv(paths["csv"])
    return paths


def log_to_mlflow(experiment_id: str, table: Any, cells: Any, paths: dict[str, Path],
                  figures: dict[str, Path] | None = None) -> str:
    """Log (or refresh) the experiment's leaderboard run (table, files, figures); its run id."""
    from bench.tracking import _client

    client = _client()
    found = client.search_runs([experiment_id], "tags.`bench.kind` = 'leaderboard'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment_id, run_name="leaderboard",
                                   tags={"bench.kind": "leaderboard"}).info.run_id
    flat = table.reset_index() if not table.empty else cells
    for name, data in (("leaderboard.json", flat), ("leaderboard_runs.json", cells)):
        if not found:
            client.log_table(run_id, data=data, artifact_file=name)
            continue
        # log_table appends rows to an existing table: a refresh overwrites the file instead
        # (same format as log_table's, so the UI still shows it as a table)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            data.to_json(Path(tmp) / name, orient="split", index=False, date_format="iso")
            client.log_artifact(run_id, str(Path(tmp) / name))
    for path in paths.values():
        client.log_artifact(run_id, str(path))
    for path in (figures or {}).values():
        client.log_artifact(run_id, str(path), "figures")
    client.set_terminated(run_id, "FINISHED")
    return run_id
