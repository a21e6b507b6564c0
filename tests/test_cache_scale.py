"""The cache at sweep scale (issue 26, item 3): --cache-dtype in the identity, bfloat16 storage,
costs before work, the disk preflight, --no-keep-features."""

from __future__ import annotations

import json
import re
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch

import bench
from bench.api import run, run_seeds
from bench.cli import main
from bench.features.cache import CorruptShardError, FeatureCache
from bench.features.extract import CacheDtypeError, check_storage, extract
from bench.precision import FP32, resolve_precision, with_cache_dtype
from bench.run.spec import RunOptions, RunSpec, resolve

from .conftest import records

FAST = {"epochs": 2, "lrs": (1e-2,), "weight_decays": (0.0,)}
FLAGS = ["--epochs", "2", "--lrs", "1e-2", "--wds", "0", "--workers", "0", "--no-progress"]
OPTIONS = RunOptions(workers=0, progress=False)
CPU = torch.device("cpu")
Usage = namedtuple("Usage", "total used free")


def _spec(**fields) -> RunSpec:
    return RunSpec(**{"backbone": "pixels", "task": "digits", "head_args": dict(FAST), **fields})


def _identity(**fields) -> str:
    return resolve(_spec(**fields), OPTIONS).run.cells[0].identity


def _errors(err: str) -> list[str]:
    """stderr's lines less MLflow's INFO lines (printed when a store is first created)."""
    return [line for line in err.strip().splitlines() if " INFO mlflow." not in line]


def _entries(tmp_path) -> list:
    return sorted((tmp_path / "results" / "cache").glob("??/*/manifest.json"))


# --- --cache-dtype: the identity and the cache key --------------------------------------------
def test_auto_is_the_policys_storage_and_another_cache_dtype_is_another_result():
    from bench.features.extract import entry_fields

    assert _identity() == _identity(cache_dtype="fp32")  # auto on the CPU: fp32's float32
    # under bf16 the policy stores float16: auto and an explicit fp16 are one result
    assert _identity(precision="bf16") == _identity(precision="bf16", cache_dtype="fp16")
    assert _identity(cache_dtype="fp16") != _identity()
    assert _identity(cache_dtype="bf16") not in (_identity(), _identity(cache_dtype="fp16"))

    prepared = resolve(_spec(cache_dtype="fp16"), OPTIONS)
    split = prepared.task.split("train")
    cache = FeatureCache()
    keys = {dtype: cache.entry(entry_fields(prepared.backbone, prepared.run.task_config, split,
                                            "image", "16", with_cache_dtype(FP32, dtype))).key
            for dtype in ("auto", "fp32", "fp16")}
    assert keys["auto"] == keys["fp32"] != keys["fp16"]
    assert prepared.run.settings["cache_dtype"] == "fp16"  # chosen: an alternative of the cell
    assert "cache_dtype" not in resolve(_spec(), OPTIONS).run.settings


def test_a_bf16_policy_with_bf16_storage_probes_in_bf16_not_fp16():
    """float16 probe inputs would overflow what bfloat16 storage holds (beyond 65504)."""
    gpu = resolve_precision("bf16", "cuda")
    assert with_cache_dtype(gpu, "auto") == gpu
    assert with_cache_dtype(gpu, "bf16").probe_inputs == "bfloat16"
    assert with_cache_dtype(FP32, "bf16").probe_inputs == "float32"


def _digits_entry(cache_dir, dtype: str, shard_size: int = 4):
    task = bench.create_task("digits", limit=10)
    report = extract(bench.create_backbone("pixels", size=4), task.split("train"),
                     [("image", "1")], FeatureCache(cache_dir), task.config, device=CPU,
                     precision=with_cache_dtype(FP32, dtype), progress=False,
                     shard_size=shard_size)
    return report.entries[("image", "1")]


def test_bf16_storage_holds_bfloat16_bits_and_reads_back_as_float32(tmp_path, monkeypatch,
                                                                     capsys):
    exact = _digits_entry(tmp_path, "fp32")
    half = _digits_entry(tmp_path, "bf16")
    assert half.key != exact.key
    assert half.manifest["fields"]["storage"] == "bfloat16"
    assert np.load(half.shard_path(0)).dtype == np.uint16  # the raw bits; numpy has no bfloat16
    reference, labels, _ = exact.load()
    expected = torch.from_numpy(reference).to(torch.bfloat16).float().numpy()  # torch's rounding
    loaded, half_labels, _ = half.load(dtype=None)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, expected)
    assert np.array_equal(half_labels, labels)
    mapped, _, _ = half.open()
    assert mapped.dtype == np.float32
    assert np.array_equal(mapped.take(np.array([7, 0, 5])), expected[[7, 0, 5]])
    assert np.array_equal(np.asarray(mapped[np.arange(10) % 2 == 0]), expected[::2])
    assert not np.array_equal(expected, reference)  # bf16 really rounded something
    assert half.verify() == []
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    assert main(["cache", "ls"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"{half.key[:12]} .* bfloat16 ", listing)
    assert re.search(rf"{exact.key[:12]} .* float32 ", listing)


def test_a_bf16_shard_holding_a_nan_is_refused_on_read(tmp_path):
    from bench.features.cache import _atomic_write

    import json

    entry = _digits_entry(tmp_path, "bf16")
    bits = np.load(entry.shard_path(1))
    bits[0, 0] = 0x7FC0  # a bfloat16 NaN
    digest = _atomic_write(entry.shard_path(1), lambda f: np.save(f, bits))
    meta = json.loads(entry.sidecar_path(1).read_text()) | {"blake2b": digest}
    entry.sidecar_path(1).write_text(json.dumps(meta))
    with pytest.raises(CorruptShardError, match="shard-00001.npy.*NaN"):
        entry.load()
    with pytest.raises(CorruptShardError, match="NaN"):
        entry.open()[0].take(np.array([5]))
    assert len(entry.verify()) == 1


BIG = '''
import torch
from bench.backbone import VECTOR, Backbone, FeaturePoint
from torchvision import transforms as T


class Big(Backbone):
    """The first ``dims`` pixels (0..1) times ``gain`` (and ``1 + scale`` from item
    ``from_item`` on) plus a common ``offset``."""

    family, input_size, default_layers, default_pool = "big", 8, ("out",), "none"

    def __init__(self, scale, from_item, offset=0.0, gain=1.0, dims=4):
        super().__init__()
        self.scale, self.from_item = scale, from_item
        self.offset, self.gain, self.dims = offset, gain, dims

    @property
    def config(self):
        return {"family": self.family, "scale": self.scale, "from_item": self.from_item,
                "offset": self.offset, "gain": self.gain, "dims": self.dims}

    def transform(self):
        return T.Compose([T.Resize((8, 8)), T.ToTensor()])

    def feature_points(self):
        return [FeaturePoint("out", VECTOR)]

    def forward_features(self, x, layers, sample_ids=None):
        big = 1 + (sample_ids >= self.from_item).float()[:, None] * self.scale
        return {"out": x.flatten(1)[:, :self.dims] * self.gain * big + self.offset}


def make(scale: float = 1e5, from_item: int = 0):
    return Big(scale, from_item)


def shifted(offset: float = 4000.0, gain: float = 1.0):
    """The digit's 64 grey pixels, shifted."""
    return Big(0.0, 0, offset, gain, 64)
'''


def test_values_beyond_fp16_are_refused_before_extraction_and_at_write(tmp_path, capsys):
    module = tmp_path / "big.py"
    module.write_text(BIG)
    command = ["run", "--backbone", f"{module}:make", "--task", "digits", "--task-arg",
               "limit=40", "--cache-dtype", "fp16", *FLAGS]
    assert main(command) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "beyond float16's largest value 65504" in err[0], err
    assert "--cache-dtype bf16 or fp32" in err[0]
    assert not _entries(tmp_path) and not records()  # refused before anything was written
    # the first images fit float16, a later one does not: caught as it is written, not as inf
    assert main([*command, "--backbone-arg", "from_item=30"]) == 2
    err = capsys.readouterr().err
    assert "not finite in float16" in err and "--cache-dtype bf16 or fp32" in err
    assert not records()
    assert main([*command[:-len(FLAGS) - 2], "--cache-dtype", "bf16", *FLAGS]) == 0  # bf16 holds it


def test_integer_features_beyond_a_reduced_types_exact_integers_are_refused():
    backbone = bench.create_backbone("pixels", size=4)
    ints = {("image", "1"): torch.tensor([[3000, 7]])}
    with pytest.raises(CacheDtypeError, match="integers up to 3000.*--cache-dtype fp32"):
        check_storage(backbone, ints, "float16")
    check_storage(backbone, ints, "float32")
    check_storage(backbone, {("image", "1"): torch.tensor([[200, 7]])}, "bfloat16")


# --- costs before work ------------------------------------------------------------------------
def test_the_dry_run_prints_each_cells_costs_and_the_totals(capsys):
    from bench.run.costs import SHARD_OVERHEAD, size
    from bench.run.sweep import describe, make_plan

    plan = make_plan(["pixels"], ["digits"], {"pool": ["4", "8"]}, _spec(), OPTIONS)
    dry = describe(plan)
    [cost] = dry.costs
    assert cost.images == {"train": 1295, "val": 143, "test": 359}
    assert [(p.pool, p.dims) for p in cost.points] == [("4", 48), ("8", 192)]
    train = 1295 * 48 * 4 + SHARD_OVERHEAD  # rows x dims x float32, one shard
    assert cost.points[0].bytes["train"] == cost.points[0].new["train"] == train
    assert cost.seconds is None and "no CUDA device" in cost.calibration
    head = cost.cells[0].head_bytes
    assert head == 1 * 10 * 49 * 16  # 1 grid point x 10 classes x (48 + bias) x 4 B x 4
    # the most the head holds at once, in float32: train and val in the search (its memory plan)
    assert cost.cells[0].probe_bytes == (1295 + 143) * 48 * 4
    text = "\n".join(dry.lines)
    assert f"image pool=4  [{cost.cells[0].identity[:12]}]: 48 dims; disk train {size(train)}" in text
    assert "1,797 images through the backbone, time unknown" in text
    assert re.search(r"1 job, 2 cells, 0 already done; 1,797 images to extract, 2 feature points"
                     r"; [\d.]+ [kM]B new cache", text)
    assert dry.disk is not None and dry.disk.fits and "fits" in dry.lines[-1]

    [record] = run(_spec(pools=["4"]), OPTIONS)  # the estimate against the files written
    entry = FeatureCache().find(record.cache_keys["train"][0])[0]
    written = entry.shard_path(0).stat().st_size
    assert train - SHARD_OVERHEAD < written < train
    again = describe(plan)
    assert again.costs[0].points[0].new == {"train": 0, "val": 0, "test": 0}
    assert again.costs[0].points[1].new["train"] == train * 4 - 3 * SHARD_OVERHEAD


def test_bench_run_prints_the_cost_before_extracting(capsys):
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--pool", "4", *FLAGS]) == 0
    err = capsys.readouterr().err
    notice = err[err.index("extracting 1,797 images"):err.index("first batch:")]
    assert "image pool=4" in notice and "48 dims; disk train" in notice
    assert "probe memory about" in notice and "head state (1 x 10 x 49 x 4 B x 4)" in notice
    assert "fits" in notice


# --- the disk preflight -----------------------------------------------------------------------
@pytest.fixture
def tiny_disk(monkeypatch):
    from bench.run import costs

    monkeypatch.setattr(costs.shutil, "disk_usage", lambda path: Usage(10 ** 9, 10 ** 9 - 1000, 1000))


def test_a_run_that_would_fill_the_disk_is_refused_before_anything_is_written(
        tiny_disk, tmp_path, capsys):
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FLAGS]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1, err
    assert re.search(r"needs 5\.\d MB in .*cache, which has 1\.0 kB free; nothing was started",
                     err[0]), err
    assert "--cache-dtype fp16" in err[0] and "fewer feature points" in err[0]
    assert "--cache-dir on a larger disk" in err[0]
    assert not _entries(tmp_path) and not records()
    # already in fp16: halving is no longer offered
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--cache-dtype", "fp16",
                 *FLAGS]) == 2
    assert "--cache-dtype fp16" not in capsys.readouterr().err


def test_a_sweep_that_would_fill_the_disk_says_so_in_its_dry_run_and_never_starts(
        tiny_disk, tmp_path, capsys):
    args = ["sweep", "--backbones", "pixels,random-unet", "--tasks", "digits", *FLAGS]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "does NOT fit: bench sweep would refuse to start" in out
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "this sweep would fill the disk under the feature cache" in err
    assert not _entries(tmp_path) and not records()


# --- --no-keep-features -----------------------------------------------------------------------
def test_no_keep_features_deletes_the_entries_once_logged_and_a_rerun_reuses(capsys, tmp_path):
    [kept] = run(_spec(), OPTIONS)
    [gone] = run(_spec(keep_features=False), OPTIONS)
    assert gone.identity != kept.identity and not gone.reused
    assert gone.protocol["features_kept"] is False and "features_kept" not in kept.protocol
    assert not _entries(tmp_path)  # every entry it read is deleted
    assert "deleted 3 cache entries" in capsys.readouterr().err
    assert {r.identity for r in records()} == {kept.identity, gone.identity}  # alternatives
    [again] = run(_spec(keep_features=False), OPTIONS)
    assert again.reused and again.run_id == gone.run_id and not _entries(tmp_path)


def test_jobs_sharing_features_extract_once_and_the_last_deletes(monkeypatch, tmp_path):
    from bench.features import extract as extraction
    from bench.run.jobs import BenchJob, share_features

    written = []
    real = extraction.extract

    def counting(*args, **kwargs):
        report = real(*args, **kwargs)
        written.append(report.shards_written)
        return report

    monkeypatch.setattr(extraction, "extract", counting)
    report = run_seeds(_spec(keep_features=False), [0, 1], OPTIONS)
    assert len(report.records) == 2 and sum(written) == 3  # one shard per split, once
    assert not _entries(tmp_path)
    jobs = [BenchJob(_spec(keep_features=False, seed=s), OPTIONS) for s in (0, 1)]
    with pytest.raises(ValueError, match="runs them at once, so one could delete them"):
        share_features(jobs, sequential=False)
    share_features(jobs[:1], sequential=False)  # a job alone owns its features


def test_calibration_skips_a_corrupt_first_image_only_under_skip_corrupt():
    from bench.features.extract import calibration_images as _images
    from bench.task import CorruptImageError, DatasetError

    class Split:
        name, items = "train", ["bad.png", "a.png", "b.png"]

        def __len__(self):
            return 3

        def load(self, index):
            if index == 0:
                raise CorruptImageError("bad.png", "truncated")
            return index

    assert _images(Split(), lambda image: image * 10, 2, skip_corrupt=True) == [10, 20]
    with pytest.raises(CorruptImageError, match="bad.png"):
        _images(Split(), lambda image: image, 2, skip_corrupt=False)
    Split.load = lambda self, index: (_ for _ in ()).throw(CorruptImageError("x", "bad"))
    with pytest.raises(DatasetError, match="no image of the train split decodes"):
        _images(Split(), lambda image: image, 2, skip_corrupt=True)


def test_a_sweep_of_two_heads_without_keeping_features_extracts_once_and_leaves_none(
        tmp_path, capsys):
    args = ["sweep", "--backbones", "pixels", "--tasks", "digits", "--grid",
            "head=linear,bn-linear", "--no-keep-features", *FLAGS]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("deleted 3 cache entries") == 1 and err.count("extracting 1,797") == 1
    assert not _entries(tmp_path) and len(records()) == 2
    from bench.results.store import client

    logged = [client().get_run(r.run_id).data.params for r in records()]
    assert [params["protocol.features_kept"] for params in logged] == ["False", "False"]


# --- a 16-bit type that keeps no information ------------------------------------------------
SHIFT_FLAGS = ["--epochs", "5", "--lrs", "1e-1", "--wds", "0", "--workers", "0", "--no-progress"]


def _shifted(tmp_path, *args: str) -> list[str]:
    module = tmp_path / "big.py"
    module.write_text(BIG)
    return ["run", "--backbone", f"{module}:shifted", "--task", "digits", *args, *SHIFT_FLAGS]


def test_a_policys_16_bit_cache_that_would_keep_nothing_stores_float32_and_says_so(
        tmp_path, capsys):
    """--precision bf16 stores float16 unless told otherwise (auto on a GPU does too): features
    4000 + pixel lose every pixel in float16 (its step at 4000 is 2). The run caches float32
    instead, says so in one line, and its identity and cache key say float32."""
    assert main(_shifted(tmp_path, "--precision", "fp32")) == 0
    capsys.readouterr()
    assert main(_shifted(tmp_path, "--precision", "bf16")) == 0
    notes = [line for line in _errors(capsys.readouterr().err) if "float16" in line]
    assert len(notes) == 1 and "caching float32 instead" in notes[0], notes
    assert "float16 loses 51 of the 51 dimensions that vary" in notes[0], notes
    from bench.results.store import client

    def params(record):
        return client().get_run(record.run_id).data.params

    half, exact = sorted(records(), key=lambda r: params(r)["protocol.precision.name"])
    assert params(half)["protocol.precision.name"] == "bf16"
    assert params(half)["protocol.precision.storage"] == "float32"
    stored = {json.loads(p.read_text())["fields"]["storage"] for p in _entries(tmp_path)}
    assert stored == {"float32"}
    assert exact.metrics["test_top1"] > 80  # the pixels separate the digits
    assert abs(half.metrics["test_top1"] - exact.metrics["test_top1"]) < 3


@pytest.mark.parametrize("dtype, backbone_args, better", [
    ("fp16", [], "use --cache-dtype fp32"),  # offset: bfloat16's step at 4000 is 16
    ("bf16", [], "use --cache-dtype fp32"),
    ("fp16", ["--backbone-arg", "offset=0", "--backbone-arg", "gain=1e-9"],
     "use --cache-dtype bf16 or fp32"),  # below float16's smallest step: all zeros
    ("bf16", ["--backbone-arg", "offset=1e6"], "use --cache-dtype fp32"),
])
def test_a_chosen_16_bit_cache_dtype_that_would_keep_nothing_is_refused_before_work(
        dtype, backbone_args, better, tmp_path, capsys):
    assert main(_shifted(tmp_path, "--cache-dtype", dtype, *backbone_args)) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "dimensions that vary" in err[0] and better in err[0], err
    assert not _entries(tmp_path) and not records()  # refused before anything was written


def test_a_16_bit_type_that_keeps_the_features_is_kept():
    backbone = bench.create_backbone("pixels", size=4)
    rng = np.random.default_rng(0)
    normal = {("image", "1"): torch.from_numpy(rng.normal(size=(16, 256)).astype(np.float32))}
    for dtype in ("float16", "bfloat16"):
        check_storage(backbone, normal, dtype)
    # one dimension of 256 that float16 rounds away is not worth doubling the cache for
    one = normal[("image", "1")].clone()
    one[:, 0] += 4000
    check_storage(backbone, {("image", "1"): one}, "float16")
    constant = torch.full((16, 256), 4000.0)  # nothing to lose: every image gives the same
    check_storage(backbone, {("image", "1"): constant}, "float16")


def test_probe_inputs_in_float16_that_would_keep_nothing_become_float32():
    """On a GPU, bf16 reads features as float16 even from a float32 cache."""
    from bench.features.extract import storage_policy

    gpu = resolve_precision("bf16", "cuda")
    backbone = bench.create_backbone("pixels", size=4)
    shifted = {("image", "1"): torch.rand(16, 48) + 4000}
    explicit = storage_policy(backbone, shifted, with_cache_dtype(gpu, "fp32"), chosen=True)
    assert explicit.policy.storage == explicit.policy.probe_inputs == "float32"
    assert "probe reads them in float32" in explicit.note
    auto = storage_policy(backbone, shifted, gpu, chosen=False)
    assert auto.policy.storage == auto.policy.probe_inputs == "float32"
    assert "caching float32 instead" in auto.note
    with pytest.raises(CacheDtypeError, match="use --cache-dtype fp32"):
        storage_policy(backbone, shifted, with_cache_dtype(gpu, "fp16"), chosen=True)
    kept = storage_policy(backbone, {("image", "1"): torch.rand(16, 48)}, gpu, chosen=False)
    assert kept.policy == gpu and kept.note == ""


# --- --no-keep-features and bench cache rm never remove what another run reads --------------
def test_no_keep_features_skips_the_entries_another_run_is_reading(monkeypatch, capsys,
                                                                  tmp_path):
    """Run A (keeping its features) is probing when run B (--no-keep-features, same features)
    finishes: B keeps the entries A reads and says so in one line; A finishes and logs."""
    from bench import protocol

    real, nested = protocol.evaluate, []

    def evaluate_while_another_run_finishes(trainer, data, *args):
        if not nested:  # A: its features are open; B runs to its end meanwhile
            nested.append(None)
            nested[0] = run(_spec(keep_features=False), OPTIONS)
        return real(trainer, data, *args)

    monkeypatch.setattr(protocol, "evaluate", evaluate_while_another_run_finishes)
    [a] = run(_spec(), OPTIONS)
    [[b]] = nested
    assert a.metrics["test_top1"] > 50 and b.metrics["test_top1"] > 50
    err = _errors(capsys.readouterr().err)
    kept = [line for line in err if line.startswith("kept")]
    assert len(kept) == 1 and "kept 3 cache entries" in kept[0], err
    assert "another run is reading" in kept[0] and "deleted" not in "".join(err)
    assert len(_entries(tmp_path)) == 3  # A keeps its features
    assert {r.identity for r in records()} == {a.identity, b.identity}
    [again] = run(_spec(keep_features=False, seed=1), OPTIONS)  # nobody reads them now
    assert not _entries(tmp_path) and "deleted 3 cache entries" in capsys.readouterr().err


def test_cache_rm_keeps_an_entry_a_run_is_reading(capsys, tmp_path):
    from bench.features.cache import reading

    entry = _digits_entry(tmp_path / "cache", "fp32")
    args = ["cache", "rm", entry.key[:12], "--cache-dir", str(tmp_path / "cache")]
    with reading([entry]):
        assert main(args) == 1
        assert "a run is reading it" in capsys.readouterr().out
        assert entry.complete()
    assert main(args) == 0 and not entry.path.exists()


def test_a_reader_waiting_on_a_removal_holds_the_entry_recreated_after_it(tmp_path):
    """A run that starts reading while the entry is being removed waits, then holds the entry
    its extraction creates again: a second removal must skip it."""
    import threading

    from bench.features.cache import READERS, FeatureCache, reading
    from bench.locks import exclusive_if_free

    entry = _digits_entry(tmp_path, "fp32")
    cache, held, release = FeatureCache(tmp_path), threading.Event(), threading.Event()

    def reader():
        with reading([entry]):
            held.set()
            release.wait(10)

    with exclusive_if_free(entry.path / READERS) as free:  # what a removal does
        assert free
        thread = threading.Thread(target=reader)
        thread.start()
        assert not held.wait(0.3)  # waits while the removal holds the entry
        shutil.rmtree(entry.path)
    assert held.wait(5)
    _digits_entry(tmp_path, "fp32")  # the reader's extraction writes it again
    assert not cache.remove(entry) and entry.complete()
    release.set()
    thread.join()
    assert cache.remove(entry) and not entry.path.exists()
