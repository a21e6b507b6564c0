"""The figures a paper is compared by: its curves beside ours, similarity heatmaps in the papers'
panel layouts (block x block per timestep, timestep x timestep per block, read from the diffusion
layer names ``block{N}@t{T}``), and a sweep's accuracy against timestep and pool with the papers'
values dashed. PNG bytes; nothing here reads or writes the store.
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import UsageError
from bench.points import LayerName

if TYPE_CHECKING:
    from bench.results.record import RunRecord
    from bench.run.similarity_run import SimilarityResult
    from bench.study.judge import Report
    from bench.study.paper import PaperTable

FULL_RANGE = (0.0, 1.0)  # a heatmap's colour range when no paper gives one


def png(fig: Any, **savefig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **({"dpi": 100} | savefig))
    plt.close(fig)
    return buffer.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- a paper's curve -----------------------------------------------------------------------------
def curve_figure(table: PaperTable, report: Report) -> Any:
    """The curve as a matplotlib figure: per series, ours as a line with its interval band (the
    cells with a result) and the paper's values as points (every cell). The x axis is marked at
    the points the paper printed, not on a regular grid."""
    plt = _pyplot()
    cells = list(table.cells)
    xs = [cell.x for cell in cells]
    labels = list(dict.fromkeys(map(str, xs)))
    numeric = all(_number_or_none(x) is not None for x in xs)

    def position(x: Any) -> float:  # a number as it is, anything else in file order
        return _number_or_none(x) if numeric else float(labels.index(str(x)))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = list(dict.fromkeys(cell.series for cell in cells))
    for k, name in enumerate(series):
        colour = f"C{k % 10}"
        drawn = sorted((c for c in cells if c.series == name), key=lambda c: position(c.x))
        ax.plot([position(c.x) for c in drawn], [c.value for c in drawn], "o", color=colour,
                mfc="none", label=f"paper{': ' + name if name else ''}")
        done = [report.cells[c.id] for c in drawn if report.cells[c.id].low is not None]
        if done:
            x = [position(r.cell.x) for r in done]
            ax.plot(x, [r.ours for r in done], "-", marker=".", color=colour,
                    label=f"ours{': ' + name if name else ''} (95% interval)")
            ax.fill_between(x, [r.low for r in done], [r.high for r in done], color=colour,
                            alpha=0.2, linewidth=0)
    if numeric:
        ticks = sorted({position(x) for x in xs})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    else:
        ax.set_xticks(range(len(labels)), labels)
    metrics = ", ".join(dict.fromkeys(c.metric for c in cells))
    ax.set_xlabel(table.x or "x")
    ax.set_ylabel(f"{metrics} (%)")
    ax.set_title(f"{table.title} ({table.source})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _number_or_none(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


# --- similarity heatmaps -------------------------------------------------------------------------
def _timestep(layer: str) -> tuple[str, str | None]:
    """('block24', '90') from 'block24@t90'; (layer, None) without a timestep."""
    parsed = _layer_name(layer)
    return (parsed.module, str(parsed.t)) if parsed and parsed.t is not None else (layer, None)


def _layer_name(layer: str) -> LayerName | None:
    """The parsed layer (``bench.points``' grammar), or None for a name outside it."""
    try:
        parsed = LayerName.parse(layer)
    except UsageError:
        return None
    return parsed if parsed.module else None


def _block_at(layer: str) -> tuple[int, int] | None:
    """(block, t) of a diffusion layer ``block{N}@t{T}`` (the papers' ADM layers), else None."""
    parsed = _layer_name(layer)
    if parsed is None or parsed.t is None or not parsed.module.startswith("block"):
        return None
    number = parsed.module.removeprefix("block")
    return (int(number), parsed.t) if number.isdigit() else None


def panels(result: SimilarityResult) -> dict[str, list[tuple[str, list[int], list[int]]]]:
    """The papers' layouts of a rows x rows matrix: block x block at each (timestep, pool) and
    timestep x timestep of each (block, pool); figure name -> [(title, row ids, col ids)]."""
    if result.cols != result.rows:
        return {}
    groups: dict[str, dict[tuple, list[int]]] = {"blocks": {}, "timesteps": {}}
    for i, point in enumerate(result.rows):
        base, t = _timestep(point["layer"])
        groups["blocks"].setdefault((t, point["pool"]), []).append(i)
        if t is not None:
            groups["timesteps"].setdefault((base, point["pool"]), []).append(i)
    out = {}
    for figure, found in groups.items():
        shown = [(key, ids) for key, ids in found.items() if len(ids) > 1]
        if shown and len(shown) < len(result.rows) and (figure == "timesteps" or len(shown) > 1):
            out[figure] = [(f"{'t=' + str(k[0]) if figure == 'blocks' else k[0]}, pool {k[1]}",
                            ids, ids) for k, ids in shown[:8]]
    return out


def heatmaps(result: SimilarityResult, colours: tuple[float, float] | None = None
             ) -> dict[str, bytes]:
    """PNG heatmaps: the whole matrix, and the papers' panels (block x block per t, t x t), on
    ``colours`` (a paper's colour range; default 0-1)."""
    plt = _pyplot()
    measure = result.protocol["measure"]["measure"]
    vmin, vmax = colours or FULL_RANGE
    layouts = {"matrix.png": [(result.name, list(range(len(result.rows))),
                               list(range(len(result.cols))))]}
    layouts |= {f"{name}.png": found for name, found in panels(result).items()}
    out = {}
    for filename, found in layouts.items():
        fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found) + 1, 4.4), squeeze=False)
        tick = {"blocks.png": lambda p: _timestep(p["layer"])[0],
                "timesteps.png": lambda p: f"t{_timestep(p['layer'])[1]}"}.get(filename, _short)
        for panel, (ax, (title, rows, cols)) in enumerate(zip(axes[0], found)):
            image = ax.imshow(result.values[np.ix_(rows, cols)], vmin=vmin, vmax=vmax,
                              cmap="viridis", origin="lower", interpolation="nearest")
            ax.set_title(title, fontsize=9)
            for setter, ids, points in ((ax.set_yticks, rows, result.rows),
                                        (ax.set_xticks, cols, result.cols)):
                step = max(1, len(ids) // 12)
                shown = [tick(points[i]) for i in ids[::step]]
                setter(range(0, len(ids), step), shown if panel == 0 or setter == ax.set_xticks
                       else [""] * len(shown), fontsize=6)
            plt.setp(ax.get_xticklabels(), rotation=90)
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8,
                     label=f"{measure} (colour range {vmin:g}-{vmax:g}, values beyond clipped)")
        fig.suptitle(f"{measure}, n = {result.n} images", fontsize=10)
        out[filename] = png(fig, dpi=90, bbox_inches="tight")
    return out


def _short(point: dict[str, Any]) -> str:
    return f"{point['layer']}/{point['pool']}"


# --- a sweep's ablation figures ------------------------------------------------------------------
def sweep_points(records: list[RunRecord]) -> Any:
    """(backbone, task, block, t, pool, acc) of results with block@t layers and p x p pools."""
    import pandas as pd

    rows = []
    for r in records:
        at = _block_at(r.layer)
        if at and r.pool.isdigit():
            rows.append({"backbone": r.backbone, "task": r.task, "block": at[0],
                         "t": at[1], "pool": int(r.pool), "acc": r.metrics["test_top1"]})
    return pd.DataFrame(rows)


def paper_points(task: str) -> Any:
    """The papers' (block, t, pool, acc) curve points measured on ``task`` (empty if none): every
    computed top-1 cell of a curve whose layer is ``block{N}@t{T}`` and whose pool is p x p."""
    import pandas as pd

    from bench.study.paper import all_papers

    rows = [{"block": at[0], "t": at[1], "pool": int(cell.pool), "acc": cell.value}
            for paper in all_papers() for table in paper.tables if table.kind == "curve"
            for cell in table.cells
            if cell.computed and cell.metric == "top1" and cell.task == task.split(":")[0]
            and cell.pool and cell.pool.isdigit() and (at := _block_at(cell.layer or ""))]
    if not rows:
        return pd.DataFrame(columns=["block", "t", "pool", "acc"])
    return pd.DataFrame(rows).drop_duplicates(["block", "t", "pool"])


def ablation_figures(records: list[RunRecord]) -> dict[str, bytes]:
    """PNG bytes per figure name, e.g. 'diffusion_cub_vs_t.png'."""
    points = sweep_points(records)
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
    plt = _pyplot()
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
    return png(fig, bbox_inches="tight")
