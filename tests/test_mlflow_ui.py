"""What a user sees of a sweep in the MLflow server: the leaderboard over the REST API, and the
experiment's runs page rendered by a real browser (headless Chromium).

Needs the server started by ``.ci/run`` (``BENCH_TEST_MLFLOW_URI``, see ``tests/test_cluster.py``)
and Debian's ``chromium`` for the page test (skipped without it, except under CI where it fails).
Screenshots and the rendered DOM go to ``$BENCH_TEST_ARTIFACTS`` (``.ci/run`` sets it), else to the
test's tmp_path.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from bench.cli import main
from tests.services import _in_ci, _rest

FAST = ["--epochs", "4", "--lrs", "1e-2", "--wds", "0", "--workers", "0", "--no-progress"]
BACKBONES = {"pixels": "image", "random-unet": "mid"}  # preset -> its default layer
POOLS = ("1", "2")


@pytest.fixture(scope="module")
def sweep(mlflow_server_uri, tmp_path_factory):
    """A 2 backbones x 1 task x 2 pools sweep logged to the server, run twice (the second run
    reuses every cell and refreshes the leaderboard run). Returns (uri, suite, experiment id)."""
    suite = f"test-ui-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server_uri)
        mp.setenv("BENCH_RESULTS", str(tmp_path_factory.mktemp("ui-sweep") / "results"))
        args = ["sweep", "--backbones", ",".join(BACKBONES), "--tasks", "digits",
                "--backbone-arg", "size=16", "--grid", f"pool={','.join(POOLS)}",
                "--suite", suite, *FAST]
        assert main(args) == 0
        assert main(args) == 0
    found = _rest(mlflow_server_uri,
                  f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={suite}")
    return mlflow_server_uri, suite, found["experiment"]["experiment_id"]


def _search(uri: str, experiment_id: str, kind: str) -> list[dict]:
    found = _rest(uri, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment_id], "filter": f"tags.`bench.kind` = '{kind}'",
        "max_results": 1000})
    return found.get("runs", [])


def _number(shown: str) -> float:
    """The value of a leaderboard cell: ``64.96 ± 0.42`` (and a tie marker) -> 64.96."""
    return float(shown.split("±")[0])


def _markdown_table(text: str) -> dict[tuple[str, str], float]:
    """{(backbone, task): value} from a pandas to_markdown() pivot in ``text``."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    header, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set(":-")]
    return {(r[0], task): _number(v) for r in body for task, v in zip(header[1:], r[1:]) if v}


@pytest.mark.server
def test_leaderboard_read_back_over_rest_equals_bench_leaderboard(sweep, tmp_path, monkeypatch,
                                                                  capsys):
    uri, suite, experiment_id = sweep

    # The leaderboard run the sweep logged: one run, its table as a JSON artifact.
    [board] = _search(uri, experiment_id, "leaderboard")
    assert board["info"]["run_name"] == "leaderboard" and board["info"]["status"] == "FINISHED"
    run_id = board["info"]["run_id"]
    listed = _rest(uri, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}")
    assert {"leaderboard.json", "leaderboard_runs.json", "leaderboard.md",
            "leaderboard.csv"} <= {f["path"] for f in listed["files"]}
    table = _rest(uri, f"/get-artifact?path=leaderboard.json&run_uuid={run_id}")
    assert table["columns"] == ["backbone", "digits"]
    logged = {(row[0], "digits"): _number(row[1]) for row in table["data"]}
    assert len(table["data"]) == len(BACKBONES), table  # refreshed by the rerun, not appended
    chosen = _rest(uri, f"/get-artifact?path=leaderboard_runs.json&run_uuid={run_id}")

    # The same table computed here from the result runs' metrics (REST): per backbone x task,
    # the test_top1 of the run with the best val_top1 (latest first on ties).
    runs = _search(uri, experiment_id, "result")
    assert len(runs) == len(BACKBONES) * len(POOLS)
    best: dict[tuple[str, str], tuple] = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        key = (tags["bench.backbone"], tags["bench.task"])
        rank = (metrics["val_top1"], run["info"]["start_time"])
        if key not in best or rank > best[key][0]:
            best[key] = (rank, round(metrics["test_top1"], 2), tags["bench.name"])
    assert logged == {k: v[1] for k, v in best.items()}
    assert sorted(row[2] for row in chosen["data"]) == sorted(v[2] for v in best.values())

    # What `bench leaderboard` prints and writes, from the server.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["leaderboard", "--suite", suite, "--no-log"]) == 0
    printed = _markdown_table(capsys.readouterr().out)
    assert printed == logged
    csv = (tmp_path / "results" / "leaderboard.csv").read_text().splitlines()
    assert csv[0] == "backbone,digits"
    assert {(line.split(",")[0], "digits"): _number(line.split(",")[1])
            for line in csv[1:]} == logged


@pytest.mark.server
def test_each_run_has_a_description_and_a_name_that_tells_it_apart(sweep):
    """The run note (the UI's Description) leads with the headline ± its interval half-width, the
    validation score and the selected point; run names differ within the ~20 characters the
    runs table's first column shows."""
    uri, _, experiment_id = sweep
    runs = _search(uri, experiment_id, "result")
    labels = [run["info"]["run_name"] for run in runs]
    assert len({label[:20] for label in labels}) == len(runs), labels
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        epochs = {p["key"]: p["value"] for p in run["data"]["params"]}["best.epochs"]
        half = (metrics["test_top1_ci95_high"] - metrics["test_top1_ci95_low"]) / 2
        assert tags["mlflow.note.content"] == (
            f"{metrics['test_top1']:.2f} ± {half:.2f} (val {metrics['val_top1']:.2f}), linear, "
            f"lr 0.01, wd 0, epochs {float(epochs):g}"), tags["mlflow.note.content"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        message = "chromium is not installed (apt-get install -y --no-install-recommends chromium)"
        if _in_ci():
            pytest.fail(f"CI must run this test: {message}")
        pytest.skip(message)
    return exe


def _browse(exe: str, url: str, *flags: str, budget_ms: int = 10000) -> subprocess.CompletedProcess:
    """Headless Chromium with a fresh profile and no network extras."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--window-size=1600,900",
             f"--virtual-time-budget={budget_ms}", *flags, url],
            capture_output=True, text=True, timeout=180, check=False)


def _rendered(exe: str, url: str, wanted: list[str], saved: Path) -> None:
    """Render ``url`` (dumping its DOM to ``saved``) until every ``wanted`` text is on it."""
    dom, page = "", None
    for budget in (10000, 30000):  # a slow machine may need more (virtual) time
        page = _browse(exe, url, "--dump-dom", budget_ms=budget)
        dom = html.unescape(page.stdout)
        if all(text in dom for text in wanted):
            break
    saved.write_text(dom)
    missing = [text for text in wanted if text not in dom]
    assert not missing, (f"missing from the rendered page {url}: {missing}\n"
                         f"chromium exit {page.returncode}; stderr tail:\n{page.stderr[-2000:]}")


def _artifacts(tmp_path: Path) -> Path:
    out_dir = Path(os.environ.get("BENCH_TEST_ARTIFACTS") or tmp_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


@pytest.mark.server
def test_runs_page_renders_the_sweep_in_headless_chromium(sweep, tmp_path):
    exe = _chromium()
    uri, suite, experiment_id = sweep
    out_dir = _artifacts(tmp_path)
    url = f"{uri}/#/experiments/{experiment_id}/runs"
    names = [f"{b} {layer}/{p} linear digits" for b, layer in BACKBONES.items() for p in POOLS]
    _rendered(exe, url, [*names, "leaderboard"], out_dir / "mlflow-runs-page.html")
    _screenshot(exe, url, out_dir / "mlflow-runs-page.png")


@pytest.mark.server
def test_the_results_view_shows_each_headline_with_its_interval_in_headless_chromium(sweep,
                                                                                  tmp_path):
    """The link bench prints (and the experiment's description) opens the runs table, not the
    GenAI overview MLflow 3 opens by default, with every result's headline ± interval (its
    description) and the headline metric as columns, no column picked by hand."""
    from bench.results.record import results_view_path

    exe = _chromium()
    uri, suite, experiment_id = sweep
    out_dir = _artifacts(tmp_path)
    notes = [next(t["value"] for t in run["data"]["tags"] if t["key"] == "mlflow.note.content")
             for run in _search(uri, experiment_id, "result")]
    headlines = [note.split(" (val")[0] for note in notes]  # "64.96 ± 0.42"
    assert all(" ± " in h for h in headlines), headlines
    url = f"{uri}/{results_view_path(experiment_id)}"
    _rendered(exe, url, ["bench results", "Description", "test_top1", *headlines],
              out_dir / "mlflow-results-view.html")
    _screenshot(exe, url, out_dir / "mlflow-results-view.png")
    # opened without the link, the experiment's description links the view
    landing = f"{uri}/#/experiments/{experiment_id}"
    _rendered(exe, landing, ["Open the results table"], out_dir / "mlflow-landing.html")
    assert f'href="{results_view_path(experiment_id)}"' in (
        out_dir / "mlflow-landing.html").read_text()


@pytest.mark.server
def test_a_run_page_shows_its_description_in_headless_chromium(sweep, tmp_path):
    exe = _chromium()
    uri, _, experiment_id = sweep
    out_dir = _artifacts(tmp_path)
    run = _search(uri, experiment_id, "result")[0]
    note = next(t["value"] for t in run["data"]["tags"] if t["key"] == "mlflow.note.content")
    url = f"{uri}/#/experiments/{experiment_id}/runs/{run['info']['run_id']}"
    _rendered(exe, url, [note, run["info"]["run_name"]], out_dir / "mlflow-run-page.html")
    _screenshot(exe, url, out_dir / "mlflow-run-page.png")


def _screenshot(exe: str, url: str, shot: Path) -> None:
    """A screenshot of ``url`` that is not blank (for a person to look at: CI keeps it)."""
    shot.unlink(missing_ok=True)
    page = _browse(exe, url, f"--screenshot={shot}")
    assert shot.is_file(), f"no screenshot (exit {page.returncode}):\n{page.stderr[-2000:]}"
    from PIL import Image

    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1600, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert shot.stat().st_size > 20_000 and len(colours) > 50, (
        f"{shot}: {shot.stat().st_size} bytes, {len(colours)} colours: a blank page?")
    print(f"screenshot of {url}: {shot}")
