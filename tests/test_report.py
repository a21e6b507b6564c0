"""``bench report``: verdicts against our intervals, claims through bench's paired bootstrap, the
pages and figures, and a tiny paper end to end (run, report, MLflow run, rerun)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from bench.results.papers import Claim, PaperCell, PaperTable
from bench.results.record import RunRecord
from bench.results.tracking import UnfinishedRun
from bench.run.report import (CellResult, Report, curve_figure, judge_cell, judge_claim, rows,
                              table_pages)
from bench.run.reproduce import PlannedCell


def cell(cell_id: str = "a", value: float = 80.0, **fields) -> PaperCell:
    fields = {"backbone": "pixels", "task": "digits", "head": "linear", "metric": "top1",
              "source": "Table 1"} | fields
    return PaperCell(id=cell_id, table="t", value=value, **fields)


def record(top1: float, low: float | None, high: float | None, run_id: str = "r1") -> RunRecord:
    metrics = {"test_top1": top1}
    if low is not None:
        metrics |= {"test_top1_ci95_low": low, "test_top1_ci95_high": high}
    return RunRecord(identity="i", name="n", backbone="pixels", task="digits", layer="image",
                     pool="8", head="linear", seed=0, headline="top1", metrics=metrics, best={},
                     run_id=run_id, test_manifest="m")


PLANNED = PlannedCell(cell("a"), "i")


@pytest.mark.parametrize("paper, verdict", [(80.0, "reproduced"), (78.0, "reproduced"),
                                            (82.0, "reproduced"), (77.99, "higher"),
                                            (82.01, "lower")])
def test_verdict_says_where_the_papers_value_falls_against_our_interval(paper, verdict):
    judged = judge_cell(cell(value=paper), PLANNED, record(80.5, 78.0, 82.0), None, "bench")
    assert judged.verdict == verdict
    assert (judged.low <= paper <= judged.high) == (verdict == "reproduced")
    assert judged.difference == pytest.approx(80.5 - paper)


def test_a_missing_or_unjudgeable_result_is_never_reproduced():
    # the paper's value equals what a result would show: still not reproduced without one
    none = judge_cell(cell(), PLANNED, None, None, "bench")
    assert (none.verdict, none.ours) == ("not run", None)
    assert "no finished result with its identity in suite 'bench'" in none.why
    killed = judge_cell(cell(), PLANNED, None, UnfinishedRun("k1", "KILLED", 0.0), "bench")
    assert killed.verdict == "failed" and "k1 ended KILLED" in killed.why
    running = judge_cell(cell(), PLANNED, None, UnfinishedRun("k2", "RUNNING", 0.0), "bench")
    assert running.verdict == "not run" and "k2 is RUNNING" in running.why
    unresolved = judge_cell(cell(), PlannedCell(cell(), None, "no weights for bigbigan"), None,
                            None, "bench")
    assert unresolved.verdict == "failed" and "no weights for bigbigan" in unresolved.why
    old = judge_cell(cell(), PLANNED, record(80.0, None, None), None, "bench")
    assert old.verdict == "failed" and "no 95% interval" in old.why and old.ours == 80.0
    other = judge_cell(cell(metric="top5"), PLANNED, record(80.0, 78, 82), None, "bench")
    assert other.verdict == "failed" and "no test_top5" in other.why


def test_claim_unpaired_combines_the_intervals_paired_takes_bench_compare():
    from bench.stats import Predictions, compare

    claim = Claim("a beats b", "a", "b")
    a = CellResult(cell("a", 70.0), "reproduced", ours=72.0, low=70.0, high=74.0)
    b = CellResult(cell("b", 60.0), "higher", ours=69.0, low=66.0, high=72.0)
    unpaired = judge_claim(claim, a, b)
    half = np.hypot(2.0, 3.0)
    assert (unpaired.paper, unpaired.ours) == (10.0, 3.0)
    assert (unpaired.low, unpaired.high) == pytest.approx((3.0 - half, 3.0 + half))
    assert unpaired.verdict == "not distinguishable" and "unpaired" in unpaired.how
    assert unpaired.line().startswith("a beats b: paper +10.00, ours +3.00 [")

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1000)
    hits_a, hits_b = rng.random(1000) < 0.8, rng.random(1000) < 0.6
    predictions = [Predictions(np.stack([np.where(h, labels, (labels + 1) % 10)] * 1, 1), labels,
                               10) for h in (hits_a, hits_b)]
    comparison = compare(*predictions, "top1")
    paired = judge_claim(claim, a, b, comparison)
    assert (paired.ours, paired.low, paired.high) == (comparison.difference, comparison.low,
                                                      comparison.high)
    assert paired.verdict == "holds" and "paired bootstrap" in paired.how
    reversed_claim = judge_claim(Claim("b beats a", "b", "a"), b, a, compare(*predictions[::-1]))
    assert reversed_claim.verdict == "does not hold"
    missing = judge_claim(claim, a, CellResult(cell("b"), "not run", "no finished result"))
    assert missing.verdict == "not run" and missing.ours is None and "b not run" in missing.how


def tiny_report(cells: list[PaperCell], results: list[CellResult], kind: str = "table",
                **table) -> tuple[PaperTable, Report]:
    from bench.results.papers import Paper

    shown = PaperTable(key="t", kind=kind, title="T", source="Table 1", cells=tuple(cells),
                       **table)
    paper = Paper(name="tiny", title="Tiny", citation="C", tables=(shown,))
    return shown, Report(paper, "bench", {r.cell.id: r for r in results}, [], {})


def test_pages_mark_other_protocols_and_escape_html():
    marked = cell("a<b>", protocol="paper: SGD; bench: AdamW grid")
    shown, report = tiny_report([marked], [CellResult(marked, "not run", "no result")])
    [row] = rows(shown, report)
    assert row["cell"] == "a<b> †" and row["verdict"] == "not run" and row["ours - paper"] == ""
    pages = table_pages(shown, report)
    md, page = pages["t.md"].decode(), pages["t.html"].decode()
    assert "† a<b>: run with another protocol than the paper's: paper: SGD; bench: AdamW" in md
    assert "a&lt;b&gt; †" in page and "<b>reproduced</b>" in page and "http" not in page


def test_curve_draws_the_papers_points_for_every_cell_and_ours_where_run():
    cells = [cell(f"{s}-{x}", 50.0 + x, x=x, series=s) for s in ("s1", "s2") for x in (1, 2, 4)]
    results = [CellResult(c, "reproduced", ours=c.value + 1, low=c.value - 1, high=c.value + 2)
               for c in cells[:5]] + [CellResult(cells[5], "not run", "no result")]
    shown, report = tiny_report(cells, results, "curve", x="t", series="s")
    fig = curve_figure(shown, report)
    [ax] = fig.axes
    paper = [line for line in ax.lines if line.get_label().startswith("paper")]
    ours = [line for line in ax.lines if line.get_label().startswith("ours")]
    assert [len(line.get_xdata()) for line in paper] == [3, 3]  # every cell, run or not
    assert [list(line.get_xdata()) for line in ours] == [[1.0, 2.0, 4.0], [1.0, 2.0]]
    assert list(ours[0].get_ydata()) == [52.0, 53.0, 55.0]
    assert len(ax.collections) == 2  # one interval band per series
    png = table_pages(shown, report)["t.png"]
    from PIL import Image

    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert json.loads(json.dumps(report.counts())) == {"reproduced": 5, "higher": 0, "lower": 0,
                                                       "not run": 1, "failed": 0}
