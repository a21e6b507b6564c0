"""The paper's numbers (Mukhopadhyay et al. 2023) as data, its leaderboard rows and its ablation figures.

The CSV files beside this module are package data (they ship in the wheel). Rows of
``finegrained.csv`` and ``imagenet_headline.csv`` name their study (seed paper, follow-up, or a
released checkpoint's own published number) and source table, and appear in leaderboards as
``STUDY, TABLE: METHOD``;
``bench sweep`` draws, per (backbone, task), test accuracy against the timestep (one line per
block and pool) and against the pool size (one line per block and timestep) for runs whose
layers are ``block{N}@t{T}``, with the paper's values dashed where it measured the same task
(ImageNet's ablations; CUB's timestep sweep).
"""

from __future__ import annotations

import io
import re
from importlib import resources
from typing import Any

from bench.results.record import RunRecord
from bench.results.references import ReferenceSource, register_reference

LAYER = re.compile(r"block(\d+)@t(\d+)$")
ABLATIONS = {"imagenet": ["ablation_timestep.csv", "ablation_block.csv", "ablation_pool.csv"],
             "cub": ["cub_timestep.csv"]}


def table(name: str) -> Any:
    """One of the paper's CSV tables as a DataFrame."""
    import pandas as pd

    with resources.files(__package__).joinpath(name).open() as f:
        return pd.read_csv(f)


def leaderboard_rows(tasks: list[str]) -> Any:
    """Published accuracies for these tasks, one column per task, each row labelled by its source
    table: 'seed paper, ImageNet table: METHOD', 'follow-up, Table 1: METHOD', 'released
    checkpoint, ...: METHOD'. The follow-up's numbers (another protocol) never share a row with
    the seed paper's, and a preset's own checkpoint has the row its released number belongs to."""
    import pandas as pd

    paper = pd.concat([table("finegrained.csv"),
                       table("imagenet_headline.csv").assign(task="imagenet")])
    paper = paper[paper["task"].isin(tasks)]
    if paper.empty:
        return pd.DataFrame()
    paper = paper.assign(label=paper["study"] + ", " + paper["table"] + ": " + paper["method"])
    rows = paper.pivot_table(index="label", columns="task", values="acc", aggfunc="first")
    rows.index.name = None
    rows.columns.name = None
    return rows


def ablation_points(task: str) -> Any:
    """The paper's (block, t, pool, acc) rows measured on ``task`` (empty if none)."""
    import pandas as pd

    names = ABLATIONS.get(task.split(":")[0], [])
    if not names:
        return pd.DataFrame(columns=["block", "t", "pool", "acc"])
    df = pd.concat([table(n) for n in names], ignore_index=True)
    if "pool" not in df:
        df["pool"] = 1
    df["pool"] = df["pool"].fillna(1).astype(int)  # the paper's block/t ablations use pool 1
    return df.drop_duplicates(["block", "t", "pool"])


def sweep_points(records: list[RunRecord]) -> Any:
    """(backbone, task, block, t, pool, acc) of results with block@t layers and p x p pools."""
    import pandas as pd

    rows = []
    for r in records:
        match = LAYER.match(r.layer)
        if match and r.pool.isdigit():
            rows.append({"backbone": r.backbone, "task": r.task, "block": int(match[1]),
                         "t": int(match[2]), "pool": int(r.pool), "acc": r.metrics["test_top1"]})
    return pd.DataFrame(rows)


def ablation_figures(records: list[RunRecord]) -> dict[str, bytes]:
    """PNG bytes per figure name, e.g. 'diffusion_cub_vs_t.png'."""
    points = sweep_points(records)
    figures: dict[str, bytes] = {}
    if points.empty:
        return figures
    for (backbone, task), ours in points.groupby(["backbone", "task"]):
        paper = ablation_points(task)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{backbone}_{task}")
        if ours["t"].nunique() > 1:
            figures[f"{safe}_vs_t.png"] = _plot(ours, paper, x="t", lines=["block", "pool"],
                                                title=f"{backbone} on {task}: accuracy vs timestep")
        if ours["pool"].nunique() > 1:
            figures[f"{safe}_vs_pool.png"] = _plot(ours, paper, x="pool", lines=["block", "t"],
                                                   title=f"{backbone} on {task}: accuracy vs pool")
    return figures


def _plot(ours: Any, paper: Any, x: str, lines: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, group in ours.groupby(lines):
        label = ", ".join(f"{n} {v}" for n, v in zip(lines, key))
        group = group.sort_values(x)
        line, = ax.plot(group[x], group["acc"], marker="o", label=f"bench: {label}")
        if not paper.empty:
            mask = (paper[lines[0]] == key[0]) & (paper[lines[1]] == key[1])
            ref = paper[mask].sort_values(x)
            if len(ref):
                ax.plot(ref[x], ref["acc"], linestyle="--", marker="x", color=line.get_color(),
                        label=f"paper: {label}")
    ax.set(xlabel={"t": "diffusion timestep t", "pool": "pool size p (p x p)"}[x],
           ylabel="test top-1 (%)", title=title)
    if x == "pool":
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


register_reference(ReferenceSource("paper", leaderboard_rows, ablation_figures))
