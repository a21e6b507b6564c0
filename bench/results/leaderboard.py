"""Leaderboards: result records read back from MLflow, pivoted backbone x task.

A cell holds the test metric (default ``test_top1``) of the record with the best validation
score (the task's headline metric) among that backbone's protocols (layers, pools, heads of the
chosen ``protocol``) on that task: selection on validation, never on test. Superseded records (an
older protocol of the same cell and chosen settings) never appear. A head's variants fill one
column each (``HeadKind.variant``: few-shot's ``cub 5-shot``). Runs of one layer, pool and head
that chose other settings (``--lrs``, backbone or task arguments...) are alternatives: chosen
among on validation too, and a cell chosen among several says so in a footnote.

Every number is shown with its uncertainty: ``64.96 ± 0.42`` is the test metric and the
half-width of its 95% bootstrap interval over test images. Per column, rows that the paired
comparison with the column's best (from the stored per-image predictions) does not find
different (``bench.stats.Comparison.distinguishable``, the rule ``bench compare`` prints) are
marked ``≈``. A cell whose selected grid point lies at an end of its grid is marked ``†`` and
named in a footnote; one trained under another recipe than bench's own (``bench.protocol.RECIPES``:
``--recipe paper``) carries that recipe's mark (``§``) and footnote. The table is printed, written
to ``results/leaderboard.md`` and ``.csv`` and logged to MLflow (a ``leaderboard`` run holding it
as a table and as files). Reference rows (published numbers, given by the caller: ``bench.study.references``) can be added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, UsageError
from bench.results.record import RunRecord

TIED = "≈"
EDGE = "†"
DEFAULT_RECIPE = "bench"  # bench.protocol.DEFAULT_RECIPE: unmarked
FOOTER = (f"`a ± h`: test metric and the half-width h of its 95% bootstrap interval over test "
          f"images. {TIED}: not distinguishable from the best of its column (paired bootstrap "
          f"of the difference on the same test images: two-sided p >= 0.05).")


def metric_choices() -> list[str]:
    """``test_<metric>`` for every registered metric (``bench.metrics``)."""
    from bench.metrics import names

    return [f"test_{name}" for name in names()]


def footnotes(cells: Any) -> list[str]:
    """One line per cell selected at an end of its grid, naming the axis and what to try, and
    one per cell whose run was chosen on validation among alternative settings."""
    if cells.empty:
        return []
    rows = list(cells.itertuples())
    edges = [f"{EDGE} {row.backbone} on {row.task} ({row.run}): selected at the grid's edge: "
             f"{row.edge}" for row in rows if getattr(row, "edge", "")]
    recipes = [f"{recipe_mark(row.recipe)} {row.backbone} on {row.task} ({row.run}): "
               f"{recipe_footnote(row.recipe)}"
               for row in rows if getattr(row, "recipe", DEFAULT_RECIPE) != DEFAULT_RECIPE]
    return edges + recipes + [
        f"{row.backbone} on {row.task}: chosen on validation (never test) among "
        f"{row.alternatives} alternatives of {row.run} with other chosen settings"
        for row in rows if getattr(row, "alternatives", 1) > 1]


def recipe_mark(recipe: str) -> str:
    """A recipe's leaderboard mark ("" for bench's own; its name for one not registered here)."""
    from bench.protocol import RECIPES

    if recipe == DEFAULT_RECIPE:
        return ""
    return RECIPES.get(recipe).mark if recipe in RECIPES else f"[{recipe}]"


def recipe_footnote(recipe: str) -> str:
    from bench.protocol import RECIPES

    return (RECIPES.get(recipe).footnote if recipe in RECIPES else
            f"trained with recipe {recipe!r}, not registered in this bench")


@dataclass
class Leaderboard:
    cells: Any  # DataFrame: backbone, task, run, run_id, metric, low, high, val
    table: Any  # DataFrame: backbone x task, numbers
    metric: str
    display: Any = None  # DataFrame: backbone x task, "64.96 ± 0.42" with the tie marker
    ties: set[tuple[str, str]] = field(default_factory=set)  # (backbone, task) tied with best
    written: dict[str, str] = field(default_factory=dict)  # file key -> what write() did


def heads_of(protocol: str) -> tuple[str, ...] | None:
    from bench.protocol import protocols

    families = protocols()
    if protocol not in families:
        raise UsageError(f"unknown protocol {protocol!r}; protocols: {', '.join(families)}")
    return families[protocol]


def column(record: RunRecord) -> str:
    """The leaderboard column of a record: its task, and its head's variant if any."""
    return f"{record.task} {record.variant}" if record.variant else record.task


def select_cells(records: list[RunRecord], metric: str = "test_top1",
                 protocol: str = "all") -> Any:
    """One row per (backbone, column): the record with the best validation score (newest on
    ties), among the records of ``protocol``'s heads."""
    import pandas as pd

    heads = heads_of(protocol)
    name = metric.removeprefix("test_")
    rows = []
    for r in records:
        if heads is not None and r.head not in heads:
            continue
        low, high = r.interval(name) or (float("nan"), float("nan"))
        rows.append({"backbone": r.backbone, "task": column(r), "run": r.name,
                     "run_id": r.run_id, metric: r.metrics.get(metric), "low": low, "high": high,
                     "val": r.val_score, "start": r.start_time or 0.0, "edge": r.grid_edge,
                     "slot": "/".join(r.slot), "recipe": r.recipe})
    columns = ["backbone", "task", "run", "run_id", metric, "low", "high", "val", "edge",
               "recipe", "alternatives"]
    if not rows:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(rows).sort_values(["val", "start"], ascending=[False, False], kind="stable")
    best = df.groupby(["backbone", "task"], sort=True).head(1)
    # runs of the chosen run's layer, pool and head that chose other settings
    best = best.assign(alternatives=best.slot.map(df.slot.value_counts()))
    return best[columns].sort_values(["backbone", "task"]).reset_index(drop=True)


def leading_record(suites: list[str], backbone: str, task: str, protocol: str = "linear"
                   ) -> RunRecord:
    """The record a leaderboard shows for ``backbone`` on ``task`` (column name, e.g. ``cub``)."""
    from bench.results.runs import find_records
    from bench.results.store import experiment_ids

    records = find_records(experiment_ids(suites))
    cells = select_cells(records, protocol=protocol)
    chosen = cells[(cells.backbone == backbone) & (cells.task == task)]
    if cells.empty:
        raise UsageError(elsewhere(suites, f"{protocol} results"))
    if chosen.empty:
        have = sorted({f"{b} on {t}" for b, t in zip(cells.backbone, cells.task)})
        raise UsageError(f"no finished {protocol} result for backbone {backbone!r} on task "
                         f"{task!r} in suite(s) {', '.join(suites)}; results there: "
                         f"{', '.join(have) or 'none'}")
    run_id = chosen.run_id.iloc[0]
    return next(r for r in records if r.run_id == run_id)


def pivot(cells: Any, metric: str = "test_top1") -> Any:
    if cells.empty:
        return cells
    table = cells.pivot(index="backbone", columns="task", values=metric)
    table.columns.name = None
    return table.round(2)


def tied_with_best(cells: Any, metric: str = "test_top1") -> set[tuple[str, str]]:
    """(backbone, column) of every row not distinguishable from its column's best, by a paired
    bootstrap on the stored test predictions. Rows without predictions are never marked."""
    from bench.stats import compare
    from bench.results.artifacts import load_predictions

    ties = set()
    for task, rows in cells.groupby("task"):
        if len(rows) < 2:
            continue
        best = rows.loc[rows[metric].astype(float).idxmax()]
        try:
            reference = load_predictions(best.run_id)
        except BenchError:  # a result logged before predictions were stored
            continue
        for _, row in rows.iterrows():
            if row.run_id == best.run_id:
                continue
            try:
                other = load_predictions(row.run_id)
            except BenchError:
                continue
            if not compare(reference, other, metric.removeprefix("test_")).distinguishable:
                ties.add((row.backbone, task))
    return ties


def display_table(cells: Any, ties: set[tuple[str, str]], metric: str = "test_top1") -> Any:
    """``64.96 ± 0.42`` per cell (the interval's half-width), ``≈`` after tied rows."""
    if cells.empty:
        return cells
    text = cells.assign(shown=[
        format_value(row[metric], row["low"], row["high"])
        + (f" {TIED}" if (row["backbone"], row["task"]) in ties else "")
        + (f" {EDGE}" if row.get("edge") else "")
        + (f" {recipe_mark(row['recipe'])}" if row.get("recipe", DEFAULT_RECIPE)
           != DEFAULT_RECIPE else "")
        for _, row in cells.iterrows()])
    table = text.pivot(index="backbone", columns="task", values="shown").fillna("")
    table.columns.name = None
    return table


def format_value(value: float, low: float, high: float) -> str:
    if low != low or high != high:  # NaN: logged before intervals existed
        return f"{value:.2f}"
    return f"{value:.2f} ± {(high - low) / 2:.2f}"


def with_references(table: Any, reference_rows: Callable[[list[str]], Any]) -> Any:
    """The table plus published reference rows for its tasks (``reference_rows``: tasks -> rows,
    one column per task; the study layer's, read from the paper files)."""
    import pandas as pd

    if table.empty:
        return table
    rows = reference_rows(list(table.columns))
    if rows.empty:
        return table
    out = pd.concat([table, rows.reindex(columns=table.columns)])
    out.index.name = table.index.name
    return out


def build(suites: list[str], metric: str = "test_top1",
          references: Callable[[list[str]], Any] | None = None,
          protocol: str = "linear") -> Leaderboard:
    from bench.results.runs import find_records
    from bench.results.store import experiment_ids

    cells = select_cells(find_records(experiment_ids(suites)), metric, protocol)
    table = pivot(cells, metric)
    ties = tied_with_best(cells, metric) if not cells.empty else set()
    display = display_table(cells, ties, metric)
    if references is not None:
        table = with_references(table, references)
        display = with_references(display, references)
    return Leaderboard(cells, table, metric, display, ties)


def write(board: Leaderboard, out_dir: Path, title: str) -> dict[str, Path]:
    """``leaderboard.md`` and ``.csv`` in ``out_dir``; an empty board writes nothing. What
    happened to each file is in ``written`` (``write_status``)."""
    paths = {"md": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv"}
    if board.table.empty:
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = board.cells.to_markdown(index=False)
    notes = "".join(f"\n\n{line}" for line in footnotes(board.cells))
    md = (f"# {title}\n\n{board.display.to_markdown()}\n\n{FOOTER}{notes}\n\nSelected runs (best "
          f"validation score per cell):\n\n{runs}\n")
    csv = board.display.to_csv()
    for key, text in (("md", md), ("csv", csv)):
        board.written[key] = write_status(paths[key], text)
    return paths


def write_status(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` unless it already holds it: ``wrote`` (new), ``unchanged``, or
    ``replaced`` (naming the table it held, from its title line)."""
    old = path.read_text() if path.exists() else None
    if old == text:
        return "unchanged"
    path.write_text(text)
    if old is None:
        return "wrote"
    title = old.splitlines()[0].lstrip("# ").strip() if old.startswith("# ") else ""
    return f"replaced ({title})" if title else "replaced"


def written_lines(board: Leaderboard, paths: dict[str, Path]) -> list[str]:
    """One line per leaderboard file: what ``write`` did to it."""
    if not board.written:
        return ["no leaderboard written (nothing to show)"]
    lines = []
    for key, status in board.written.items():
        verb, _, note = status.partition(" ")
        lines.append(f"{verb} {paths[key]}" + (f" (previously: {note.strip('()')})" if note
                                               else ""))
    return lines


def find_run(reference: str, suites: list[str] | None = None) -> RunRecord:
    """The result a user names as ``bench runs`` prints it: a run id or a unique prefix of one,
    or a run name (``pixels/digits/image/16/linear``), in ``suites`` (default: every suite)."""
    from bench.results.runs import find_records
    from bench.results.store import experiment_ids

    suites = suites or list(suites_with_results())
    records = find_records(experiment_ids(suites))
    found = [r for r in records if r.run_id == reference] or [
        r for r in records if r.run_id.startswith(reference) or r.name == reference]
    if len(found) == 1:
        return found[0]
    where = f"suite(s) {', '.join(suites)}" if suites else "any suite"
    if not found:
        raise UsageError(f"no result {reference!r} in {where}: give a run id (or its first "
                         "characters) or a run name as `bench runs` prints them")
    listed = ", ".join(f"{r.run_id[:8]} ({r.name})" for r in found[:5])
    raise UsageError(f"{reference!r} names {len(found)} results in {where} ({listed}"
                     f"{', ...' if len(found) > 5 else ''}): give more characters of the run id")


def suites_with_results() -> dict[str, int]:
    """Every suite (MLflow experiment) holding finished bench results: name -> result count
    (what to suggest when the suite asked for is empty)."""
    from bench.results.record import result_filter
    from bench.results.store import reader

    store = reader()
    out = {}
    for experiment in store.search_experiments():
        runs = store.search_runs([experiment.experiment_id], result_filter(), max_results=1000)
        if runs:
            out[experiment.name] = len(runs)
    return out


def elsewhere(suites: list[str], what: str = "results") -> str:
    """Why ``suites`` show nothing, and where results are: ``no finished results in suite
    'bench'; suite 'demo' holds 4 (add --suite demo)``."""
    held = suites_with_results()
    others = {k: v for k, v in held.items() if k not in suites}
    here = f"no finished {what} in suite(s) {', '.join(repr(s) for s in suites)}"
    inside = sum(held.get(s, 0) for s in suites)
    if inside:
        holds = "it holds" if len(suites) == 1 else "they hold"
        return (f"{here}; {holds} {inside} result{'s' * (inside != 1)} of other heads or names "
                "(`bench runs --protocol all` lists them)")
    if not others:
        return f"{here}, nor in any other suite: `bench demo` or `bench run` makes some"
    listed = ", ".join(f"{name!r} ({count} result{'s' * (count != 1)})"
                       for name, count in sorted(others.items()))
    flag = " ".join(f"--suite {name}" for name in sorted(others))
    return f"{here}; results are in {listed}: add {flag}"


def log(experiment_id: str, board: Leaderboard, paths: dict[str, Path],
        figures: dict[str, Path] | None = None) -> str:
    """Log (or refresh) the experiment's leaderboard run; its run id."""
    from bench.results.publish import log_leaderboard

    flat = board.display.reset_index() if not board.table.empty else board.cells
    return log_leaderboard(experiment_id, {"leaderboard.json": flat,
                                           "leaderboard_runs.json": board.cells},
                           paths.values(), (figures or {}).values())
