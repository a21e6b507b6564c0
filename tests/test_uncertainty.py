"""Uncertainty wired into bench: intervals and predictions on every record, seeds, kNN and
few-shot heads through `bench run`, `bench compare`, and the leaderboard's ± and tie marker."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cli import main
from bench.results.record import ci_names
from bench.results.artifacts import load_predictions

from .conftest import records

FAST = ["--backbone-arg", "size=8", "--workers", "0", "--no-progress"]
GRID = ["--epochs", "2", "--lrs", "1e-2", "--wds", "0"]


def check_intervals_and_predictions(record) -> None:
    """The record's CIs bracket its metrics, and its stored predictions reproduce them."""
    predictions = load_predictions(record.run_id)
    for metric, value in predictions.metrics().items():
        assert value == pytest.approx(record.metrics[f"test_{metric}"], abs=1e-3)
        low, high = (record.metrics[name] for name in ci_names(metric))
        assert low <= value <= high, (record.name, metric, low, high)
        if metric == "top1":  # (a constant prediction has a mean per class of exactly 1/C)
            assert high - low > 0.5, (record.name, low, high)
    assert record.metrics["bootstrap_seconds"] > 0


def test_every_head_logs_intervals_predictions_and_seed_aggregates(capsys):
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST, *GRID,
                 "--seeds", "0,1"]) == 0
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST, "--head", "knn"]) == 0
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST, "--head", "attention",
                 "--task-arg", "limit=200", "--epochs", "1", "--probe-arg", "dim=16",
                 "--probe-arg", "heads=2", "--probe-arg", "depth=1"]) == 0
    out = capsys.readouterr().out
    assert "pixels/digits/image/8/linear: across 2 seeds (mean ± sample std): test_top1" in out
    found = records()
    by_head = {}
    for record in found:
        by_head.setdefault(record.head, []).append(record)
        check_intervals_and_predictions(record)
    assert sorted(by_head) == ["attention", "knn", "linear"]
    [knn] = by_head["knn"]
    assert knn.metrics["test_top1"] > 85.0 and knn.best["k"] in (10, 20, 50, 100, 200)
    linear = by_head["linear"]
    assert sorted(r.seed for r in linear) == [0, 1]
    top1 = [r.metrics["test_top1"] for r in linear]
    for r in linear:  # the aggregate is logged on each seed's record
        assert r.metrics["seed_count"] == 2
        assert r.metrics["test_top1_seed_mean"] == pytest.approx(np.mean(top1))
        assert r.metrics["test_top1_seed_std"] == pytest.approx(np.std(top1, ddof=1))

    # bench compare on two of these runs, by run id: the paired interval and McNemar
    assert main(["compare", linear[0].run_id, knn.run_id]) == 0
    printed = capsys.readouterr().out
    assert f"{linear[0].name} vs {knn.name} on 359 test images, top1" in printed
    assert "paired bootstrap interval" in printed and "McNemar p" in printed


def test_fewshot_head_through_bench_run_logs_draws_and_their_spread(capsys):
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST, *GRID,
                 "--head", "few-shot", "--shots", "1,3", "--draws", "2"]) == 0
    assert "few-shot/3-shot: across 2 seeds" in capsys.readouterr().out
    found = records()
    assert sorted((r.variant, r.seed) for r in found) == [
        ("1-shot", 0), ("1-shot", 1), ("3-shot", 0), ("3-shot", 1)]
    for record in found:
        check_intervals_and_predictions(record)
        assert record.name.endswith(f"/few-shot/{record.variant}")
        same_k = [r.metrics["test_top1"] for r in found if r.variant == record.variant]
        assert record.metrics["test_top1_seed_mean"] == pytest.approx(np.mean(same_k))
    with pytest.raises(SystemExit):
        main(["run", "--backbone", "pixels", "--task", "digits", "--shots", "x"])
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--shots", "2"]) == 2


def test_refit_on_train_ignores_val():
    """The few-shot retrain sees the support (train) only: val changes nothing it predicts."""
    import torch

    from bench.heads.probe import GridProbeTrainer, ProbeConfig
    from bench.protocol import ProbeData

    rng = np.random.default_rng(0)
    x = {s: rng.normal(size=(40, 6)).astype(np.float32) for s in ("train", "val", "test")}
    y = {s: rng.integers(0, 3, 40) for s in x}
    cfg = ProbeConfig(lrs=(1e-2,), weight_decays=(0.0,), epochs=3)
    point = {"lr": 1e-2, "weight_decay": 0.0, "epochs": 3}
    from bench.precision import FP32

    support_only = GridProbeTrainer(cfg, "cpu", FP32, refit_on="train")
    first = support_only.refit_predict(ProbeData(x, y, 3), point)
    other_val = ProbeData(x | {"val": x["val"] * 5 + 1}, y, 3)
    assert torch.equal(first, support_only.refit_predict(other_val, point))
    both = GridProbeTrainer(cfg, "cpu", FP32)
    assert not torch.equal(both.refit_predict(ProbeData(x, y, 3), point),
                           both.refit_predict(other_val, point))


def log_result(backbone: str, hits: np.ndarray, labels: np.ndarray) -> str:
    """A finished result record on digits whose predictions hit where ``hits`` is True."""
    from bench.run.jobs import BOOTSTRAP_RESAMPLES
    from bench.results.record import PREDICTIONS, RunRecord, interval_metrics
    from bench.stats import Predictions, bootstrap_intervals
    from bench.results.runs import log_record
    from bench.results.store import ensure_experiment

    wrong = (labels + 1) % 10
    top5 = np.stack([np.where(hits, labels, wrong)] + [(labels + i) % 10 for i in (2, 3, 4, 5)], 1)
    predictions = Predictions(top5, labels, 10)
    metrics = {f"test_{k}": v for k, v in predictions.metrics().items()} | {"val_top1": 90.0}
    metrics |= interval_metrics(bootstrap_intervals(predictions, BOOTSTRAP_RESAMPLES))
    record = RunRecord(identity=backbone, name=f"{backbone}/digits/image/8/linear",
                       backbone=backbone, task="digits", layer="image", pool="8", head="linear",
                       seed=0, headline="top1", metrics=metrics, best={"lr": 0.01})
    return log_record(ensure_experiment("bench"), record, {PREDICTIONS: predictions.to_bytes()})


def test_leaderboard_shows_intervals_and_marks_rows_tied_with_the_best(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    best = rng.random(2000) < 0.80
    near = best.copy()
    # disagrees with the best on 1% of images, at random: 10 it gets right, 10 wrong
    flip = np.concatenate([rng.choice(np.flatnonzero(best), 10, replace=False),
                           rng.choice(np.flatnonzero(~best), 10, replace=False)])
    near[flip] = ~near[flip]
    worse = best & (rng.random(2000) < 0.875)  # 10 points lower
    for name, hits in (("best", best), ("near", near), ("worse", worse)):
        log_result(name, hits, labels)
    assert main(["leaderboard"]) == 0
    printed = capsys.readouterr().out
    shown = {line.split("|")[1].strip(): line.split("|")[2].strip()
             for line in printed.splitlines() if line.startswith("| ") and "backbone" not in line}
    assert shown["best"].startswith(f"{100 * best.mean():.2f} ± ")
    assert shown["near"].endswith("≈") and not shown["worse"].endswith("≈")
    assert not shown["best"].endswith("≈")
    half = float(shown["worse"].split("±")[1])
    assert 1.3 < half < 2.2  # 95% half-width of a ~70% accuracy on 2,000 images: about 2.0
    assert "not distinguishable from the best" in printed
    csv = (tmp_path / "results" / "leaderboard.csv").read_text()
    assert "≈" in csv and "±" in csv

    # bench compare by backbone names within a task: the leaderboard's records
    assert main(["compare", "best", "worse", "--task", "digits"]) == 0
    assert "best/digits/image/8/linear is better (p < 0.05; the 95% interval excludes 0)" in (
        capsys.readouterr().out)
    assert main(["compare", "best", "near", "--task", "digits"]) == 0
    assert "not distinguishable" in capsys.readouterr().out
    assert main(["compare", "best", "nobody", "--task", "digits"]) == 2
    assert main(["leaderboard", "--protocol", "knn"]) == 1
    assert "no finished knn results in suite(s) 'bench'; it holds 3 results of other" in (
        capsys.readouterr().err)
