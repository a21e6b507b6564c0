"""The engine on real offline data (digits) and the pixels control: cache, extraction, probes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import bench
from bench.features.cache import FeatureCache
from bench.features.extract import extract
from bench.precision import resolve_precision
from bench.heads.probe import ProbeConfig, fit_probe
from bench.errors import UsageError
from bench.registry import UnknownNameError
from bench.task import CorruptImageError, DatasetError, Split, holdout_split

from .conftest import REPO

CPU = torch.device("cpu")


def _extract(split_name="train", cache_dir=None, **kw):
    task = bench.create_task("digits")
    backbone = bench.create_backbone("pixels", size=8)
    cache = FeatureCache(cache_dir)
    report = extract(backbone, task.split(split_name), [("image", "8")], cache, task.config,
                     device=CPU, progress=False, **kw)
    return report, report.entries[("image", "8")]


def _digit_features(size: int = 8):
    task = bench.create_task("digits")
    feats, labels = {}, {}
    for s in ("train", "val", "test"):
        report, entry = _extract(s)
        x, y, keep = entry.load()
        feats[s], labels[s] = x, y
    return task, feats, labels


def test_registry_lists_creates_and_suggests():
    assert "pixels" in bench.list_backbones() and "digits" in bench.list_tasks()
    assert bench.list_backbones("pix*") == ["pixels"]
    assert bench.create_backbone("pixels", size=4).input_size == 4
    with pytest.raises(UnknownNameError, match="Did you mean pixels"):
        bench.create_backbone("pixel")
    with pytest.raises(UsageError, match="takes no ':ARG'"):
        bench.create_task("digits:foo")


def test_second_identical_extraction_computes_nothing(tmp_path):
    first, entry = _extract(shard_size=256)
    assert first.images_processed == 1295 and first.shards_written == 6
    stamps = {p: p.stat().st_mtime_ns for p in entry.path.glob("shard-*.npy")}
    second, again = _extract(shard_size=256)
    assert (second.images_processed, second.shards_written) == (0, 0)
    assert again.key == entry.key
    assert stamps == {p: p.stat().st_mtime_ns for p in again.path.glob("shard-*.npy")}


def test_cache_key_covers_what_changes_features():
    task = bench.create_task("digits")
    backbone = bench.create_backbone("pixels", size=8)
    from bench.features.extract import entry_fields

    from bench.precision import resolve_precision

    fp32, bf16 = resolve_precision("fp32", "cpu"), resolve_precision("bf16", "cpu")
    base = entry_fields(backbone, task.config, task.split("train"), "image", "8", fp32)
    cache = FeatureCache()
    variants = [
        entry_fields(backbone, task.config, task.split("train"), "image", "4", fp32),
        entry_fields(backbone, task.config, task.split("val"), "image", "8", fp32),
        entry_fields(backbone, task.config, task.split("train"), "image", "8", bf16),
        entry_fields(bench.create_backbone("pixels", size=16), task.config, task.split("train"),
                     "image", "8", fp32),
        entry_fields(backbone, task.config, task.split("train").subset(range(10)), "image", "8",
                     fp32),
    ]
    keys = {cache.entry(f).key for f in [base, *variants]}
    assert len(keys) == 1 + len(variants)


SLOW_EXTRACTION = """
import sys, time
import bench
from bench.features.cache import FeatureCache
from bench.features.extract import extract
import torch
backbone = bench.create_backbone("pixels", size=8)
inner = backbone.forward_features
def slow(x, layers, sample_ids=None):
    time.sleep(0.2)
    return inner(x, layers, sample_ids)
backbone.forward_features = slow
task = bench.create_task("digits")
extract(backbone, task.split("train"), [("image", "8")], FeatureCache(sys.argv[1]), task.config,
        device=torch.device("cpu"), shard_size=128, batch_size=32, progress=False)
"""


def test_killed_extraction_resumes_to_identical_features(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_EXTRACTION)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline and not list(killed.glob("*/*/shard-00002.npy")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    entry_dir = next(killed.glob("*/*/manifest.json")).parent
    done_before = sorted(p.name for p in entry_dir.glob("shard-*.npy"))
    assert 3 <= len(done_before) < 11, done_before  # killed midway (11 shards in all)
    resumed, entry = _extract(cache_dir=killed, shard_size=128, batch_size=32)
    assert resumed.shards_written == 11 - len(done_before)  # finished shards are not redone
    _, clean = _extract(cache_dir=tmp_path / "clean", shard_size=128, batch_size=32)
    assert entry.key == clean.key
    np.testing.assert_array_equal(entry.load()[0], clean.load()[0])


def test_corrupt_image_stops_or_is_skipped_and_recorded(tmp_path):
    from PIL import Image

    def loader(i):
        if i == 3:
            raise CorruptImageError(f"img{i}.jpg", "truncated")
        return Image.new("RGB", (8, 8), color=(i, i, i))

    split = Split("train", list(range(10)), np.arange(10) % 2, loader)
    backbone = bench.create_backbone("pixels", size=8)
    cache = FeatureCache(tmp_path / "c")
    with pytest.raises(DatasetError, match="img3.jpg"):
        extract(backbone, split, [("image", "1")], cache, {"task": "t"}, device=CPU,
                progress=False)
    report = extract(backbone, split, [("image", "1")], cache, {"task": "t"}, device=CPU,
                     progress=False, skip_corrupt=True)
    assert report.skipped == ["3"]
    x, y, keep = report.entries[("image", "1")].load()
    assert keep.tolist() == [i != 3 for i in range(10)]
    assert np.allclose(x[5], 5 / 255, atol=1e-3)


def test_grid_probe_agrees_with_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    task, feats, labels = _digit_features()
    result = fit_probe(feats, labels, 10, ProbeConfig())
    best_c, best_val = None, -1.0
    scaler = StandardScaler().fit(feats["train"])
    for c in (1e-3, 1e-2, 1e-1, 1, 10, 100):
        model = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(feats["train"]),
                                                           labels["train"])
        val = model.score(scaler.transform(feats["val"]), labels["val"])
        if val > best_val:
            best_c, best_val = c, val
    x_all = np.concatenate([feats["train"], feats["val"]])
    y_all = np.concatenate([labels["train"], labels["val"]])
    scaler = StandardScaler().fit(x_all)
    model = LogisticRegression(C=best_c, max_iter=3000).fit(scaler.transform(x_all), y_all)
    sklearn_top1 = 100 * model.score(scaler.transform(feats["test"]), labels["test"])
    assert result.test["top1"] > 90
    assert abs(result.test["top1"] - sklearn_top1) <= 1.0, (result.test, sklearn_top1)
    # the default searches the 5 x 5 grid by successive halving: every point trains for the first
    # quarter of the epochs (checkpoints 2..10 of 40), fewer after
    counts = [sum(r["epochs"] == e for r in result.grid) for e in ProbeConfig().checkpoints()]
    assert counts[:5] == [25] * 5 and counts[-1] < 25, counts


def test_probe_is_deterministic_and_all_heads_train():
    task, feats, labels = _digit_features()
    small = dict(lrs=(1e-3, 1e-2), weight_decays=(0.0, 1e-3), epochs=10, eval_every=5,
                 halving=False)
    a = fit_probe(feats, labels, 10, ProbeConfig(**small))
    b = fit_probe(feats, labels, 10, ProbeConfig(**small))
    assert a.test == b.test and a.best == b.best
    for head in ("bn-linear", "mlp"):
        r = fit_probe(feats, labels, 10, ProbeConfig(head=head, hidden=64, **small))
        assert r.test["top1"] > 80, (head, r.test)
    assert a.confusion.sum() == len(labels["test"])
    assert np.isclose(np.nanmean(a.per_class), a.test["mean_per_class"], atol=1e-3)


def test_bad_probe_config_is_rejected():
    with pytest.raises(ValueError, match="builds linear, bn-linear, mlp, not 'svm'"):
        ProbeConfig(head="svm")


def test_holdout_is_stable_balanced_and_order_independent():
    items = [f"class{c}/img{i}.jpg" for c in range(5) for i in range(20)]
    labels = [c for c in range(5) for _ in range(20)]
    train, val = holdout_split(items, labels)
    perm = np.random.default_rng(0).permutation(len(items))
    train2, val2 = holdout_split([items[i] for i in perm], [labels[i] for i in perm])
    assert {items[i] for i in val} == {items[perm[i]] for i in val2}
    assert not set(train) & set(val) and len(train) + len(val) == len(items)
    assert np.bincount([labels[i] for i in val]).tolist() == [2] * 5


def test_run_logs_to_mlflow_and_leaderboard_reads_it_back(tmp_path):
    from bench.cli import main

    assert main(["run", "--backbone", "pixels", "--task", "digits", "--workers", "0",
                 "--backbone-arg", "size=8", "--pool", "8,4", "--epochs", "10",
                 "--no-progress"]) == 0
    from bench.results import leaderboard
    from .conftest import records

    runs = records()
    assert len(runs) == 2
    assert {r.pool for r in runs} == {"8", "4"}
    assert all(r.metrics["test_top1"] > 80 for r in runs)
    assert all(len(r.weights_sha256) == 64 for r in runs)
    board = leaderboard.build(["bench"])
    best = max(runs, key=lambda r: r.metrics["val_top1"])
    assert board.table.loc["pixels", "digits"] == round(best.metrics["test_top1"], 2)
    assert main(["leaderboard"]) == 0
    text = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "pixels" in text and "digits" in text
    import mlflow

    names = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].run_id)}
    assert {"protocol.json", "per_class_accuracy.csv", "confusion_matrix.png", "grid.csv"} <= names


def test_cli_help_is_light_and_errors_are_clear(capsys):
    code = ("import sys, bench.cli; bench.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'mlflow', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out
    from bench.cli import main

    assert main(["run", "--backbone", "pixel", "--task", "digits"]) == 2
    assert "Did you mean pixels" in capsys.readouterr().err
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--layer", "nope"]) == 2
    assert "has no layer 'nope'" in capsys.readouterr().err
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--pool", "cls"]) == 2
    assert "does not apply" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["run", "--backbone", "pixels"])
    assert e.value.code == 2


def test_attention_and_difformer_heads_run_through_the_job(capsys):
    from bench.cli import main

    from .conftest import records

    tiny = ["--probe-arg", "dim=16", "--probe-arg", "heads=2", "--probe-arg", "depth=1",
            "--epochs", "8", "--probe-arg", "eval_every=4", "--lrs", "0.01",
            "--probe-arg", "recipe=adamw",
            "--backbone", "pixels", "--task", "digits", "--workers", "0", "--no-progress"]
    assert main(["run", "--head", "attention", "--pool", "map2", *tiny]) == 0
    assert main(["run", "--head", "difformer", "--pool", "map2,map1", *tiny]) == 0
    runs = records()
    [attention] = [r for r in runs if r.head == "attention"]
    assert attention.pool == "map2"
    assert attention.metrics["test_top1"] > 20  # chance is 10; learning: test_heads
    # difformer fuses each pool's layers into one cell: two pools -> two runs
    assert len([r for r in runs if r.head == "difformer"]) == 2


def test_difformer_through_the_job_groups_blocks_by_timestep():
    """On a backbone with several blocks at several timesteps, the job hands DifFormer the
    backbone's grouping: one transformer over each timestep's blocks, CLS outputs concatenated."""
    from bench.api import run
    from bench.run.spec import RunOptions, RunSpec

    spec = RunSpec("diffusion-tiny", "digits", layers=["19@90", "24@90", "19@150", "24@150"],
                   pools=["map2"], head="difformer", task_args={"limit": 60},
                   head_args={"dim": 16, "heads": 2, "depth": 1, "epochs": 2, "eval_every": 1,
                              "lrs": (1e-2,), "recipe": "adamw"})
    [record] = run(spec, RunOptions(workers=0, progress=False))
    assert record.layer == "block19@t90+block24@t90+block19@t150+block24@t150"
    assert record.protocol["groups"] == [["block19@t90", "block24@t90"],
                                         ["block19@t150", "block24@t150"]]
    assert record.metrics["test_top1"] > 0 and record.best["epochs"] in (1, 2)


def test_demo_runs_both_controls_end_to_end(capsys, tmp_path):
    from bench.cli import main

    from .conftest import records

    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    runs = {r.backbone: r for r in records("bench")}
    assert set(runs) == {"pixels", "random-unet"}
    for backbone in ("pixels", "random-unet"):
        top1 = runs[backbone].metrics["test_top1"]
        assert top1 > 80, (backbone, top1)  # chance is 10
        assert f"{top1:.2f}" in out  # the printed numbers are the logged ones
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert (tmp_path / "results" / "leaderboard.md").exists()


def test_extraction_array_tasks_split_the_shards_and_the_probe_reuses_them(tmp_path):
    from bench.run.jobs import BenchJob, ExtractJob

    from bench.run.spec import RunOptions, RunSpec

    spec = RunSpec(backbone="pixels", task="digits", backbone_args={"size": 8},
                   head_args={"epochs": 4})
    options = RunOptions(workers=0, shard_size=256, cache_dir=str(tmp_path / "cache"),
                         progress=False)
    first = ExtractJob(spec, options, array_index=0, array_size=2)()
    second = ExtractJob(spec, options, array_index=1, array_size=2)()
    assert first["train"] == 3 and second["train"] == 3  # shards written: 6 of 1295 // 256 + 1
    assert ExtractJob(spec, options)()["train"] == 0  # all there: nothing to do
    [record] = BenchJob(spec, options)()
    assert record.metrics["test_top1"] > 80


def test_cache_cli_lists_and_removes_entries(capsys):
    from bench.cli import main

    _, entry = _extract()
    assert main(["cache", "ls"]) == 0
    listing = capsys.readouterr().out
    assert entry.key[:12] in listing and "digits/train" in listing and "complete" in listing
    assert main(["cache", "rm", "ffffffffffff"]) == 1  # nothing matches: says so, exit 1
    assert main(["cache", "rm", entry.key[:12]]) == 0
    assert not entry.path.exists()
    assert f"removed {entry.key[:12]}" in capsys.readouterr().out


def test_skip_corrupt_run_leaves_the_image_out_and_records_it(tmp_path, capsys):
    from PIL import Image

    from bench.cli import main

    from .conftest import records

    tree = tmp_path / "tree"
    for c in range(3):
        (tree / f"class{c}").mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8, 8), color=(80 * c, 40, 10 * i)).save(tree / f"class{c}/{i}.png")
    bad = tree / "class1" / "5.png"
    bad.write_bytes(bad.read_bytes()[:20])  # truncated file
    run = ["run", "--backbone", "pixels", "--task", f"folder:{tree}", "--workers", "0",
           "--backbone-arg", "size=4", "--epochs", "4", "--no-progress"]
    assert main(run) == 2
    assert "class1/5.png" in capsys.readouterr().err
    assert main([*run, "--skip-corrupt"]) == 0
    [logged] = records()
    assert logged.skipped_count == 1 and logged.skipped == ["class1/5.png"]


def test_list_shows_every_family_with_description_and_licence(capsys):
    from bench.cli import main

    assert main(["list", "backbones"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    expected = {"diffusion": "MIT", "bigbigan": "Apache-2.0", "simclr": "Apache-2.0",
                "mae": "CC-BY-NC", "clip": "MIT", "resnet50-supervised": "BSD-3-Clause",
                "dinov2": "Apache-2.0", "pixels": "none", "random-unet": "none"}
    for name, licence in expected.items():
        assert f"[weights licence: {licence}" in lines[name], lines[name]
        assert len(lines[name].split("[weights licence")[0].split(None, 1)[1]) > 20
    assert main(["list", "tasks", "c*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["cars", "cifar10", "cifar100", "cub"]


def test_features_that_overflow_the_cache_precision_are_refused(tmp_path):
    backbone = bench.create_backbone("pixels", size=4)
    backbone.forward_features = lambda x, layers, ids=None: {"image": x * 1e6}
    task = bench.create_task("digits", limit=8)
    from bench.errors import NumericalError  # a BenchError: one line and exit 2 in the CLI

    with pytest.raises(NumericalError, match="not finite in float16.*--precision fp32"):
        extract(backbone, task.split("train"), [("image", "4")], FeatureCache(tmp_path / "c"),
                task.config, device=CPU, precision=resolve_precision("bf16", "cpu"), progress=False)
    assert not list((tmp_path / "c").glob("*/*/shard-*.npy"))  # nothing half-good is cached


def test_memory_mapped_entry_reads_the_same_rows_as_load(tmp_path):
    _, entry = _extract(cache_dir=tmp_path / "c", shard_size=100)
    full, labels, keep = entry.load(dtype=None)
    mapped, labels2, keep2 = entry.open()
    assert mapped.shape == full.shape and mapped.dtype == full.dtype and len(mapped) == 1295
    np.testing.assert_array_equal(labels, labels2)
    index = np.array([1294, 0, 99, 100, 650, 650])  # across shards, unsorted, repeated
    np.testing.assert_array_equal(mapped[index], full[index])
    out = np.empty((len(index), *full.shape[1:]), full.dtype)
    np.take(mapped, index, axis=0, out=out, mode="clip")  # what the attention heads call
    np.testing.assert_array_equal(out, full[index])
    outside = np.array([1295, -1])
    with pytest.raises(IndexError):  # numpy's default mode refuses rows past the end
        mapped.take(outside)
    np.testing.assert_array_equal(mapped.take(outside, mode="clip"), full[[1294, 0]])
    np.testing.assert_array_equal(mapped.take(outside, mode="wrap"), full[[0, 1294]])
    mask = np.arange(1295) % 3 != 0
    selected = mapped[mask]
    assert len(selected) == mask.sum()
    np.testing.assert_array_equal(selected.take(np.array([0, 5, 800])), full[mask][[0, 5, 800]])
    np.testing.assert_array_equal(np.asarray(selected), full[mask])
