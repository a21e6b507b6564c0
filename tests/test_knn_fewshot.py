"""Weighted kNN against scikit-learn references, and few-shot draws and probes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bench import knn
from bench.fewshot import fewshot_draw, fit_fewshot
from bench.knn import KnnConfig, fit_knn, knn_scores, knn_top5
from bench.probe import ProbeConfig


def blobs(n: int, dim: int, classes: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    return (centres[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several query chunks so the chunked path is what gets tested."""
    monkeypatch.setattr(knn, "MAX_SIMILARITIES", 1000)


def test_weighted_scores_equal_a_brute_force_cosine_reference(small_chunks):
    from sklearn.neighbors import NearestNeighbors

    bank, bank_y = blobs(300, 16, 6, seed=0, spread=2.0)
    queries, _ = blobs(70, 16, 6, seed=1, spread=2.0)
    k = 20
    ours = knn_scores(bank, bank_y, queries, 6, k)
    distance, index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(
        bank.astype(np.float64)).kneighbors(queries.astype(np.float64))
    reference = np.zeros((70, 6))
    np.add.at(reference, (np.arange(70)[:, None], bank_y[index]), np.exp((1 - distance) / 0.07))
    np.testing.assert_allclose(ours, reference, rtol=2e-4)
    top5 = knn_top5(bank, bank_y, queries, 6, [k])[k]
    assert np.array_equal(top5[:, 0], reference.argmax(1))


def test_uniform_votes_equal_kneighborsclassifier_including_ties(small_chunks):
    from sklearn.neighbors import KNeighborsClassifier

    bank, bank_y = blobs(400, 12, 5, seed=2, spread=3.0)
    queries, _ = blobs(150, 12, 5, seed=3, spread=3.0)
    ks = [1, 10, 20, 50]
    ours = knn_top5(bank, bank_y, queries, 5, ks, KnnConfig(weighting="uniform"))
    ties = 0
    for k in ks:
        model = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
        expected = model.fit(bank, bank_y).predict(queries)
        assert np.array_equal(ours[k][:, 0], expected), k
        votes = model.predict_proba(queries)
        ties += int(((votes == votes.max(1, keepdims=True)).sum(1) > 1).sum())
    assert ties > 0  # tie-breaking (lowest class id) was exercised


def test_knn_on_digit_pixels_beats_85_percent_and_selects_k_on_val():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    parts = {"train": order[:1000], "val": order[1000:1300], "test": order[1300:]}
    result = fit_knn({s: x[i].astype(np.float32) for s, i in parts.items()},
                     {s: y[i] for s, i in parts.items()}, num_classes=10)
    assert result.test["top1"] > 85.0
    assert [g["k"] for g in result.grid] == [10, 20, 50, 100, 200]
    best = max(result.grid, key=lambda g: g["top1"])
    assert result.k == best["k"] and result.val["top1"] == best["top1"]
    assert result.predictions.metrics() == result.test and len(result.predictions) == 497


def test_k_is_capped_by_the_bank_and_bad_inputs_are_refused():
    bank, bank_y = blobs(30, 8, 3, seed=4)
    assert sorted(knn_top5(bank, bank_y, bank[:5], 3, [10, 50, 100])) == [10, 30]
    with pytest.raises(ValueError, match="3 features but 2 labels"):
        knn_top5(bank[:3], bank_y[:2], bank[:1], 3, [1])
    with pytest.raises(ValueError, match="unknown kNN weighting"):
        KnnConfig(weighting="distance")
    with pytest.raises(ValueError, match="missing: val"):
        fit_knn({"train": bank, "test": bank}, {"train": bank_y, "test": bank_y}, 3)


def names_and_labels():
    items = [f"class{c}/img{i:03d}.jpg" for c in range(4) for i in range(12)]
    labels = np.array([c for c in range(4) for _ in range(12)])
    return items, labels


def test_fewshot_draws_are_fixed_by_names_not_order():
    items, labels = names_and_labels()
    draw = fewshot_draw(items, labels, shots=3, draw=0)
    chosen = {items[i] for i in draw.support}
    assert np.bincount(labels[draw.support]).tolist() == [3, 3, 3, 3]
    assert sorted(np.concatenate([draw.support, draw.rest]).tolist()) == list(range(48))
    assert draw.short_classes == {}
    permutation = np.random.default_rng(0).permutation(len(items))
    shuffled = fewshot_draw([items[i] for i in permutation], labels[permutation], 3, 0)
    assert {items[permutation[i]] for i in shuffled.support} == chosen
    # the documented rule, so other machines and versions can reproduce the draw
    class0 = sorted(items[:12], key=lambda s: hashlib.sha256(f"bench-fewshot/3/0/{s}".encode())
                    .hexdigest())[:3]
    assert set(class0) <= chosen
    other = fewshot_draw(items, labels, shots=3, draw=1)
    assert {items[i] for i in other.support} != chosen


def test_fewshot_takes_all_of_a_short_class_and_says_so():
    items, labels = names_and_labels()
    keep = [i for i in range(48) if labels[i] != 2 or i % 12 < 2]  # class 2 keeps 2 images
    items, labels = [items[i] for i in keep], labels[keep]
    draw = fewshot_draw(items, labels, shots=4, draw=0)
    assert np.bincount(labels[draw.support]).tolist() == [4, 4, 2, 4]
    assert draw.short_classes == {2: 2}
    x = np.random.default_rng(0).normal(size=(len(items), 4)).astype(np.float32)
    cfg = ProbeConfig(lrs=(1e-2,), weight_decays=(0.0,), epochs=2, eval_every=1)
    with pytest.warns(UserWarning, match="1 classes have fewer than 4"):
        fit_fewshot({"train": x, "test": x}, {"train": labels, "test": labels}, items, 4, cfg,
                    shots=[4], draws=1)


def test_fewshot_probe_agrees_with_a_logistic_regression_reference():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(1400, 20, 5, seed=5, spread=2.5)
    train, test = slice(0, 600), slice(600, None)
    items = [f"img{i:04d}.png" for i in range(600)]
    shots, draws = 8, 3
    ours = fit_fewshot({"train": x[train], "test": x[test]}, {"train": y[train], "test": y[test]},
                       items, 5, ProbeConfig(), shots=[shots], draws=draws).summaries[shots]
    reference = []
    for d in range(draws):
        split = fewshot_draw(items, y[train], shots, d)
        scaler = StandardScaler().fit(x[train][split.support])
        fits = [LogisticRegression(C=c, max_iter=2000).fit(
            scaler.transform(x[train][split.support]), y[train][split.support])
            for c in np.logspace(-3, 3, 13)]
        best = max(fits, key=lambda m: m.score(scaler.transform(x[train][split.rest]),
                                               y[train][split.rest]))
        reference.append(100 * best.score(scaler.transform(x[test]), y[test]))
    assert len(ours.draws) == draws and ours.std["top1"] > 0
    assert ours.mean["top1"] == pytest.approx(np.mean(reference), abs=4.0)
    assert 40.0 < ours.mean["top1"] < 99.0  # a problem where few-shot is neither hopeless nor trivial
