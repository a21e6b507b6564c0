"""The paper's ablation figures from a sweep's runs, with the paper's reported values beside ours.

Runs whose layer names carry a block and a timestep (``block24@t90``) give two figures per
(backbone, task): test accuracy against the timestep, one line per block (and pool), and test
accuracy against the pool size, one line per (block, timestep). The paper's numbers
(``results/paper/*.csv``) are drawn dashed where they were measured on the same task
(ImageNet ablations; CUB's timestep sweep), labelled as the paper's.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"
LAYER = re.compile(r"block(\d+)@t(\d+)$")
PAPER_TASKS = {"imagenet": ["ablation_timestep.csv", "ablation_block.csv", "ablation_pool.csv"],
               "cub": ["cub_timestep.csv"]}


def paper_points(task: str) -> Any:
    """The paper's (block, t, pool, acc) rows measured on ``task`` (empty if none)."""
    import pandas as pd

    base = task.split(":")[0]
    frames = [pd.read_csv(PAPER_DIR / name) for name in PAPER_TASKS.get(base, [])
              if (PAPER_DIR / name).exists()]
    if not frames:
        return pd.DataFrame(columns=["block", "t", "pool", "acc"])
    df = pd.concat(frames, ignore_index=True)
    if "pool" not in df:
        df["pool"] = 1
    df["pool"] = df["pool"].fillna(1).astype(int)  # the paper's block/t ablations use pool 1
    return df.drop_duplicates(["block", "t", "pool"])


def sweep_points(runs: Any) -> Any:
    """(backbone, task, block, t, pool, test_top1) of runs with block@t layers and p x p pools."""
    import pandas as pd

    rows = []
    for _, run in runs.iterrows():
        match = LAYER.match(str(run.get("params.layer", "")))
        pool = str(run.get("params.pool", ""))
        if match and pool.isdigit():
            rows.append({"backbone": run["tags.bench.backbone"], "task": run["tags.bench.task"],
                         "head": run.get("params.head", ""), "block": int(match[1]),
                         "t": int(match[2]), "pool": int(pool),
                         "acc": run["metrics.test_top1"], "val": run["metrics.val_top1"]})
    return pd.DataFrame(rows)


def ablation_figures(runs: Any) -> dict[str, bytes]:
    """PNG bytes per figure name, e.g. 'diffusion_cub_vs_t.png'."""
    points = sweep_points(runs)
    figures: dict[str, bytes] = {}
    if points.empty:
        return figures
    for (backbone, task), ours in points.groupby(["backbone", "task"]):
        paper = paper_points(task)
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
