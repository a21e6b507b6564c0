"""``bench report``: verdicts against our intervals, claims through bench's paired bootstrap, the
pages and figures, and a tiny paper end to end (run, report, MLflow run, rerun)."""

from __future__ import annotations

import csv
import io
import json
import shlex
from dataclasses import replace

import numpy as np
import pytest

from bench.cli import main
from bench.study.paper import Claim, PaperCell, PaperTable
from bench.results.record import RunRecord
from bench.results.runs import UnfinishedRun
from bench.study.figures import curve_figure
from bench.study.judge import CellResult, Report, judge_cell, judge_claim
from bench.study.pages import rows, table_pages
from bench.study.plan import PlannedCell


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


@pytest.mark.parametrize("ours, paper, verdict", [
    ((80.5, 80.0, 81.0), 80.5, "reproduced"), ((80.5, 80.0, 81.0), 80.0, "reproduced"),
    ((80.5, 80.0, 81.0), 81.0, "reproduced"), ((80.5, 80.0, 81.0), 79.9, "differs: ours higher"),
    ((80.5, 80.0, 81.0), 78.0, "differs: ours higher"),
    ((80.5, 80.0, 81.0), 83.0, "differs: ours lower"),
    ((80.5, 78.0, 82.0), 80.5, "inconclusive"), ((80.5, 78.0, 82.0), 81.5, "inconclusive"),
    ((80.5, 78.0, 82.0), 70.0, "differs: ours higher"),
    ((80.5, 78.0, 82.0), 90.0, "differs: ours lower")])
def test_verdict_compares_ours_minus_the_paper_with_the_margin(ours, paper, verdict):
    """Issue 30: reproduced when the interval of ours minus the paper lies within the margin
    (one point), differs with its direction otherwise, inconclusive when the interval is wider
    than the margin (and not wholly beyond it)."""
    judged = judge_cell(cell(value=paper), PLANNED, record(*ours), None, "bench", margin=1.0)
    assert judged.shown == verdict
    inside = -1.0 <= judged.low - paper and judged.high - paper <= 1.0
    assert inside == (verdict == "reproduced")
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
    assert unresolved.verdict == "unavailable here" and "no weights for bigbigan" in unresolved.why
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
    from bench.study.paper import Paper

    shown = PaperTable(key="t", kind=kind, title="T", source="Table 1", cells=tuple(cells),
                       **table)
    paper = Paper(name="tiny", title="Tiny", citation="C", tables=(shown,))
    return shown, Report(paper, "bench", {r.cell.id: r for r in results}, [], {})


def test_pages_mark_other_protocols_and_escape_html():
    marked = cell("a<b>", protocol="paper: SGD; bench: AdamW grid")
    shown, report = tiny_report([marked], [CellResult(marked, "not run", "no result")])
    [row] = rows(shown, report)
    assert row["cell"] == "a<b> †1" and row["verdict"] == "not run" and row["ours - paper"] == ""
    pages = table_pages(shown, report)
    md, page = pages["t.md"].decode(), pages["t.html"].decode()
    assert "†1 run with another protocol than the paper's (a<b>): paper: SGD; bench: AdamW" in md
    assert "a&lt;b&gt; †1" in page and "<b>reproduced</b>" in page and "http" not in page


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
    assert json.loads(json.dumps(report.counts())) == {
        "reproduced": 5, "differs": 0, "inconclusive": 0, "not run": 1, "unavailable here": 0,
        "failed": 0, "not computed": 0}


def test_one_footnote_per_distinct_reason_and_curve_ticks_at_the_points_run():
    sgd = "paper: SGD; bench: AdamW grid"
    cells = [cell("a", protocol=sgd, x=1, series="s"), cell("b", protocol=sgd, x=2, series="s"),
             cell("c", protocol="paper: LARS", assumed="block 19: not printed", x=8,
                  series="s")]
    results = [CellResult(cells[0], "not run", "no result"),
               CellResult(cells[1], "not run", "no result"),
               CellResult(cells[2], "unavailable here", "weights missing (X)")]
    shown, report = tiny_report(cells, results, "curve", x="pool", series="s")
    md = table_pages(shown, report)["t.md"].decode()
    assert md.count("run with another protocol than the paper's") == 2
    assert "†1 run with another protocol than the paper's (a, b): " + sgd in md
    assert "†2 run with another protocol than the paper's (c): paper: LARS" in md
    assert "*1 assumed, the paper does not print it (c): block 19: not printed" in md
    assert "[1] no result (a, b)" in md and "[2] weights missing (X) (c)" in md
    assert "| c †2 *1 |" in md
    [ax] = curve_figure(shown, report).axes
    assert list(ax.get_xticks()) == [1.0, 2.0, 8.0]  # the points, not a regular grid


def _written(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_report_writes_and_swaps_only_inside_its_own_folder(tmp_path):
    """Issue 31 item 1: whatever a paper is named, the report writes inside REPORTS/NAME and
    replaces only a report of the same paper file; a link, a file or another file's report in
    its place is refused, and nothing outside is touched."""
    from dataclasses import replace as changed

    from bench.study.pages import ReportError, write

    root, victim = tmp_path / "reports", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("data")
    marked = cell("a")
    shown, report = tiny_report([marked], [CellResult(marked, "not run", "no result")])
    files = write(report, root, "/papers/tiny.yaml")
    assert {p.name for p in files} >= {"index.md", "index.html", "t.md", "t.html", "report.json"}
    assert all(root / "tiny" in p.parents for p in files)
    assert {"reports.csv", "reports.json", "tiny"} == {p.name for p in root.iterdir()}
    for name in ("../victim", str(victim), "..", ""):
        with pytest.raises(ReportError, match="not a folder name inside"):
            write(changed(report, paper=changed(report.paper, name=name)), root, "/x.yaml")
    assert (victim / "keep.txt").read_text() == "data"
    with pytest.raises(ReportError, match="holds the report of another paper file"):
        write(report, root, "/elsewhere/tiny.yaml")  # same name, another file: refused
    before = _written(root)
    (root / "link").symlink_to(victim)
    with pytest.raises(ReportError, match="not a report folder"):
        write(changed(report, paper=changed(report.paper, name="link")), root, "/l.yaml")
    assert (victim / "keep.txt").read_text() == "data" and _written(root) == sorted(before + ["link"])
    # a table key that would name the report's own pages is refused before anything is written
    index = changed(shown, key="index")
    with pytest.raises(ReportError, match="would be written twice"):
        write(changed(report, paper=changed(report.paper, tables=(index,))), root,
              "/papers/tiny.yaml")
    assert _written(root) == sorted(before + ["link"])


def test_a_report_on_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from bench.study.pages import ReportError, write

    root = tmp_path / "reports"
    marked = cell("a")
    _, report = tiny_report([marked], [CellResult(marked, "not run", "no result")])
    write(report, root, "/papers/tiny.yaml")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    real, calls = Path.write_bytes, []

    def full(self, data):
        calls.append(self)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    report.cells["a"].why = "changed"
    with pytest.raises(ReportError) as info:
        write(report, root, "/papers/tiny.yaml")
    assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    assert "previous report, if any, is unchanged" in str(info.value)
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before  # the old report as it was, and no temporary folder
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_reports_of_several_papers_export_to_one_csv_and_json(tmp_path):
    import csv

    from bench.study.paper import Paper
    from bench.study.pages import write

    root = tmp_path / "reports"
    for name, value in (("one", 80.0), ("two", 70.0)):
        marked = cell("a", value)
        result = CellResult(marked, "differs", ours=value + 5, low=value + 3, high=value + 7,
                            direction="ours higher", run_id=f"run-{name}")
        shown, report = tiny_report([marked], [result])
        report.paper = Paper(name=name, title=name, citation="C", tables=(shown,))
        write(report, root, f"/papers/{name}.yaml")
    rows = list(csv.DictReader(open(root / "reports.csv")))
    assert [(r["paper"], r["id"], r["paper_value"], r["verdict"], r["direction"], r["run_id"])
            for r in rows] == [("one", "a", "80.0", "differs", "ours higher", "run-one"),
                               ("two", "a", "70.0", "differs", "ours higher", "run-two")]
    assert [r["paper"] for r in json.loads((root / "reports.json").read_text())] == ["one", "two"]


# --- a tiny paper end to end -----------------------------------------------------------------------
HEAD = {"epochs": 2, "lrs": [0.01], "weight_decays": [0.0]}
# bench's recipe: the cells' own fast settings (the paper's recipe fixes 28 epochs)
DEFAULTS = {"task": "digits", "head": "linear", "metric": "top1", "backbone": "pixels",
            "backbone_args": {"size": 8}, "head_args": HEAD, "recipe": "bench"}
MARGIN = 5.0  # points: the digits test set is small, its intervals a few points wide
CKA = {"backbone": "pixels", "pools": ["1", "2"], "task": "digits", "n": 48, "permutations": 9,
       "interval_draws": 4}


def shapes(root) -> str:
    """A two-class folder task: dark and bright noisy 8x8 images, a third of them in the other
    class's shade (so no probe is always right)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("dark", "bright")):
        (root / name).mkdir(parents=True)
        for i in range(24):
            shade = 80 + 100 * (k if i % 3 else 1 - k)
            pixels = np.clip(rng.normal(shade, 30, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return f"folder:{root}"


def write_paper(path, values: dict[str, float], folder: str, note: str = "") -> None:
    import yaml

    cells = [{"id": "px8", "pool": "8", "value": values["px8"]},
             {"id": "px4", "pool": "4", "value": values["px4"]},
             {"id": "shapes", "task": folder, "pool": "2", "value": values["shapes"],
              "protocol": "paper: SGD, 90 epochs; bench: AdamW grid"},
             {"id": "unet", "backbone": "random-unet", "backbone_args": {}, "value": 50.0},
             {"id": "killed", "pool": "2", "value": 50.0},
             {"id": "crash", "pool": "2", "head_args": {**HEAD, "epochs": 3}, "value": 50.0}]
    curve = [{"id": f"pool{p}", "pool": p, "value": values[f"pool{p}"]} for p in ("1", "4", "8")]
    path.write_text(yaml.safe_dump({
        "name": "tiny", "title": "A tiny paper", "citation": "Nobody 2026", "margin": MARGIN,
        "tables": [
            {"key": "main", "kind": "table", "source": "Table 1", "defaults": DEFAULTS,
             "cells": cells, "note": note},
            {"key": "pools", "kind": "curve", "source": "Figure 2", "x": "pool",
             "defaults": DEFAULTS, "cells": curve},
            {"key": "cka", "kind": "similarity", "title": "CKA of pools", "source": "Figure 3",
             "similarity": CKA}],
        "claims": [{"text": "pool 8 beats pool 1", "higher": "px8", "lower": "pool1"},
                   {"text": "digits beat shapes", "higher": "px8", "lower": "shapes"}]}))


def test_tiny_paper_report_end_to_end(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from bench.api import run, similarity
    from bench.heads.similarity import Measure
    from bench.results import record as names
    from bench.study.paper import load_paper
    from bench.results.record import settings_digest
    from bench.results.artifacts import load_predictions
    from bench.results.runs import log_record
    from bench.results.store import client, ensure_experiment, experiment_ids, search
    from bench.study.plan import slot_keys
    from bench.study.plan import plan_paper
    from bench.run.similarity_run import Side, SimilaritySpec
    from bench.run.spec import RunOptions, RunSpec
    from bench.stats import compare

    folder = shapes(tmp_path / "shapes")
    paper_file = tmp_path / "tiny.yaml"
    options = RunOptions(workers=0, progress=False)
    # the cells run by hand, as `bench run` and `bench similarity` would: found by identity
    by_pool = {r.pool: r for r in run(RunSpec("pixels", "digits", pools=["1", "4", "8"],
                                              backbone_args={"size": 8}, head_args=HEAD), options)}
    [on_shapes] = run(RunSpec("pixels", folder, pools=["2"], backbone_args={"size": 8},
                              head_args=HEAD), options)
    matrix = similarity(SimilaritySpec(Side("pixels", [], ["1", "2"]), "digits", n=48,
                                       permutations=9, interval_draws=4, measure=Measure()),
                        options)

    def half(record) -> float:
        low, high = record.interval("top1")
        return (high - low) / 2

    ours = {"px8": by_pool["8"], "px4": by_pool["4"], "shapes": on_shapes,
            "pool1": by_pool["1"], "pool4": by_pool["4"], "pool8": by_pool["8"]}
    values = {"px8": by_pool["8"].metrics["test_top1"],  # reproduced
              "px4": by_pool["4"].metrics["test_top1"] - MARGIN - 2 * half(by_pool["4"]),  # higher
              "shapes": on_shapes.interval("top1")[1] + MARGIN + 1.0,  # ours lower
              "pool1": by_pool["1"].metrics["test_top1"] + 0.25 * half(by_pool["1"]),
              "pool4": by_pool["4"].metrics["test_top1"], "pool8": 1.0}
    write_paper(paper_file, values, folder)
    # a cell whose only run was killed while logging: failed, with the run that says so
    plan = plan_paper(load_paper(str(paper_file)), options)
    experiment = ensure_experiment("bench")
    killed = client().create_run(experiment, tags={names.KIND: names.RESULT,
                                                   names.IDENTITY: plan.cells["killed"].identity})
    client().set_terminated(killed.info.run_id, "KILLED")
    # a cell whose job raised while computing it: its claim is kept, FAILED, with the error
    crash = plan.cells["crash"].identity
    [job] = [one for job in plan.jobs for one in getattr(job, "jobs", [job])
             if crash in {c.identity for c in one.prepared.run.cells}]

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="out of memory"):
        patched.setattr("bench.run.jobs.extract_features", out_of_memory)
        job()

    assert main(["report", str(paper_file)]) == 0
    out = capsys.readouterr().out
    assert ("9 cells: 3 reproduced, 3 differs (2 ours higher, 1 ours lower), 0 inconclusive, "
            "1 not run, 2 failed") in out
    folder_out = tmp_path / "results" / "reports" / "tiny"
    saved = json.loads((folder_out / "report.json").read_text())
    verdicts = {c["id"]: c["verdict"] for c in saved["cells"]}
    assert verdicts == {"px8": "reproduced", "px4": "differs", "shapes": "differs",
                        "unet": "not run", "killed": "failed", "crash": "failed",
                        "pool1": "reproduced",
                        "pool4": "reproduced", "pool8": "differs"}
    directions = {c["id"]: c["direction"] for c in saved["cells"] if c["direction"]}
    assert directions == {"px4": "ours higher", "shapes": "ours lower", "pool8": "ours higher"}
    for c in saved["cells"]:
        if c["id"] in ours:  # ours as logged, and the paper's value inside exactly when reproduced
            record = ours[c["id"]]
            assert (c["ours"], c["low"], c["high"]) == (record.metrics["test_top1"],
                                                        *record.interval("top1"))
            inside = -MARGIN <= c["low"] - c["paper"] and c["high"] - c["paper"] <= MARGIN
            assert inside == (c["verdict"] == "reproduced") and c["margin"] == MARGIN
            assert c["run_id"] == record.run_id
        else:
            assert c["ours"] is None and c["verdict"] != "reproduced"
    why = {c["id"]: c["why"] for c in saved["cells"]}
    assert killed.info.run_id in why["killed"] and "ended KILLED" in why["killed"]
    assert "ended FAILED without a result (RuntimeError: CUDA out of memory)" in why["crash"]

    # claims: paired on the same test images through bench.stats.compare, else unpaired
    paired, unpaired = saved["claims"]
    reference = compare(load_predictions(by_pool["8"].run_id),
                        load_predictions(by_pool["1"].run_id), "top1")
    assert (paired["ours"], paired["low"], paired["high"]) == pytest.approx(
        (reference.difference, reference.low, reference.high))
    assert paired["paper"] == pytest.approx(values["px8"] - values["pool1"])
    assert "paired bootstrap" in paired["how"] and "unpaired" in unpaired["how"]
    assert "pool 8 beats pool 1: paper " in out

    # pages: markdown and standalone html per table, the curve and the heatmaps as real PNGs
    md = (folder_out / "main.md").read_text()
    assert "| shapes †1 |" in md and "†1 run with another protocol than the paper's (shapes)" in md
    page = (folder_out / "main.html").read_text()
    assert page.count("<tr") == 7 and "src=\"http" not in page and "<link" not in page
    assert Image.open(folder_out / "pools.png").format == "PNG"
    assert "![pools](pools.png)" in (folder_out / "pools.md").read_text()
    cka = (folder_out / "cka.md").read_text()
    assert matrix.run_id in cka and "Figure 3: CKA of pools" in cka
    copied = folder_out / "cka" / "matrix.png"
    assert copied.read_bytes() == matrix.files["matrix.png"].read_bytes()
    assert "data:image/png;base64," in (folder_out / "cka.html").read_text()

    # one MLflow run with the folder; never a result
    def reports():
        return list(search(experiment_ids(["bench"]), f"tags.`{names.KIND}` = 'report'"))

    [logged] = reports()
    assert logged.data.tags[names.PAPER] == "tiny" and logged.info.status == "FINISHED"
    listed = {f.path for f in client().list_artifacts(logged.info.run_id)}
    assert {"index.md", "index.html", "main.md", "main.html", "pools.png", "cka",
            "report.json"} <= listed
    assert main(["runs"]) == 0 and "4 results in suite(s) bench" in capsys.readouterr().out

    # per cell: the run, the one `bench run` that recomputes it (the same identity: reused),
    # the selected settings, the weights' digest and the code version; the summary; the export
    px8 = next(c for c in saved["cells"] if c["id"] == "px8")
    assert px8["run_id"] == by_pool["8"].run_id and px8["settings"] == by_pool["8"].best
    assert px8["weights_sha256"] == by_pool["8"].weights_sha256 and px8["code_version"]
    assert px8["command"].startswith("bench run --backbone pixels --task digits --head linear")
    assert main(shlex.split(px8["command"])[1:]) == 0
    assert "computed 0 results, reused 1 already logged" in capsys.readouterr().out
    assert f"run {px8['run_id']}" in (folder_out / "main.md").read_text()
    assert "reproduced 3 of 6 cells with a result (margin 5 points)" in out
    assert "largest misses: pool8 +" in out and "1 under another (†" in out
    exported = list(csv.DictReader(open(folder_out.parent / "reports.csv")))
    assert {(r["paper"], r["id"], r["verdict"]) for r in exported} >= {
        ("tiny", "px8", "reproduced"), ("tiny", "shapes", "differs")}

    # the same report again: the logged run stays; a changed one supersedes it
    assert main(["report", str(paper_file)]) == 0
    assert "unchanged: the same report was logged already" in capsys.readouterr().out
    assert [r.info.run_id for r in reports()] == [logged.info.run_id]
    write_paper(paper_file, values | {"unet": 10.0, "px4": values["px8"]}, folder)
    assert main(["report", str(paper_file), "--table", "main"]) == 0
    capsys.readouterr()
    write_paper(paper_file, values | {"px4": by_pool["4"].metrics["test_top1"]}, folder)
    assert main(["report", str(paper_file)]) == 0
    assert "4 reproduced" in capsys.readouterr().out
    runs = reports()
    assert len(runs) == 3
    old = next(r for r in runs if r.info.run_id == logged.info.run_id)
    assert old.data.tags[names.SUPERSEDED_BY] == runs[0].data.tags[names.IDENTITY]

    # a cell whose slot holds a result of another identity (run where the protocol resolved
    # otherwise, e.g. precision auto on a GPU): judged, marked, never counted as its identity's
    slots = slot_keys(plan)
    assert all(slots[r.identity] == r.slot_key for r in (*by_pool.values(), on_shapes))
    unet = plan.cells["unet"].identity
    resolved = next(j.prepared.run for job in plan.jobs for j in getattr(job, "jobs", [job])
                    if j.prepared and unet in {c.identity for c in j.prepared.run.cells})
    [unet_cell] = [c for c in resolved.cells if c.identity == unet]
    elsewhere = replace(by_pool["8"], identity="e" * 32, backbone="random-unet",
                        layer=unet_cell.layer, pool=unet_cell.pool,
                        settings=settings_digest(resolved.settings), run_id=None)
    assert elsewhere.slot_key == slots[unet]
    elsewhere_id = log_record(experiment, elsewhere, {})
    assert main(["report", str(paper_file), "--table", "main"]) == 0
    capsys.readouterr()
    judged = next(c for c in json.loads((folder_out / "report.json").read_text())["cells"]
                  if c["id"] == "unet")
    assert judged["by_slot"] and judged["run_id"] == elsewhere_id
    assert (judged["verdict"], judged["direction"]) == ("differs", "ours higher")
    md = (folder_out / "main.md").read_text()
    assert "| unet ‡ |" in md and "‡ No result has the identity resolved here" in md
    # the template reaches the identities: another seed than the runs' finds nothing of them
    assert main(["report", str(paper_file), "--table", "main", "--seed", "1"]) == 2
    assert "has no results in suite 'bench' yet" in capsys.readouterr().err

    # any change to what the report shows re-logs it: here only a table's note (issue 31, 7)
    assert main(["report", str(paper_file), "--table", "main"]) == 0
    assert "unchanged" in capsys.readouterr().out
    write_paper(paper_file, values | {"px4": by_pool["4"].metrics["test_top1"]}, folder,
                note="the paper's table 1 prints no seed")
    assert main(["report", str(paper_file), "--table", "main"]) == 0
    assert "unchanged" not in capsys.readouterr().out
    assert "**Note.** the paper's table 1 prints no seed" in (folder_out / "main.md").read_text()


def test_report_errors_are_one_line(tmp_path, capsys):
    paper_file = tmp_path / "tiny.yaml"
    write_paper(paper_file, {k: 50.0 for k in ("px8", "px4", "shapes", "pool1", "pool4",
                                               "pool8")}, "digits")
    assert main(["report", str(paper_file)]) == 2
    err = capsys.readouterr().err
    assert "has no results in suite 'bench' yet: run `bench reproduce" in err
    assert err.count("\n") == 1
    assert main(["report", str(paper_file), "--table", "nope"]) == 2
    assert "no table 'nope'" in capsys.readouterr().err
    assert main(["report", "no-such-paper"]) == 2
    assert "unknown paper 'no-such-paper'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "similarity"])
def test_every_flag_is_read(command, tmp_path, monkeypatch):
    """Every flag `bench report` and `bench similarity` accept is read before any work (a flag
    accepted and dropped is issue 31's `--cache-dtype`)."""
    import bench.api

    from .test_reproduce import recording

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(bench.api, command, stop)
    argv = {"report": ["report", "tiny"],
            "similarity": ["similarity", "--backbone", "pixels", "--task", "digits"]}[command]
    args, unread = recording(argv)
    with pytest.raises(Stop):
        args.func(args)
    assert unread() == set(), f"flags accepted but never read: {sorted(unread())}"
