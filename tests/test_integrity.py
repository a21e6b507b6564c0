"""Nothing silently wrong: image modes, cache shard integrity, weights identity, pools, folders."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import bench
from bench.backbone import MAP, FeaturePoint, check_pool, pool_features
from bench.features.cache import CacheFullError, CorruptShardError, FeatureCache
from bench.cli import main as cli
from bench.features.data import verify as verify_data
from bench.features.extract import extract
from bench.features.images import load_rgb, to_rgb
from bench.task import CorruptImageError, DatasetError, Split
from bench.features.weights import WeightsError, file_sha256

CPU = torch.device("cpu")


def _extract(cache_dir, shard_size=4, skip_corrupt=False, split=None):
    task = bench.create_task("digits", limit=10)
    split = split or task.split("train")
    report = extract(bench.create_backbone("pixels", size=4), split, [("image", "1")],
                     FeatureCache(cache_dir), task.config, device=CPU, progress=False,
                     shard_size=shard_size, skip_corrupt=skip_corrupt)
    return report, report.entries[("image", "1")]


# --- 1: image modes -------------------------------------------------------------------------
def _mode_cases():
    from PIL import Image

    p = Image.new("P", (1, 1), 0)
    p.putpalette([10, 20, 30] * 256)
    p.info["transparency"] = 0
    return [  # (image, expected RGB)
        (Image.fromarray(np.full((1, 1), 32896, np.uint16)), (128,) * 3),  # I;16
        (Image.frombytes("I;16B", (1, 1), (32896).to_bytes(2, "big")), (128,) * 3),
        (Image.fromarray(np.full((1, 1), 32896, np.int32), "I"), (128,) * 3),
        (Image.fromarray(np.full((1, 1), 0.5, np.float32), "F"), (128,) * 3),
        (Image.fromarray(np.array([[2.0, 4.0]], np.float32), "F"), (128,) * 3),  # max 4: 2 -> 128
        (p, (255,) * 3),  # transparent palette colour on white
        (Image.new("PA", (1, 1), (0, 0)), (255,) * 3),
        (Image.new("LA", (1, 1), (100, 0)), (255,) * 3),
        (Image.new("LA", (1, 1), (100, 255)), (100,) * 3),
        (Image.new("LA", (1, 1), (100, 255)).convert("La"), (100,) * 3),
        (Image.new("RGBA", (1, 1), (10, 20, 30, 0)), (255,) * 3),
        (Image.new("RGBA", (1, 1), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("CMYK", (1, 1), (0, 0, 0, 0)), (255,) * 3),
        (Image.new("YCbCr", (1, 1), (128, 128, 128)), (128,) * 3),
        (Image.new("1", (1, 1), 1), (255,) * 3),
        (Image.new("L", (1, 1), 77), (77,) * 3),
    ]


@pytest.mark.parametrize("index", range(16))
def test_every_pil_mode_converts_to_the_expected_rgb(index):
    image, expected = _mode_cases()[index]
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape[-1] == 3 and tuple(rgb[0, 0].tolist()) == expected, image.mode


def test_sixteen_bit_png_keeps_its_grey(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(tmp_path / "grey.png")
    assert np.asarray(load_rgb(tmp_path / "grey.png")).mean() == 128


# --- 17: huge images are corrupt images, with a way to allow them ----------------------------
def test_image_over_the_pixel_limit_is_a_corrupt_image_naming_the_file(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    monkeypatch.setenv("BENCH_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(CorruptImageError, match="big.png.*400 pixels exceeds"):
        load_rgb(tmp_path / "big.png")
    assert load_rgb(tmp_path / "big.png", max_pixels=400).size == (20, 20)
    monkeypatch.setenv("BENCH_MAX_IMAGE_PIXELS", "0")
    assert load_rgb(tmp_path / "big.png").size == (20, 20)


# --- 2, 18: checksums and finite values on read, bench cache verify --------------------------
def _rewrite_shard(entry, index, change):
    """Change a shard's values and re-record its checksum, as if written that way."""
    from bench.features.cache import _atomic_write

    data = np.load(entry.shard_path(index))
    change(data)
    digest = _atomic_write(entry.shard_path(index), lambda f: np.save(f, data))
    meta = json.loads(entry.sidecar_path(index).read_text()) | {"blake2b": digest}
    entry.sidecar_path(index).write_text(json.dumps(meta))


def test_nan_value_in_a_shard_is_refused_on_read(tmp_path):
    _, entry = _extract(tmp_path)
    _rewrite_shard(entry, 1, lambda a: a.__setitem__((0, 0), np.nan))
    with pytest.raises(CorruptShardError, match="shard-00001.npy.*NaN.*bench cache verify --fix"):
        entry.load()
    with pytest.raises(CorruptShardError, match="NaN"):
        entry.open()[0].take(np.array([5]))  # memory-mapped reads check the shard too


def test_flipped_bit_is_found_by_verify_and_fixed_by_recomputing(tmp_path, capsys):
    _, entry = _extract(tmp_path)
    good = entry.load()[0]
    raw = bytearray(entry.shard_path(0).read_bytes())
    raw[-1] ^= 0x40  # an exponent bit of the last fp16 value
    entry.shard_path(0).write_bytes(bytes(raw))
    with pytest.raises(CorruptShardError, match="checksum mismatch"):
        entry.load()
    assert cli(["cache", "verify", "--cache-dir", str(tmp_path)]) == 1
    assert "shard-00000.npy" in capsys.readouterr().out
    assert cli(["cache", "verify", "--fix", "--cache-dir", str(tmp_path)]) == 0
    report, entry = _extract(tmp_path)
    assert report.shards_written == 1
    np.testing.assert_array_equal(entry.load()[0], good)
    assert cli(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0


def test_truncated_shard_names_the_file_and_the_fix_and_is_recomputed(tmp_path):
    _, entry = _extract(tmp_path)
    path = entry.shard_path(1)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CorruptShardError, match=f"{path}.*truncated.*bench cache verify"):
        entry.load()
    assert _extract(tmp_path)[0].shards_written == 1
    assert len(entry.load()[0]) == 10



# --- issue 20, 4: labels.npy is checksummed and compared with the task's labels ---------------
def test_shifted_labels_are_refused_reported_by_verify_and_rewritten_after_fix(tmp_path, capsys):
    _, entry = _extract(tmp_path)
    labels = np.load(entry.path / "labels.npy")
    np.save(entry.path / "labels.npy", np.roll(labels, 1))  # same size, same dtype
    with pytest.raises(CorruptShardError, match="labels.npy.*checksum mismatch"):
        entry.load()
    assert cli(["cache", "verify", "--cache-dir", str(tmp_path)]) == 1
    assert re.search(r"BAD: cache file .*labels.npy is corrupt", capsys.readouterr().out)
    assert cli(["cache", "verify", "--fix", "--cache-dir", str(tmp_path)]) == 0
    report, entry = _extract(tmp_path)
    assert report.shards_written == 0  # features kept; labels written again from the task
    np.testing.assert_array_equal(entry.load()[1], labels)
    assert cli(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0


def test_labels_that_pass_their_checksum_but_differ_from_the_task_are_refused(tmp_path):
    from bench.features.cache import _atomic_write

    _, entry = _extract(tmp_path)
    shifted = np.roll(np.load(entry.path / "labels.npy"), 1)
    digest = _atomic_write(entry.path / "labels.npy", lambda f: np.save(f, shifted))
    manifest = entry.manifest | {"labels_blake2b": digest}
    (entry.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptShardError, match="labels.npy.*differ from the task's"):
        _extract(tmp_path)

# --- 3: shard size is part of an entry's identity --------------------------------------------
def test_lost_manifest_and_another_shard_size_recompute_every_shard(tmp_path):
    _, entry = _extract(tmp_path, shard_size=4)
    (entry.path / "manifest.json").unlink()
    report, entry = _extract(tmp_path, shard_size=3)
    assert report.shards_written == 4  # old 4-row shards disagree with the new shard size
    features, labels, keep = entry.load()
    assert len(features) == len(labels) == 10


# --- 6: shards that skipped items ------------------------------------------------------------
def test_fixed_image_is_recomputed_and_reused_skips_are_reported(tmp_path):
    from PIL import Image

    broken = {3}

    def loader(i):
        if i in broken:
            raise CorruptImageError(f"img{i}.png", "truncated")
        return Image.new("RGB", (4, 4), (i, i, i))

    split = Split("train", list(range(10)), np.arange(10) % 2, loader)
    assert _extract(tmp_path, skip_corrupt=True, split=split)[0].skipped == ["3"]
    reused = _extract(tmp_path, skip_corrupt=True, split=split)[0]
    assert (reused.images_processed, reused.skipped) == (0, ["3"])  # not only this run's skips
    broken.clear()
    report, entry = _extract(tmp_path, split=split)
    assert (report.shards_written, report.skipped) == (1, [])
    assert entry.load()[2].all()


# --- 13: disk full, stale temporary files -----------------------------------------------------
def test_disk_full_says_so_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from bench.features import cache as cache_module
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module._HashingWriter, "write", full)
    with pytest.raises(CacheFullError, match=r"no space left on device for the cache at .* MB needed"):
        _extract(tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_clean_removes_temporaries_of_dead_or_old_writers(tmp_path):
    import socket

    _, entry = _extract(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    host = socket.gethostname()
    names = {"dead": f".shard-00000.npy.{host}.{dead}.tmp",
             "alive": f".shard-00001.npy.{host}.{os.getpid()}.tmp",
             "old": ".shard-00002.npy.otherhost.1.tmp",
             "other_host_recent": ".shard-00003.npy.otherhost.1.tmp"}
    for name in names.values():
        (entry.path / name).write_bytes(b"x")
    hours_ago = time.time() - 7200
    os.utime(entry.path / names["old"], (hours_ago, hours_ago))
    assert cli(["cache", "clean", "--cache-dir", str(tmp_path)]) == 0
    left = {p.name for p in entry.path.glob(".*.tmp")}
    assert left == {names["alive"], names["other_host_recent"]}


# --- 4, 14: weights identity and damaged checkpoints ----------------------------------------
def test_weights_sidecar_is_not_trusted_for_a_replaced_file(tmp_path):
    new, old = tmp_path / "w.pt", tmp_path / "old.pt"
    old.write_bytes(b"a" * 64)
    os.utime(old, (1_000_000, 1_000_000))
    new.write_bytes(b"b" * 64)
    assert file_sha256(new) == hashlib.sha256(b"b" * 64).hexdigest()  # writes the sidecar
    shutil.copy2(old, new)  # cp -p: same size, older mtime
    assert file_sha256(new) == hashlib.sha256(b"a" * 64).hexdigest()



def _rewrite_keeping_mtime(path, data: bytes) -> None:
    """Bytes rewritten in place (same inode, same size) with the old mtime put back, as
    ``cp --preserve=timestamps`` over the file does: only ctime tells."""
    before = path.stat()
    time.sleep(0.05)  # past the kernel's coarse clock tick, so ctime moves
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino)


def test_weights_rewritten_in_place_under_the_old_mtime_are_rehashed(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"a" * 64)
    assert file_sha256(path) == hashlib.sha256(b"a" * 64).hexdigest()  # writes the sidecar
    assert "ctime_ns" in json.loads((tmp_path / "w.safetensors.sha256").read_text())
    _rewrite_keeping_mtime(path, b"b" * 64)
    assert file_sha256(path) == hashlib.sha256(b"b" * 64).hexdigest()

class _Code:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("kind", ["truncated", "random", "code", "bad-safetensors"])
def test_damaged_checkpoints_name_the_file_and_never_suggest_unsafe_loading(tmp_path, kind):
    from bench.backbones._shared import load_state_dict_file
    from bench.backbones.adm.backbone import load_state_dict

    path = tmp_path / ("w.safetensors" if kind == "bad-safetensors" else "w.pt")
    if kind in ("truncated", "code"):
        torch.save({"w": torch.ones(64)} if kind == "truncated" else {"w": _Code()}, path)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(os.urandom(256))
    for load in (load_state_dict_file, load_state_dict,  # ours, and timm's own loader
                 lambda p: bench.create_backbone("timm:resnet18", weights=str(p))):
        with pytest.raises(WeightsError, match="not a valid .* checkpoint") as error:
            load(path)
        assert str(path) in str(error.value) and "weights_only" not in str(error.value)


# --- 7: pools ---------------------------------------------------------------------------------
def test_pools_that_cannot_mean_anything_are_refused():
    point = FeaturePoint("block", MAP)
    with pytest.raises(ValueError, match="pool '0'"):
        check_pool(point, "0")
    x = torch.ones(1, 2, 4, 4)
    for pool in ("100", "3"):
        with pytest.raises(ValueError, match="map is 4x4.*valid pools: 1, 2, 4"):
            pool_features(x, point, pool)
    assert pool_features(x, point, "2").shape == (1, 8)
    assert pool_features(x, point, "map3").shape == (1, 2, 2, 2)  # largest dividing side <= 3


# --- 5, 8: folder tasks -------------------------------------------------------------------------
def _tree(root, counts):
    from PIL import Image

    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (i, i, i)).save(root / cls / f"{i}.png")


def test_changed_image_under_the_same_name_changes_the_split_digest(tmp_path):
    from PIL import Image

    _tree(tmp_path, {"a": 5, "b": 5})
    def digest() -> str:
        return bench.create_task(f"folder:{tmp_path}").split("train").manifest_digest()

    before = digest()
    item = bench.create_task(f"folder:{tmp_path}").split("train").items[0]
    Image.new("RGB", (4, 4), (200, 0, 0)).save(tmp_path / item)
    assert digest() != before



def test_image_rewritten_in_place_under_the_old_mtime_changes_the_split_digest(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (4, 4), (i, i, i)).save(tmp_path / cls / f"{i}.bmp")
    def digest() -> str:
        return bench.create_task(f"folder:{tmp_path}").split("train").manifest_digest()

    before = digest()
    item = bench.create_task(f"folder:{tmp_path}").split("train").items[0]
    other = tmp_path / "other.bmp"
    Image.new("RGB", (4, 4), (200, 0, 0)).save(other)  # same size in bytes (uncompressed BMP)
    _rewrite_keeping_mtime(tmp_path / item, other.read_bytes())
    assert digest() != before


def test_hidden_folders_and_files_are_never_classes_or_items(tmp_path, capsys):
    _tree(tmp_path, {"a": 3, "b": 3, "c": 3, ".ipynb_checkpoints": 2, "__MACOSX": 1})
    shutil.copy(tmp_path / "a" / "0.png", tmp_path / "a" / ".hidden_copy.png")
    task = bench.create_task(f"folder:{tmp_path}")
    items = [i for s in ("train", "val", "test") for i in task.split(s).items]
    assert task.class_names == ["a", "b", "c"]
    assert len(items) == 9 and not any("/." in i or i.startswith((".", "__")) for i in items)
    assert cli(["data", "verify", "--task", f"folder:{tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert out.count("ignored 3 hidden") == 1 and out.count(".hidden_copy.png") == 1
    assert ".ipynb_checkpoints/" in out and "__MACOSX/" in out and "3 classes" in out

@pytest.mark.parametrize("counts, message", [({"a": 5}, "at least 2"),
                                             ({"a": 5, "b": 5, "empty": 0}, "without images.*empty")])
def test_folder_with_one_class_or_an_empty_class_folder_is_an_error(tmp_path, counts, message):
    _tree(tmp_path, counts)
    problems = verify_data(f"folder:{tmp_path}")
    assert len(problems) == 1 and re.search(message, problems[0])
    with pytest.raises(DatasetError, match=message):
        bench.create_task(f"folder:{tmp_path}").split("train")


def test_verify_full_reports_an_oversized_image_instead_of_crashing(tmp_path):
    _tree(tmp_path, {"a": 5, "b": 5})
    problems = bench.create_task(f"folder:{tmp_path}", max_image_pixels=8).verify(full=True)
    assert len(problems) == 10 and all("exceeds the limit" in p for p in problems)


# --- issue 31, 5: what a probe reads is covered by the checksum ------------------------------
def _shards(root, storage: str, rows: int = 3000, dim: int = 8, shard_size: int = 1000):
    """A cache entry of ``rows`` Gaussian features in ``storage`` (written as extraction writes
    them) and the float32 values it holds."""
    from bench.features.cache import bf16_to_float32
    from bench.features.extract import encode

    rng = np.random.default_rng(0)
    stored = encode(rng.normal(size=(rows, dim)).astype(np.float32), storage)
    entry = FeatureCache(root).entry({"storage": storage, "rows": rows})
    entry.create({"storage": storage}, rng.integers(0, 10, rows), shard_size)
    for i, start in enumerate(range(0, rows, shard_size)):
        entry.write_shard(i, stored[start : start + shard_size], [])
    values = bf16_to_float32(stored) if storage == "bfloat16" else stored
    return entry, values


def _rewrite_row_keeping_mtime(path, row: int) -> None:
    """One row of a shard's values changed in place, its size and mtime restored (as
    ``rsync --inplace -t`` leaves a file it updated)."""
    from numpy.lib import format as npy

    array = np.load(path, mmap_mode="r")
    width = array.itemsize * int(np.prod(array.shape[1:]))
    data = bytearray(path.read_bytes())
    start = array.offset + row * width
    data[start : start + width] = bytes(reversed(data[start : start + width]))
    assert npy.MAGIC_PREFIX == bytes(data[:6])
    _rewrite_keeping_mtime(path, bytes(data))


READS = {
    "run": lambda a: a.take(np.arange(400, 600), axis=0),  # a contiguous run
    "gather": lambda a: a.take(np.array([999, 3, 500, 2500, 500]), axis=0),  # scattered rows
    "selected": lambda a: np.asarray(a[np.arange(len(a)) % 3 != 0]),  # a kept-rows mask
    "numpy": lambda a: np.take(a, np.array([500, 0]), axis=0),  # what attention heads call
}


@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("read", list(READS))
def test_a_shard_rewritten_in_place_under_its_old_mtime_is_refused_on_the_next_read(
        tmp_path, storage, read):
    entry, values = _shards(tmp_path, storage)
    mapped, _, _ = entry.open()
    first = READS[read](mapped)  # the shard is checked, then read
    np.testing.assert_array_equal(first, READS[read](values))
    _rewrite_row_keeping_mtime(entry.shard_path(0), 500)
    with pytest.raises(CorruptShardError, match="shard-00000.npy is corrupt.*checksum mismatch"):
        READS[read](mapped)
    np.testing.assert_array_equal(mapped.take(np.array([2999, 1000])), values[[2999, 1000]])


@pytest.mark.parametrize("mode", ["windows", "rows"])
def test_a_shard_rewritten_in_place_while_a_probe_streams_it_is_never_trained_on(
        tmp_path, mode, one_thread, monkeypatch):
    """As ``rsync --inplace -t`` from another machine would, after the probe's third read."""
    from bench.heads.probe import GridProbeTrainer, ProbeConfig
    from bench.heads.streaming import WINDOW_ROWS, Batches, Rows
    from bench.precision import FP32
    from bench.protocol import ProbeData

    data, labels = {}, {}
    for split, rows in {"train": 2 * WINDOW_ROWS + 5000, "val": 300, "test": 200}.items():
        entry, _ = _shards(tmp_path / split, "float16", rows=rows)
        data[split], labels[split], _ = entry.open()
    step = 256 * 8 * (2 + 4 + 4)  # a minibatch as read, as input and standardised
    budget = {"windows": 2 * WINDOW_ROWS * 8 * 2 + 2 * step, "rows": 3 * step}[mode]
    assert Batches(Rows([data["train"]]), None, 256, CPU, torch.float32, budget,
                   reserve=step).mode == mode
    train, reads = data["train"], []
    take = train.take

    def rewriting(index, axis=0, **kwargs):
        reads.append(len(index))
        if len(reads) == 3:
            _rewrite_row_keeping_mtime(entry_path, 10)
        return take(index, axis=axis, **kwargs)

    entry_path = train.shards[0].filename
    monkeypatch.setattr(train, "take", rewriting)
    probe = ProbeData(data, labels, 10, memory_budget=budget)
    cfg = ProbeConfig(lrs=(1e-2,), weight_decays=(0.0,), epochs=3)
    with pytest.raises(CorruptShardError, match="shard-00000.npy is corrupt.*checksum mismatch"):
        GridProbeTrainer(cfg, "cpu", FP32).search(probe)
