"""Weighted kNN against scikit-learn references, and few-shot draws and probes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bench.heads import knn
from bench.heads.fewshot import FewShotConfig, fewshot_draw, fit_fewshot
from bench.heads.knn import KnnConfig, KnnTrainer, knn_scores, knn_top5
from bench.precision import FP32
from bench.protocol import ProbeData, evaluate


def blobs(n: int, dim: int, classes: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    return (centres[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several bank and query chunks so the chunked path (each query's running k best
    merged across bank chunks) is what gets tested."""
    monkeypatch.setattr(knn, "BANK_ROWS", 64)
    monkeypatch.setattr(knn, "QUERY_ROWS", 16)


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


def test_uniform_knn_on_digits_selects_and_tests_as_scikit_learn_with_ties_to_the_lower_id():
    """The whole protocol with one-vote kNN (many tied votes): k chosen on val and the logged
    test metrics, confusion matrix and top-1 equal scikit-learn's KNeighborsClassifier."""
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(y))
    parts = {"train": order[:1000], "val": order[1000:1300], "test": order[1300:]}
    cfg = KnnConfig(ks=(10, 20, 50), weighting="uniform")
    result = evaluate(KnnTrainer(cfg, "cpu", FP32), ProbeData(
        {s: x[i] for s, i in parts.items()}, {s: y[i] for s, i in parts.items()}, 10))

    def reference(bank, query, k):
        model = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
        return model.fit(x[bank], y[bank]).predict(x[query])

    val = {k: 100 * np.mean(reference(parts["train"], parts["val"], k) == y[parts["val"]])
           for k in cfg.ks}
    assert [g["top1"] for g in result.grid] == pytest.approx([val[k] for k in cfg.ks])
    best = max(cfg.ks, key=lambda k: (val[k], -k))  # first maximum
    assert result.best == {"k": best}
    predicted = reference(np.concatenate([parts["train"], parts["val"]]), parts["test"], best)
    assert np.array_equal(result.predictions.predicted, predicted)
    assert result.test["top1"] == pytest.approx(100 * np.mean(predicted == y[parts["test"]]))
    assert np.trace(result.confusion) == np.sum(predicted == y[parts["test"]])


def test_k_is_capped_by_the_bank_and_bad_inputs_are_refused():
    bank, bank_y = blobs(30, 8, 3, seed=4)
    assert sorted(knn_top5(bank, bank_y, bank[:5], 3, [10, 50, 100])) == [10, 30]
    with pytest.raises(ValueError, match="3 features but 2 labels"):
        knn_top5(bank[:3], bank_y[:2], bank[:1], 3, [1])
    with pytest.raises(ValueError, match="unknown kNN weighting"):
        KnnConfig(weighting="distance")


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
    cfg = FewShotConfig(lrs=(1e-2,), weight_decays=(0.0,), epochs=2, eval_every=1)
    with pytest.warns(UserWarning, match="1 classes have fewer than 4"):
        fit_fewshot({"train": x, "test": x}, {"train": labels, "test": labels}, items, 4, cfg,
                    shots=[4], draws=1)


def clip_benchmark_linear_probe(x, y, support, rest, test) -> float:
    """CLIP_benchmark's convention, from its definition: L2-normalised features, multinomial
    logistic regression, the regularisation chosen on held-out images (here the rest of train)."""
    from sklearn.linear_model import LogisticRegression

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    fits = [LogisticRegression(C=c, max_iter=1000).fit(unit[support], y[support])
            for c in np.logspace(-2, 4, 7)]
    best = max(fits, key=lambda m: m.score(unit[rest], y[rest]))
    return 100 * best.score(unit[test], y[test])


def test_one_shot_probe_is_within_one_and_a_half_points_of_clip_benchmarks_convention():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 32))
    y = rng.integers(0, 10, 1200)
    x = (centres[y] + 1.3 * rng.normal(size=(1200, 32))).astype(np.float32)
    items = [f"img{i:04d}.png" for i in range(600)]
    draws = 5
    ours = fit_fewshot({"train": x[:600], "test": x[600:]}, {"train": y[:600], "test": y[600:]},
                       items, 10, shots=[1], draws=draws).summaries[1]
    reference = []
    for d in range(draws):  # the same supports
        split = fewshot_draw(items, y[:600], 1, d)
        reference.append(clip_benchmark_linear_probe(x, y, split.support, split.rest,
                                                     np.arange(600, 1200)))
    assert ours.mean["top1"] == pytest.approx(np.mean(reference), abs=1.5)
    assert 40.0 < ours.mean["top1"] < 95.0  # neither hopeless nor trivial
