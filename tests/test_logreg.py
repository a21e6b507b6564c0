"""``--head logreg``: CLIP's L-BFGS logistic-regression probe against scikit-learn, its search
against CLIP_benchmark's, streamed rows against resident ones, and its settings' errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.errors import UsageError
from bench.heads import logreg
from bench.heads.logreg import LogRegConfig, LogRegTrainer, fit_logreg, search_cs
from bench.protocol import ProbeData

from .test_engine import _digit_features


def objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, c: float) -> float:
    """scikit-learn's lbfgs objective in its mean form, in float64."""
    z = x.astype(np.float64) @ w.astype(np.float64).T + b
    z -= z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean() + (w.astype(np.float64) ** 2).sum()
                 / (2 * c * len(y)))


def solve(feats, labels, classes, cs, **settings):
    """Our weights (W, b) for each C, from one batched round (no refinement)."""
    trainer = LogRegTrainer(LogRegConfig(cs=tuple(cs), refinements=0, **settings))
    trainer.search(ProbeData(feats, labels, classes))
    [(solved, solution)] = trainer.solutions
    return {c: (t[:, :-1].numpy(), t[:, -1].numpy()) for c, t in zip(solved, solution.theta)}


def assert_agrees_with_sklearn(feats, labels, classes, cs, tol):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    ours = solve(feats, labels, classes, cs, tol=tol)
    x, y = feats["train"], labels["train"]
    for c in cs:
        with threadpool_limits(1):  # two cores shared: threads only contend
            model = LogisticRegression(C=c, tol=tol, max_iter=1000).fit(x, y)
        w, b = ours[c]
        f_ours, f_sklearn = objective(x, y, w, b, c), objective(x, y, model.coef_,
                                                               model.intercept_, c)
        assert abs(f_ours - f_sklearn) <= 1e-3 * f_sklearn, (c, f_ours, f_sklearn)
        for split in ("val", "test"):
            ours_top1 = 100 * np.mean((feats[split] @ w.T + b).argmax(1) == labels[split])
            sklearn_top1 = 100 * model.score(feats[split], labels[split])
            assert abs(ours_top1 - sklearn_top1) <= 0.2, (c, split, ours_top1, sklearn_top1)


def test_each_c_agrees_with_scikit_learn_lbfgs_on_digits():
    _, feats, labels = _digit_features()
    # scikit-learn's default tol where the regularisation binds; from C = 1 on the digit pixels are
    # nearly separable and the loss is flat where both stop on tol=1e-4 (two different test
    # images at C = 1), so both solve tighter there
    assert_agrees_with_sklearn(feats, labels, 10, [1e-4, 1e-2], tol=1e-4)
    assert_agrees_with_sklearn(feats, labels, 10, [1.0], tol=1e-5)


def test_each_c_agrees_with_scikit_learn_lbfgs_on_the_synthetic_10k_set():
    from benchmarks.probe_speed import synthetic_features

    full, full_labels, classes = synthetic_features(10000, 512, 100)
    rows = {"train": 2000, "val": 1000, "test": 1000}  # a subsample: seconds, not minutes
    feats = {s: full[s][:n] for s, n in rows.items()}
    labels = {s: full_labels[s][:n] for s, n in rows.items()}
    assert_agrees_with_sklearn(feats, labels, classes, [1e-4, 1e-2, 1e-1], tol=1e-4)
    assert_agrees_with_sklearn(feats, labels, classes, [1.0], tol=1e-5)  # 2,000 rows: separable


def test_batched_points_solve_as_each_alone():
    """Per-point curvature pairs, steps and stops: a point solved beside others reaches the
    objective it reaches alone, and stops on its own criterion."""
    _, feats, labels = _digit_features()
    cs = (1e-3, 1e-2, 1e-1)
    together = LogRegTrainer(LogRegConfig(cs=cs, refinements=0))
    together.search(ProbeData(feats, labels, 10))
    [(_, batched)] = together.solutions
    assert batched.converged == [True] * 3 and len(set(batched.iterations)) == 3
    for g, c in enumerate(cs):
        alone = LogRegTrainer(LogRegConfig(cs=(c,), refinements=0))
        alone.search(ProbeData(feats, labels, 10))
        [(_, solution)] = alone.solutions
        assert solution.converged == [True]
        # float32 GEMMs of another width round differently: a few iterations either way
        assert abs(solution.iterations[0] - batched.iterations[g]) <= 0.1 * batched.iterations[g]
        np.testing.assert_allclose(solution.loss[0].item(), batched.loss[g].item(), rtol=1e-4)


def clip_benchmark_search(score) -> set[float]:
    """CLIP_benchmark's find_peak search (its linear probe, after CLIP's appendix A.3), run over
    CLIP's 97 values 10^(k/8), k = -48..48 (CLIP_benchmark's own are 97 weight decays over
    1e-6..1e2), written over C ascending: 7 values 1e-6, 1e-4, ..., 1e6, then the best's
    neighbours at 8, 4, 2, 1 steps; the first maximum wins."""
    grid = [10 ** (k / 8) for k in range(-48, 49)]
    visited = set()

    def find_peak(indices):
        visited.update(indices)
        return max(indices, key=lambda i: (score(grid[i]), -i))

    peak = find_peak(list(range(0, 97, 16)))
    for span in (8, 4, 2, 1):
        peak = find_peak([max(peak - span, 0), peak, min(peak + span, 96)])
    return {grid[i] for i in visited}


@pytest.mark.parametrize("best_log_c", [-3.3, 0.6, 5.9, -6.0])
def test_the_search_visits_clip_benchmarks_c_values(best_log_c):
    def score(c: float) -> float:  # unimodal in log C, no ties
        return -abs(math.log10(c) - best_log_c)

    rounds = []

    def solve_round(cs, starts):
        rounds.append(list(zip(cs, starts)))
        return [{"C": c, "top1": score(c)} for c in cs]

    records = search_cs(LogRegConfig().cs, 4, "top1", solve_round)
    expected = clip_benchmark_search(score)
    assert len(records) == len(expected)
    for record, c in zip(records, sorted(expected)):
        assert record["C"] == pytest.approx(c, rel=1e-9)
    assert all(start is None for _, start in rounds[0])
    for later in rounds[1:]:  # each refinement starts from its smaller solved neighbour
        for c, start in later:
            assert start is not None and start < c and any(
                r["C"] == start for r in records)


def test_warm_started_refinements_reach_the_cold_solution_in_fewer_iterations():
    _, feats, labels = _digit_features()
    trainer = LogRegTrainer(LogRegConfig(cs=(1e-3, 1e-1, 10.0), refinements=1))
    trainer.search(ProbeData(feats, labels, 10))
    [_, (refined, warm)] = trainer.solutions
    cold = LogRegTrainer(LogRegConfig(cs=tuple(refined), refinements=0))
    cold.search(ProbeData(feats, labels, 10))
    [(_, cold_solution)] = cold.solutions
    np.testing.assert_allclose(warm.loss.numpy(), cold_solution.loss.numpy(), rtol=1e-3)
    assert sum(warm.iterations) < sum(cold_solution.iterations), (
        warm.iterations, cold_solution.iterations)


def test_streamed_rows_give_the_numbers_of_resident_rows(monkeypatch):
    """A split over the memory budget is read chunk by chunk from its (memory-mapped) shards
    at every pass; the chunks are the same, so every number is identical."""
    from bench.features.cache import ShardedArray

    monkeypatch.setattr(logreg, "CHUNK", 200)  # several chunks per split
    _, feats, labels = _digit_features()
    read = []

    class Shards(ShardedArray):
        def take(self, indices, *args, **kwargs):
            read.append(len(indices))
            return super().take(indices, *args, **kwargs)

    sharded = {s: Shards([x[i : i + 300] for i in range(0, len(x), 300)], 300)
               for s, x in feats.items()}
    cfg = LogRegConfig(cs=(1e-2, 1.0), refinements=1, normalisation="standardise")
    results = []
    # one chunk of the rows trained on (streamed) and one of the split scored beside them
    for features, budget in ((feats, None), (sharded, 2 * 4 * 200 * 193)):
        trainer = LogRegTrainer(cfg)
        data = ProbeData(features, labels, 10, memory_budget=budget)
        results.append((trainer.search(data), trainer.refit_predict(data, {"C": 1.0})))
    (resident_grid, resident_test), (streamed_grid, streamed_test) = results
    assert streamed_grid == resident_grid
    assert torch.equal(streamed_test, resident_test)
    passes = sum(s.passes for _, s in trainer.solutions)
    assert max(read) <= 200 and len(read) > passes * math.ceil(len(feats["train"]) / 200)


def test_a_budget_below_one_chunk_is_refused_in_one_line():
    _, feats, labels = _digit_features()
    # one chunk of train and one of val (the one memory policy: bench.heads.memory), summed
    with pytest.raises(UsageError, match=r"memory budget 1\.0 kB is below one logistic-regression "
                       r"chunk \(1,295 rows x 193 numbers x 4 B = 999\.7 kB, train\) \+ one "
                       r"logistic-regression chunk \(143 rows x 193 numbers x 4 B = 110\.4 kB, "
                       r"val\) = 1\.1 MB; another phase of the head needs 1\.4 MB: give --memory-budget 1\.4MB "
                       r"or more \(or auto\)$"):
        LogRegTrainer(LogRegConfig()).search(ProbeData(feats, labels, 10, memory_budget=1000))


def test_train_within_the_budget_is_read_once_and_val_streams_beside_it(monkeypatch):
    monkeypatch.setattr(logreg, "CHUNK", 50)  # val (143 rows) streams in chunks smaller than it
    _, feats, labels = _digit_features()
    calls = {s: 0 for s in feats}

    def counted(split):
        class Counted(np.ndarray):
            def __getitem__(self, key):
                calls[split] += 1
                return super().__getitem__(key)
        return Counted

    features = {s: x.view(counted(s)) for s, x in feats.items()}
    train_bytes = 4 * len(feats["train"]) * (feats["train"].shape[1] + 1)
    train_bytes += 4 * 50 * (feats["val"].shape[1] + 1)  # one chunk of val beside it
    trainer = LogRegTrainer(LogRegConfig(cs=(1e-2, 1.0), refinements=1))
    trainer.search(ProbeData(features, labels, 10, memory_budget=train_bytes))
    assert calls["train"] == math.ceil(len(feats["train"]) / logreg.CHUNK)  # once, kept
    assert sum(s.passes for _, s in trainer.solutions) > 5
    # no room left: read (chunk by chunk) at each round's scoring
    assert calls["val"] == len(trainer.solutions) * math.ceil(len(feats["val"]) / logreg.CHUNK)


def test_the_head_selects_on_val_and_beats_chance_through_evaluate():
    _, feats, labels = _digit_features()
    result = fit_logreg(feats, labels, 10)
    assert result.test["top1"] > 93
    best = max(r["top1"] for r in result.grid)
    assert result.val["top1"] == best and result.best["C"] == min(
        r["C"] for r in result.grid if r["top1"] == best)
    assert len(result.grid) == 7 + 8  # CLIP's 7 values, then 4 rounds of 2


@pytest.mark.parametrize("settings, message", [
    ({"cs": []}, "the C grid (cs) is empty"),
    ({"cs": [1.0, 0.0]}, "cs value 0.0 is out of range: it must be a finite number > 0"),
    ({"cs": [-1]}, "cs value -1 is out of range"),
    ({"max_iter": 0}, "max_iter=0 is out of range: it must be an integer >= 1"),
    ({"tol": 0}, "tol=0 is out of range"),
    ({"refinements": -1}, "refinements=-1 is out of range: it must be an integer >= 0"),
    ({"normalisation": "pca"}, "normalisation 'pca': use one of none, standardise, l2"),
    ({"lrs": [0.1]}, "head 'logreg' has no setting lrs"),
])
def test_bad_settings_are_one_line_usage_errors(settings, message):
    from bench.run.spec import RunSpec, head_config

    with pytest.raises(UsageError) as error:
        head_config(RunSpec(backbone="pixels", task="digits", head="logreg", head_args=settings))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cli_refuses_a_bad_c_and_grid_flags_in_one_line(capsys):
    from bench.cli import main

    assert main(["run", "--backbone", "pixels", "--task", "digits", "--head", "logreg",
                 "--probe-arg", "cs=[0.1,-1]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cs value -1 is out of range" in err and "\n" not in err
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--head", "logreg",
                 "--lrs", "0.1"]) == 2
    assert "--lrs does not apply to head 'logreg'" in capsys.readouterr().err


def test_run_logs_a_logreg_record_under_its_own_protocol():
    from bench.api import run
    from bench.protocol import protocols
    from bench.run.spec import RunOptions, RunSpec

    from .conftest import records

    [record] = run(RunSpec(backbone="pixels", task="digits", head="logreg"),
                   RunOptions(workers=0, progress=False))
    assert record.name.endswith("/logreg") and set(record.best) == {"C"}
    assert record.metrics["test_top1"] > 90
    [logged] = records("bench")
    assert logged.run_id == record.run_id and logged.head == "logreg"
    assert protocols()["logreg"] == ("logreg",) and "logreg" not in protocols()["linear"]
