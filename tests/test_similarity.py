"""Similarity measures against published values and from-definition references; the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.errors import UsageError
from bench.heads.similarity import (Measure, as_points, gram_inner_products, interval, matrix, pair,
                              permutation_null)



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These matrices are tiny: on a shared 2-core machine, torch's second thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kornblith_inputs():
    """Kornblith's CKA notebook: np.random.seed(1337); X first, then Y = randn + X."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


# --- from-definition references (independent of bench.heads.similarity) ----------------------------
def centred_gram(gram: np.ndarray, unbiased: bool) -> np.ndarray:
    n = len(gram)
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return h @ gram @ h
    g = gram.copy()
    np.fill_diagonal(g, 0)
    row = g.sum(1) / (n - 2)
    total = g.sum() / ((n - 1) * (n - 2))
    u = g - row[:, None] - row[None, :] + total
    np.fill_diagonal(u, 0)
    return u


def reference_cka(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    a, b = centred_gram(x @ x.T, unbiased), centred_gram(y @ y.T, unbiased)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def knn_sets(x: np.ndarray, k: int) -> list[set[int]]:
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    sets = []
    for i in range(len(z)):
        sims = [(float(z[i] @ z[j]), j) for j in range(len(z)) if j != i]
        sets.append({j for _, j in sorted(sims, reverse=True)[:k]})
    return sets


def reference_mknn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Huh et al. 2024: mean over images of the share of k neighbours both spaces agree on."""
    return float(np.mean([len(a & b) / k for a, b in zip(knn_sets(x, k), knn_sets(y, k))]))


def hsic_unbiased_loops(kx: np.ndarray, ky: np.ndarray) -> float:
    """Song et al. (2012), term by term with explicit sums."""
    n = len(kx)
    kt, lt = kx.copy(), ky.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    trace = sum(kt[i, j] * lt[j, i] for i in range(n) for j in range(n))
    ones = np.ones(n)
    return (trace + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (ones @ kt @ lt @ ones)) / (n * (n - 3))


def reference_cknna(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """CKNNA (Huh et al. 2024): unbiased HSIC of the cosine kernels kept where j is among i's k
    nearest neighbours in both spaces, normalised by each space with itself."""
    zx = x / np.linalg.norm(x, axis=1, keepdims=True)
    zy = y / np.linalg.norm(y, axis=1, keepdims=True)
    kx, ky = zx @ zx.T, zy @ zy.T

    def mask(sets_a, sets_b):
        m = np.zeros((len(x), len(x)))
        for i, (a, b) in enumerate(zip(sets_a, sets_b)):
            for j in a & b:
                m[i, j] = 1
        return m

    sx, sy = knn_sets(x, k), knn_sets(y, k)
    both = mask(sx, sy)
    cross = hsic_unbiased_loops(both * kx, both * ky)
    return cross / np.sqrt(hsic_unbiased_loops(mask(sx, sx) * kx, kx * mask(sx, sx))
                           * hsic_unbiased_loops(mask(sy, sy) * ky, ky * mask(sy, sy)))


# --- estimators -----------------------------------------------------------------------------
def test_kornblith_published_values():
    x, y = kornblith_inputs()
    assert pair(Measure("cka"), x, y) == pytest.approx(0.55761, abs=5e-6)
    assert pair(Measure("cka-rbf", rbf_threshold=0.5), x, y) == pytest.approx(0.65483, abs=5e-6)
    assert pair(Measure("cka-debiased"), x, y) == pytest.approx(0.51346, abs=5e-6)


@pytest.mark.parametrize("name", ["cka", "cka-debiased", "cka-rbf", "mknn", "cknna"])
def test_identical_inputs_give_one_and_transforms_change_nothing(name):
    x, y = kornblith_inputs()
    measure = Measure(name, k=5)
    assert pair(measure, x, x) == pytest.approx(1.0, abs=1e-12)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((10, 10)))
    base = pair(measure, x, y)
    assert pair(measure, x @ rotation, 3.5 * y) == pytest.approx(base, abs=1e-10)


def test_independent_gaussians_debiased_near_zero_biased_inflated_and_null_not_significant():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((100, 400)), rng.standard_normal((100, 400))
    assert pair(Measure("cka"), x, y) > 0.7  # inflated at d/n = 4
    assert abs(pair(Measure("cka-debiased"), x, y)) < 0.03
    rows, cols = as_points([x]), as_points([y])
    measure = Measure()
    observed = matrix(measure, rows, cols)
    null = permutation_null(measure, rows, cols, observed, 39, seed=1)
    assert float(null.p[0, 0]) > 0.05
    assert abs(float(null.mean[0, 0])) < 0.01


def test_null_p_counts_exceedances_over_the_same_permutations():
    x, y = kornblith_inputs()
    rows, cols = as_points([x, y]), as_points([y, x])
    measure = Measure("cka")
    observed = matrix(measure, rows, cols)
    null = permutation_null(measure, rows, cols, observed, 19, seed=3)
    assert torch.allclose(null.p, torch.full_like(null.p, 1 / 20))  # real signal: none exceed
    rng = np.random.default_rng(3)  # the same permutations, one cell at a time
    values = [reference_cka(x, y[rng.permutation(100)], False) for _ in range(19)]
    assert float(null.mean[0, 0]) == pytest.approx(np.mean(values), abs=1e-12)


def test_all_pairs_at_once_equal_pair_by_pair_in_both_forms():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((40, 6))
    points = [base @ rng.standard_normal((6, d)) + 0.5 * rng.standard_normal((40, d))
              for d in (5, 30, 80)]  # d < n and d > n
    tensors = as_points(points)
    centred = [t - t.mean(0) for t in tensors]
    assert torch.allclose(gram_inner_products(centred, centred, "features"),
                          gram_inner_products(centred, centred, "gram"), rtol=1e-12)
    for name, unbiased in (("cka", False), ("cka-debiased", True)):
        got = matrix(Measure(name), tensors, tensors[:2]).numpy()
        want = [[reference_cka(a, b, unbiased) for b in points[:2]] for a in points]
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_minibatch_is_debiased_with_one_batch_and_sums_equal_batches():
    x, y = kornblith_inputs()
    one = pair(Measure("cka-minibatch", batch_size=100), x, y)
    assert one == pytest.approx(pair(Measure("cka-debiased"), x, y), abs=1e-12)
    rows, cols = as_points([x]), as_points([y])
    got = float(matrix(Measure("cka-minibatch", batch_size=30), rows, cols)[0, 0])

    def hsic(a, b):  # U-centred Gram product, the same constant for every batch
        return (centred_gram(a @ a.T, True) * centred_gram(b @ b.T, True)).sum()

    batches = [slice(i, i + 30) for i in (0, 30, 60)]  # 3 equal batches, last 10 images left out
    cross = sum(hsic(x[b], y[b]) for b in batches)
    want = cross / np.sqrt(sum(hsic(x[b], x[b]) for b in batches)
                           * sum(hsic(y[b], y[b]) for b in batches))
    assert got == pytest.approx(want, abs=1e-12)


def test_mutual_knn_and_cknna_equal_the_papers_definitions():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 6))
    y = x @ rng.standard_normal((6, 4)) + 0.8 * rng.standard_normal((30, 4))
    z = rng.standard_normal((30, 5))
    rows, cols = as_points([x, z]), as_points([y, x])
    got_mknn = matrix(Measure("mknn", k=4), rows, cols).numpy()
    got_cknna = matrix(Measure("cknna", k=4), rows, cols).numpy()
    for i, a in enumerate((x, z)):
        for j, b in enumerate((y, x)):
            assert got_mknn[i, j] == pytest.approx(reference_mknn(a, b, 4), abs=1e-12)
            assert got_cknna[i, j] == pytest.approx(reference_cknna(a, b, 4), abs=1e-9)


@pytest.mark.parametrize("method", ["jackknife", "subsample"])
def test_intervals_hold_the_value_and_narrow_with_more_images(method):
    rng = np.random.default_rng(4)
    widths = []
    for n in (60, 600):
        x = rng.standard_normal((n, 8))
        y = x[:, :4] + rng.standard_normal((n, 4))
        rows, cols = as_points([x]), as_points([y])
        observed = matrix(Measure(), rows, cols)
        ci = interval(Measure(), rows, cols, observed, method, 20, seed=0)
        assert float(ci.low[0, 0]) < float(observed[0, 0]) < float(ci.high[0, 0])
        widths.append(float(ci.high[0, 0] - ci.low[0, 0]))
    assert widths[1] < widths[0] / 2


# --- the command ----------------------------------------------------------------------------
def test_layer_specs_expand_ranges_timesteps_and_globs():
    from bench.backbone import MAP, FeaturePoint
    from bench.run.similarity_run import expand_layers

    class Vit:  # only what expand_layers reads: the layer names
        name = "vit"

        def feature_points(self):
            return [FeaturePoint(f"blocks.{i}", MAP) for i in range(12)] + [FeaturePoint("cls", MAP)]

    vit = Vit()
    assert expand_layers(vit, ["blocks.*"]) == [f"blocks.{i}" for i in range(12)]
    assert expand_layers(vit, ["blocks.1?", "cls"]) == ["blocks.10", "blocks.11", "cls"]
    blocks = expand_layers(vit, ["block1..37@t90"])
    assert len(blocks) == 37 and blocks[0] == "block1@t90" and blocks[-1] == "block37@t90"
    steps = expand_layers(vit, ["block24@t0..999:25"])
    assert len(steps) == 40 and steps[:2] == ["block24@t0", "block24@t25"]
    assert steps[-1] == "block24@t975"
    assert expand_layers(vit, ["block1..2@t0..10:10"]) == [
        "block1@t0", "block1@t10", "block2@t0", "block2@t10"]
    with pytest.raises(UsageError, match="matches none"):
        expand_layers(vit, ["stages.*"])


def test_image_mismatch_names_the_first_differing_item():
    from bench.run.similarity_run import check_items

    check_items(["a", "b"], ["a", "b"], ("x", "y"))
    with pytest.raises(UsageError, match="image 1 is 'b' on one side and 'c'"):
        check_items(["a", "b", "d"], ["a", "c", "d"], ("x", "y"))
    with pytest.raises(UsageError, match="image 2 \\('d'\\) is on one side only"):
        check_items(["a", "b", "d"], ["a", "b"], ("x", "y"))


def test_cli_writes_matrix_and_heatmaps_reuses_and_supersedes(tmp_path, capsys):
    from bench.cli import main
    from bench.results.matrices import find_similarity
    from bench.results.store import ensure_experiment

    argv = ["similarity", "--backbone", "pixels", "--pool", "1,2", "--task", "digits", "--n",
            "48", "--against", "random-unet", "--against-layers", "down1,mid", "--against-pool",
            "1", "--permutations", "9", "--interval-draws", "4", "--workers", "0",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 x 2 points, n = 48 images" in out and "permutation null (9 permutations)" in out
    folder = next((tmp_path / "results" / "similarity").iterdir())
    assert {"matrix.png", "matrix.csv", "similarity.json"} <= {p.name for p in folder.iterdir()}
    assert (folder / "matrix.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((folder / "similarity.json").read_text())
    assert [p["d"] for p in saved["rows"]] == [3, 12]
    assert saved["protocol"]["measure"]["measure"] == "cka-debiased"
    lines = (folder / "matrix.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[1].startswith('"pixels:image/1","random-unet:down1/1"')
    experiment = ensure_experiment("bench")
    [first] = find_similarity(experiment)

    assert main(argv) == 0  # the same identity: reused, nothing recomputed
    assert "already logged: reused" in capsys.readouterr().out
    assert main([*argv[:-4], "19", *argv[-3:]]) == 0  # another null: same slot, new identity
    [second] = find_similarity(experiment)
    assert second.identity != first.identity


def test_timestep_matrix_draws_the_papers_panels_and_noise_spread(tmp_path):
    from bench.api import similarity
    from bench.run.similarity_run import Side, SimilaritySpec
    from bench.run.spec import RunOptions

    spec = SimilaritySpec(Side("diffusion-tiny", ["block23..24@t90", "block23..24@t300"], ["1"]),
                          "digits", n=8, permutations=0, interval="none", noise_draws=2)
    result = similarity(spec, RunOptions(workers=0, progress=False))
    assert {"blocks.png", "timesteps.png", "matrix.png"} <= set(result.files)
    assert result.spread.shape == (4, 4) and result.protocol["noise_seeds"] == [[0, 1]]
    assert np.allclose(np.diag(result.values), 1)


def test_a_subset_reads_the_whole_splits_cached_features(tmp_path):
    from bench.api import similarity
    from bench.run.similarity_run import Side, SimilaritySpec
    from bench.run.spec import RunOptions

    options = RunOptions(workers=0, progress=False)
    spec = SimilaritySpec(Side("pixels", pools=["1", "2"]), "digits", permutations=0,
                          interval="none", measure=Measure("cka"))
    whole = similarity(spec, options)  # every val image: the entries a probe would read
    cache = tmp_path / "results" / "cache"
    entries = sorted(cache.glob("??/*/manifest.json"))
    spec.n = 50
    part = similarity(spec, options)
    assert sorted(cache.glob("??/*/manifest.json")) == entries  # nothing extracted again
    assert part.n == 50 and whole.n > 50 and part.identity != whole.identity
    one, two = whole.protocol["sides"][0]["features"], part.protocol["sides"][0]["features"]
    assert one == two == [["image", "1"], ["image", "2"]]


def test_constant_features_are_refused_with_the_reason(tmp_path, capsys):
    """Issue 31 item 11: a feature point that is the same for every image has no defined
    similarity: refused in one line naming it, and no run is logged (no NaN matrix)."""
    from PIL import Image

    from bench.cli import main
    from bench.results.matrices import find_similarity
    from bench.results.store import ensure_experiment

    for k in range(2):
        (tmp_path / "same" / f"c{k}").mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8, 8), (90, 90, 90)).save(tmp_path / "same" / f"c{k}" / f"{i}.png")
    argv = ["similarity", "--backbone", "pixels", "--pool", "1,2", "--task",
            f"folder:{tmp_path / 'same'}", "--split", "train", "--permutations", "0",
            "--interval", "none", "--workers", "0", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "feature point pixels image/1 is the same for all" in err and err.count("\n") == 1
    assert find_similarity(ensure_experiment("bench")) == []


def test_a_matrix_run_describes_itself(tmp_path, capsys):
    """Its MLflow description says what it is, not a result's "nan (val nan)"."""
    from bench.cli import main
    from bench.results import record as names
    from bench.results.matrices import find_similarity
    from bench.results.store import client, ensure_experiment

    assert main(["similarity", "--backbone", "pixels", "--pool", "1,2", "--task", "digits",
                 "--n", "48", "--permutations", "0", "--interval", "none", "--workers", "0",
                 "--no-progress"]) == 0
    [found] = find_similarity(ensure_experiment("bench"))
    note = client().get_run(found.run_id).data.tags[names.NOTE]
    assert "nan" not in note and note.startswith("cka-debiased, 2 x 2 points, n = 48 images, mean")


def test_a_logged_matrix_never_names_where_its_files_go(tmp_path):
    """The identity and file names inside a logged run are data, not paths: a run whose
    similarity.json names another identity (say "../../evil") is refused, nothing written."""
    from dataclasses import replace

    from bench.api import similarity
    from bench.errors import BenchError
    from bench.results.matrices import find_similarity
    from bench.results.runs import log_record
    from bench.results.store import ensure_experiment
    from bench.run.similarity_run import ARTIFACT, Side, SimilaritySpec, logged
    from bench.run.spec import RunOptions

    options = RunOptions(workers=0, progress=False)
    spec = SimilaritySpec(Side("pixels", pools=["1", "2"]), "digits", n=48, permutations=0,
                          interval="none")
    first = similarity(spec, options)
    data = json.loads(first.files[ARTIFACT].read_bytes())
    [record] = find_similarity(ensure_experiment("bench"), first.identity)
    forged = log_record(ensure_experiment("bench"), replace(record, run_id=None),
                        {ARTIFACT: json.dumps(data | {"identity": "../../../evil"}).encode()})
    with pytest.raises(BenchError, match="names identity '../../../evil'"):
        logged(replace(record, run_id=forged))
    assert not (tmp_path / "evil").exists() and not (tmp_path / "results" / "evil").exists()
