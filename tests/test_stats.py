"""Bootstrap intervals, paired comparisons, seed aggregation and the per-image predictions file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.errors import UsageError
from bench.stats import (
    Predictions,
    aggregate_seeds,
    bootstrap_intervals,
    compare,
    mcnemar_exact,
)


def synthetic_predictions(n: int, classes: int, accuracy: float, seed: int) -> Predictions:
    """Top-1 right with probability ``accuracy``; the other top-5 slots are wrong classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    wrong = (labels[:, None] + np.arange(1, 6)[None, :]) % classes
    top5 = wrong.copy()
    hit = rng.random(n) < accuracy
    top5[:, 0] = np.where(hit, labels, wrong[:, 0])
    return Predictions(top5, labels, classes)


def definition_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """From the definitions, one image at a time: a class ranks above another when its score is
    higher, or equal with a lower class id."""
    ranks = []
    for row, label in zip(scores, labels):
        ranks.append(sum(1 for c, s in enumerate(row)
                         if s > row[label] or (s == row[label] and c < label)))
    ranks = np.array(ranks)
    per_class = [np.mean(ranks[labels == c] == 0) for c in np.unique(labels)]
    return {"top1": 100 * np.mean(ranks == 0), "top5": 100 * np.mean(ranks < 5),
            "mean_per_class": 100 * np.mean(per_class)}


def test_tied_logits_give_one_answer_in_every_metric_artifact_and_selection():
    """kNN-like integer votes, a quarter of rows tied at the top: metrics, the confusion matrix,
    the stored top-5 and the validation scores all follow one rule (lower class id wins)."""
    from bench.protocol import ProbeData, evaluate

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(400, 12)).astype(np.float32)  # many ties
    labels = rng.integers(0, 12, 400)
    expected = definition_metrics(scores, labels)

    class Fixed:  # a trainer whose val and test logits are the tied scores
        def search(self, data):
            return [{"k": 1.0, **protocol_metrics(torch.from_numpy(scores), labels, 12)}]

        def refit_predict(self, data, point):
            return torch.from_numpy(scores)

    from bench.protocol import metrics as protocol_metrics

    result = evaluate(Fixed(), ProbeData({}, {"test": labels}, 12))
    for name, value in expected.items():
        assert result.test[name] == pytest.approx(value) and result.val[name] == pytest.approx(value)
    first = np.array([min(np.flatnonzero(row == row.max())) for row in scores])
    assert np.array_equal(result.predictions.top5[:, 0], first)
    assert np.trace(result.confusion) == round(expected["top1"] * 4)
    assert np.array_equal(result.predictions.top5,
                          np.argsort(-scores, axis=1, kind="stable")[:, :5])
    numpy_path = Predictions.from_logits(scores, labels)
    assert np.array_equal(numpy_path.top5, result.predictions.top5)
    # a grid's validation scores (all heads' best classes found in one call) follow the same rule
    from bench.protocol import grid_metrics

    stack = torch.from_numpy(np.stack([scores, scores[:, ::-1].copy(), -scores]))
    assert grid_metrics(stack, labels, 12) == [pytest.approx(definition_metrics(head.numpy(), labels))
                                               for head in stack]


def test_predictions_roundtrip(tmp_path):
    pred = synthetic_predictions(300, 12, 0.5, seed=0)
    path = pred.save(tmp_path / "predictions.npz")
    assert path.exists() and path.stat().st_size < 3000
    loaded = Predictions.load(path)
    assert np.array_equal(loaded.top5, pred.top5) and np.array_equal(loaded.labels, pred.labels)
    assert loaded.num_classes == 12


def test_predictions_refuse_bad_shapes_and_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        Predictions(np.zeros((3, 5), int), np.array([0, 1, 9]), num_classes=5)
    with pytest.raises(ValueError, match="shape"):
        Predictions(np.zeros((3, 5), int), np.array([0, 1]), num_classes=5)


def test_bootstrap_width_matches_binomial_normal_approximation():
    n, p = 20000, 0.7
    pred = synthetic_predictions(n, classes=50, accuracy=p, seed=1)
    intervals = bootstrap_intervals(pred, resamples=1000, seed=0)
    observed = pred.metrics()["top1"] / 100
    normal_width = 100 * 2 * 1.96 * math.sqrt(observed * (1 - observed) / n)
    width = intervals.high["top1"] - intervals.low["top1"]
    assert abs(width - normal_width) / normal_width < 0.10
    assert intervals.low["top1"] < intervals.point["top1"] < intervals.high["top1"]


def test_stratified_mean_per_class_interval_contains_point_and_is_seeded():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(20), rng.integers(5, 60, 20))  # unbalanced classes
    hit = rng.random(len(labels)) < np.linspace(0.2, 0.95, 20)[labels]
    top5 = (labels[:, None] + np.arange(1, 6)) % 20
    top5[hit, 0] = labels[hit]
    pred = Predictions(top5, labels, 20)
    a = bootstrap_intervals(pred, resamples=500, seed=3)
    b = bootstrap_intervals(pred, resamples=500, seed=3)
    assert a == b
    assert a.low["mean_per_class"] < a.point["mean_per_class"] < a.high["mean_per_class"]
    assert a.point["mean_per_class"] != pytest.approx(a.point["top1"])  # unbalanced: they differ


def test_stratified_resampling_keeps_every_class_size():
    """A class that is always right and one always wrong: mean per class is exactly 50 always."""
    labels = np.array([0] * 30 + [1] * 70)
    top5 = np.stack([np.zeros(100, int), np.ones(100, int)], axis=1)  # predicts class 0 always
    intervals = bootstrap_intervals(Predictions(top5, labels, 2), resamples=200)
    assert intervals.low["mean_per_class"] == intervals.high["mean_per_class"] == 50.0
    assert intervals.low["top1"] < 30.0 < intervals.high["top1"]  # plain resampling varies


def test_compare_finds_a_ten_point_difference():
    rng = np.random.default_rng(4)
    n, classes = 2000, 10
    labels = rng.integers(0, classes, n)
    wrong = (labels[:, None] + np.arange(1, 6)) % classes
    u = rng.random(n)
    better, worse = wrong.copy(), wrong.copy()
    better[u < 0.80, 0] = labels[u < 0.80]
    worse[u < 0.70, 0] = labels[u < 0.70]
    result = compare(Predictions(better, labels, classes), Predictions(worse, labels, classes),
                     names=("new", "old"))
    assert result.difference == pytest.approx(10.0, abs=1.0)
    assert result.distinguishable and result.low > 0
    assert result.p_value < 0.01 and result.mcnemar_p < 1e-6
    assert result.only_b_right == 0 and result.only_a_right == int(((u >= 0.7) & (u < 0.8)).sum())
    assert "new is better" in result.summary()
    assert "1000 resamples, p < 0.002)" in result.summary()  # no resample crossed 0


def test_compare_does_not_separate_runs_differing_on_one_percent_at_random():
    rng = np.random.default_rng(5)
    n, classes = 2000, 10
    labels = rng.integers(0, classes, n)
    wrong = (labels[:, None] + np.arange(1, 6)) % classes
    a = wrong.copy()
    right = rng.random(n) < 0.75
    a[right, 0] = labels[right]
    b = a.copy()
    disagree = rng.choice(n, size=n // 100, replace=False)  # 1% of items; a coin says who is right
    a_right = rng.random(len(disagree)) < 0.5
    a[disagree, 0] = np.where(a_right, labels[disagree], wrong[disagree, 0])
    b[disagree, 0] = np.where(a_right, wrong[disagree, 0], labels[disagree])
    for metric in ("top1", "mean_per_class"):
        result = compare(Predictions(a, labels, classes), Predictions(b, labels, classes),
                         metric=metric)
        assert not result.distinguishable, result.summary()
        assert result.low < 0 < result.high and result.p_value > 0.05
        assert "not distinguishable" in result.summary()
    assert result.mcnemar_p > 0.05


def test_compare_refuses_different_test_sets():
    a = synthetic_predictions(100, 5, 0.5, seed=6)
    shuffled = Predictions(a.top5[::-1], a.labels[::-1], 5)
    with pytest.raises(ValueError, match="same test labels in the same order"):
        compare(a, shuffled)
    with pytest.raises(ValueError, match="same test labels"):
        compare(a, Predictions(a.top5[:50], a.labels[:50], 5))
    with pytest.raises(UsageError, match="unknown metric 'top3'"):
        compare(a, a, metric="top3")


def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)


def test_aggregate_seeds_mean_and_sample_std():
    runs = [{"top1": 70.0, "top5": 90.0}, {"top1": 72.0, "top5": 91.0}, {"top1": 74.0, "top5": 92.0}]
    agg = aggregate_seeds(runs)
    assert agg.mean == {"top1": 72.0, "top5": 91.0} and agg.seeds == 3
    assert agg.std["top1"] == pytest.approx(2.0) and agg.std["top5"] == pytest.approx(1.0)
    assert math.isnan(aggregate_seeds(runs[:1]).std["top1"])
    with pytest.raises(ValueError, match="run 1 has metrics"):
        aggregate_seeds([{"top1": 1.0}, {"top5": 2.0}])


@pytest.mark.parametrize("seed", [49, 140, 0])
def test_one_decision_rule_interval_and_p_value_agree_at_the_boundary(seed):
    """Two runs at 70% on 300 images, independent errors: near the boundary (seeds 49 and 140)
    a percentile interval and the p-value used to disagree; now the interval excluding 0, the
    verdict and p < 0.05 are one rule."""
    rng = np.random.default_rng(seed)
    n, classes = 300, 5
    labels = rng.integers(0, classes, n)
    wrong = (labels[:, None] + np.arange(1, 5)) % classes
    a, b = wrong.copy(), wrong.copy()
    right_a, right_b = rng.random(n) < 0.7, rng.random(n) < 0.7
    a[right_a, 0], b[right_b, 0] = labels[right_a], labels[right_b]
    result = compare(Predictions(a, labels, classes), Predictions(b, labels, classes),
                     resamples=200)
    assert result.distinguishable == (result.p_value < 0.05) == (result.low > 0 or result.high < 0)
    assert ("not distinguishable" in result.summary()) != result.distinguishable


def test_a_selection_at_the_end_of_its_grid_is_named_with_the_wider_grid_to_try():
    from bench.results.leaderboard import EDGE, display_table, footnotes, select_cells
    from bench.protocol import grid_edges
    from bench.results.record import RunRecord

    grid = [{"lr": lr, "weight_decay": wd, "epochs": 10, "top1": 50.0}
            for lr in (1e-3, 1e-2, 1e-1) for wd in (0.0, 1e-2)]
    metric_names = {"top1"}
    assert grid_edges(grid, {"lr": 1e-3, "weight_decay": 1e-2, "epochs": 10}, metric_names) == [
        "lr 0.001 is the smallest of 0.001..0.1: try a grid reaching 0.0001",
        "weight_decay 0.01 is the largest of 0..0.01: try a grid reaching 0.02"]
    assert grid_edges(grid, {"lr": 1e-2, "weight_decay": 0.0, "epochs": 10}, metric_names) == []
    knn = [{"k": k, "top1": 50.0} for k in (10, 20, 50, 100, 200)]
    assert grid_edges(knn, {"k": 200}, metric_names) == [
        "k 200 is the largest of 10..200: try a grid reaching 423"]
    record = RunRecord(identity="a", name="px/digits/image/8/knn", backbone="px", task="digits",
                       layer="image", pool="8", head="knn", seed=0, headline="top1",
                       metrics={"test_top1": 90.0, "val_top1": 91.0}, best={"k": 200},
                       grid_edge="k 200 is the largest of 10..200: try a grid reaching 423")
    assert record.to_tags()["bench.grid_edge"].startswith("k 200")
    cells = select_cells([record], protocol="all")
    assert display_table(cells, set()).loc["px", "digits"].endswith(EDGE)
    assert footnotes(cells) == [f"{EDGE} px on digits (px/digits/image/8/knn): selected at the "
                                "grid's edge: k 200 is the largest of 10..200: try a grid "
                                "reaching 423"]
