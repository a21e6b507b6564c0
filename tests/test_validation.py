"""Every numeric setting is checked before anything runs (issue 20, items 1, 8 and 9): one line
naming the setting, the value and its range, exit 2, nothing computed or logged."""

from __future__ import annotations

import pytest

from bench.errors import UsageError
from bench.run.spec import RunOptions, RunSpec

FAST = ["--epochs", "2", "--workers", "0", "--no-progress"]
RUN = ["run", "--backbone", "pixels", "--task", "digits"]


@pytest.mark.parametrize("flags, named", [
    (["--lrs", "nan"], "lrs value nan (--lrs)"),
    (["--lrs", "inf"], "lrs value inf (--lrs)"),
    (["--lrs", "0"], "lrs value 0.0 (--lrs)"),
    (["--lrs", "-0.1"], "lrs value -0.1 (--lrs)"),  # a value, not a flag
    (["--lrs", "1e-2,-1e-3"], "lrs value -0.001 (--lrs)"),
    (["--lrs=-0.1"], "lrs value -0.1 (--lrs)"),
    (["--wds", "-50"], "weight_decays value -50.0 (--wds)"),
    (["--wds=-50"], "weight_decays value -50.0 (--wds)"),
    (["--wds", "nan"], "weight_decays value nan (--wds)"),
    (["--probe-arg", "lrs=[NaN]"], "lrs value nan"),
    (["--head", "mlp", "--probe-arg", "hidden=0"], "hidden=0"),
    (["--head", "attention", "--probe-arg", "dim=0"], "dim=0"),
    (["--batch-size", "0"], "batch_size=0 (--batch-size)"),
    (["--batch-size", "-5"], "batch_size=-5 (--batch-size)"),
    (["--shard-size", "0"], "shard_size=0 (--shard-size)"),
    (["--workers", "-1"], "workers=-1 (--workers)"),
    (["--task-arg", "limit=0"], "limit=0"),
    (["--task-arg", "limit=-5"], "limit=-5"),
    (["--task", "folder", "--task-arg", "val_fraction=1.0"], "val_fraction=1.0"),
    (["--task", "folder", "--task-arg", "val_fraction=-0.5"], "val_fraction=-0.5"),
    (["--task", "folder", "--task-arg", "max_image_pixels=-1"], "max_image_pixels=-1"),
])
def test_a_setting_out_of_range_is_one_line_and_nothing_runs(flags, named, capsys, tmp_path):
    from bench.cli import main

    assert main([*RUN, *FAST, *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "out of range: it must be" in err and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists()  # no store, no cache: nothing computed


def test_the_library_checks_the_same_ranges_as_the_cli():
    from bench.api import run

    with pytest.raises(UsageError, match=r"lrs value nan .* finite number > 0"):
        run(RunSpec("pixels", "digits", head_args={"lrs": [float("nan")]}))
    with pytest.raises(UsageError, match=r"weight_decays value -50"):
        run(RunSpec("pixels", "digits", head_args={"weight_decays": [-50.0]}))
    with pytest.raises(UsageError, match=r"limit=0 "):
        run(RunSpec("pixels", "digits", task_args={"limit": 0}))
    with pytest.raises(UsageError, match=r"batch_size=0"):
        RunOptions(batch_size=0)
    with pytest.raises(UsageError, match=r"suite ''"):
        RunOptions(suite="")


def test_extract_refuses_a_zero_shard_size_before_writing_anything(tmp_path):
    """--shard-size 0 used to leave a labels.npy-only cache entry behind (ZeroDivisionError)."""
    import torch

    from bench.features.cache import FeatureCache
    from bench.features.extract import extract
    from bench.registry import backbones, tasks

    task = tasks.create("digits", limit=8)
    with pytest.raises(UsageError, match="shard_size=0"):
        extract(backbones.create("pixels"), task.split("train"), [("image", "1")],
                FeatureCache(tmp_path / "cache"), task.config, device=torch.device("cpu"),
                shard_size=0, progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))


def test_seed_beside_seeds_and_an_empty_suite_are_refused(capsys, tmp_path):
    from bench.cli import main

    assert main([*RUN, *FAST, "--seed", "3", "--seeds", "0,1"]) == 2
    assert "--seed beside --seeds" in capsys.readouterr().err
    assert main([*RUN, *FAST, "--suite", ""]) == 2
    assert "suite ''" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_negative_values_after_flags_are_values():
    from bench.cli import attach_negative_values

    assert attach_negative_values(["--lrs", "-0.1", "--wds", "-5e-2,0", "--seed", "-inf"]) == [
        "--lrs=-0.1", "--wds=-5e-2,0", "--seed=-inf"]
    assert attach_negative_values(["--force", "--lrs", "1"]) == ["--force", "--lrs", "1"]
    assert attach_negative_values(["--lrs=1", "-5"]) == ["--lrs=1", "-5"]


def test_a_weights_file_given_to_a_random_weights_preset_is_not_ignored():
    """mae-tiny used to log random weights for weights=/nonexistent; with seed=None the file is
    loaded into the tiny architecture, and a missing one is named."""
    import bench
    from bench.features.weights import WeightsError

    with pytest.raises(UsageError, match=r"seeded random weights \(seed=0\), so "
                       r"weights='/nonexistent' would be ignored; add seed=null"):
        bench.create_backbone("mae-tiny", weights="/nonexistent")
    with pytest.raises(WeightsError, match="weights file not found: /nonexistent"):
        bench.create_backbone("mae-tiny", weights="/nonexistent", seed=None)


def _image_tree(root, classes: int, per_class: int):
    """ROOT/class<c>/<i>.png: small images, a colour per class and image."""
    from PIL import Image

    for c, i in ((c, i) for c in range(classes) for i in range(per_class)):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (80 * c, 40, 10 * i)).save(root / f"class{c}/{i}.png")
    return root


def test_skip_corrupt_says_what_it_left_out_and_refuses_to_lose_a_class(tmp_path, capsys):
    from bench.cli import main

    tree = _image_tree(tmp_path / "tree", 3, 8)
    good = {p: p.read_bytes() for p in (tree / "class2").iterdir()}
    for path, data in good.items():
        path.write_bytes(data[:20])  # every image of class2 truncated
    run = ["run", "--backbone", "pixels", "--task", f"folder:{tree}", "--backbone-arg", "size=4",
           "--skip-corrupt", *FAST]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "--skip-corrupt would leave out every" in err and "image of class 2" in err, err
    assert "that changes the task" in err
    for path, data in good.items():
        path.write_bytes(data)
    bad = tree / "class1" / "5.png"
    bad.write_bytes(bad.read_bytes()[:20])
    assert main(run) == 0
    out = capsys.readouterr().out
    assert "left out 1 unreadable image(s) (--skip-corrupt" in out and "class1/5.png" in out


def test_exif_orientation_is_applied_on_every_decode_path(tmp_path):
    """A picture stored sideways with orientation 6 ("rotate 90 degrees clockwise to view")
    reaches the backbone upright; rotated JPEGs leave the nvJPEG path for the one applying it."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from bench.features.pipeline import _Items
    from bench.features.images import load_rgb
    from bench.task import Split

    stored = np.random.default_rng(0).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "sideways.png", exif=exif)
    Image.fromarray(stored).save(tmp_path / "plain.png")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "sideways.png")), np.rot90(stored, -1))
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "plain.png")), stored)
    for name, rotated in (("sideways.jpg", True), ("plain.jpg", False)):
        Image.fromarray(stored).save(tmp_path / name, exif=exif if rotated else Image.Exif())
    split = Split("test", ["sideways.jpg", "plain.jpg"], [0, 0], lambda item: load_rgb(
        tmp_path / item), tmp_path)
    items = _Items(split, T.ToTensor(), lambda item: tmp_path / item)
    image, encoded, _, _ = items[0]
    assert encoded is None and image.shape == (3, 10, 6)  # decoded upright by Pillow
    image, encoded, _, _ = items[1]
    assert image is None and encoded is not None  # plain JPEG: bytes for nvJPEG


def test_a_gif_in_a_class_folder_is_an_image_of_that_class(tmp_path):
    """GIFs used to be left out of folder tasks without a word (first frame, like Pillow)."""
    import numpy as np
    from PIL import Image

    from bench.registry import tasks

    _image_tree(tmp_path, 2, 5)
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "class1/blue.gif")
    task = tasks.create(f"folder:{tmp_path}")
    assert task.verify(full=True) == []
    items = [item for s in ("train", "val", "test") for item in task.split(s).items]
    assert "class1/blue.gif" in items and len(items) == 11
    assert np.asarray(task.load("class1/blue.gif"))[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("value", ["-1", "many"])
def test_a_bad_max_image_pixels_variable_is_one_line_before_any_work(value, monkeypatch, capsys,
                                                                     tmp_path):
    from bench.cli import main

    monkeypatch.setenv("BENCH_MAX_IMAGE_PIXELS", value)
    assert main([*RUN, *FAST]) == 2
    err = capsys.readouterr().err
    assert f"BENCH_MAX_IMAGE_PIXELS='{value}' is out of range" in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()
