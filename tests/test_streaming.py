"""Probes that stream their features from the cache: the same numbers as in memory, within a
memory budget, and one-line errors for a budget below a minibatch or a shard that changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.errors import UsageError
from bench.features.cache import CorruptShardError, FeatureCache
from bench.heads import streaming
from bench.heads.streaming import Batches, Rows, epoch_order, epoch_windows
from bench.protocol import ProbeData

CLASSES, DIM = 10, 8
SIZES = {"train": 40_000, "val": 3_000, "test": 2_000}  # train spans three order windows
pytestmark = pytest.mark.usefixtures("one_thread")


def _entry(root, split: str, x: np.ndarray, y: np.ndarray, shard_size: int):
    entry = FeatureCache(root).entry({"split": split, "shape": list(x.shape[1:])})
    entry.create({"split": split}, y, shard_size)
    for i, start in enumerate(range(0, len(x), shard_size)):
        entry.write_shard(i, x[start : start + shard_size], [])
    return entry


def _cached(root, shape=(DIM,), sizes=SIZES, shard_size=3_000) -> ProbeData:
    """Gaussian classes written through the real cache in fp16, opened memory-mapped."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLASSES, *shape))
    features, labels = {}, {}
    for split, n in sizes.items():
        y = np.sort(rng.integers(0, CLASSES, n))  # class-sorted rows, as ImageNet's files are
        x = (centres[y] + 1.5 * rng.normal(size=(n, *shape))).astype(np.float16)
        features[split], labels[split], _ = _entry(root, split, x, y, shard_size).open()
    return ProbeData(features, labels, CLASSES)


def _budgets(data: ProbeData, batch_size: int) -> dict[str, int | None]:
    """A budget per reading mode of the train split (fp32 inputs): memory, windows, rows; each
    keeps one validation step (as many bytes as a train step here) free beside train."""
    rows = Rows([data.features["train"]])
    need = max(batch_size, streaming.CHUNK_ROWS) * DIM * (2 + 4 + 4)
    windows = 2 * streaming.WINDOW_ROWS * rows.row_bytes() + need
    budgets = {"memory": None, "windows": windows + need, "rows": 2 * need}
    for mode, budget in budgets.items():
        assert Batches(rows, None, batch_size, torch.device("cpu"), torch.float32,
                       budget, reserve=need).mode == mode
    return budgets


def _search_and_refit(trainer, data: ProbeData, budget: int | None):
    data.memory_budget = budget
    records = trainer.search(data)
    best = max(records, key=lambda r: r["top1"])
    point = {k: v for k, v in best.items() if k in ("lr", "weight_decay", "epochs", "k")}
    return records, trainer.refit_predict(data, point)


def test_the_order_is_one_permutation_of_blocks_and_window_rows():
    gen = torch.Generator().manual_seed(3)
    n = 2 * streaming.WINDOW_ROWS + 100
    windows = epoch_windows(n, gen)
    order = np.concatenate([w.rows[w.perm] for w in windows])
    assert sorted(order.tolist()) == list(range(n))  # every row once
    assert len(windows) == 3 and all(len(w.runs()) <= streaming.WINDOW_BLOCKS for w in windows)
    for w in windows:  # a window is whole blocks: a reader reads a few contiguous runs
        assert set((w.rows // streaming.BLOCK_ROWS).tolist()) == set(
            (w.rows[w.perm] // streaming.BLOCK_ROWS).tolist())
    # a minibatch of a class-sorted split mixes many blocks, not a few neighbours
    assert len(set((order[:256] // streaming.BLOCK_ROWS).tolist())) > 100
    again = epoch_order(n, torch.Generator().manual_seed(3))
    assert np.array_equal(order, again)  # the seed alone sets it


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_grid_probe_streamed_equals_in_memory(tmp_path, head):
    from bench.heads.probe import GridProbeTrainer, ProbeConfig
    from bench.precision import FP32

    data = _cached(tmp_path)
    cfg = ProbeConfig(head=head, lrs=(1e-3, 1e-2), weight_decays=(0.0, 1e-2), epochs=2,
                      eval_every=1, hidden=16)
    results = {mode: _search_and_refit(GridProbeTrainer(cfg, "cpu", FP32), data, budget)
               for mode, budget in _budgets(data, cfg.batch_size).items()}
    records, logits = results["memory"]
    assert len(records) >= 6 and max(r["top1"] for r in records) > 30  # it learned something
    for mode in ("windows", "rows"):
        assert results[mode][0] == records  # every grid point's validation metrics, exactly
        assert torch.equal(results[mode][1], logits)  # the refit's test logits, exactly


def test_knn_streamed_equals_in_memory(tmp_path):
    from bench.heads import knn
    from bench.heads.knn import KnnConfig, KnnTrainer

    data = _cached(tmp_path)
    bank, queries = Rows([data.features["train"]]), Rows([data.features["val"]])
    assert knn.knn_memory(bank, queries, None) == (True, True)
    step = knn.BANK_ROWS * DIM * 6 + knn.QUERY_ROWS * (DIM * 6 + 4 * knn.BANK_ROWS)
    assert knn.knn_memory(bank, queries, step) == (False, False)  # both streamed
    trainer = KnnTrainer(KnnConfig(ks=(10, 50)))
    records, logits = _search_and_refit(trainer, data, None)
    streamed = _search_and_refit(trainer, data, step)
    assert records == streamed[0] and torch.equal(logits, streamed[1])
    assert records[0]["top1"] > 30
    with pytest.raises(UsageError, match="below one kNN minibatch"):
        _search_and_refit(trainer, data, step - 1)


def test_attention_head_streamed_equals_in_memory(tmp_path):
    from bench.heads.attention import AttentionTrainer, HeadConfig
    from bench.precision import FP32

    data = _cached(tmp_path, shape=(4, 2, 2), sizes={"train": 300, "val": 60, "test": 40},
                   shard_size=70)
    data.features = {s: {"block": x} for s, x in data.features.items()}
    cfg = HeadConfig(recipe="adamw", lrs=(1e-3, 1e-2), epochs=2, eval_every=1, batch_size=32,
                     dim=8, heads=2, depth=1)
    # one minibatch of 4x2x2 fp16 maps: the one training and the one gathered ahead as stored,
    # the first in float32; the search keeps val's beside train's (bench.heads.memory)
    batch = 32 * 16 * (2 * 2 + 4)
    memory = _search_and_refit(AttentionTrainer(cfg, "cpu", FP32), data, None)
    streamed = _search_and_refit(AttentionTrainer(cfg, "cpu", FP32), data, 2 * batch)
    assert streamed[0] == memory[0] and torch.equal(streamed[1], memory[1])
    with pytest.raises(UsageError, match="below one attention-head minibatch"):
        _search_and_refit(AttentionTrainer(cfg, "cpu", FP32), data, 2 * batch - 1)


def test_budget_below_one_minibatch_is_refused_before_training(tmp_path, monkeypatch):
    from bench.heads import probe
    from bench.heads.probe import GridProbeTrainer, ProbeConfig
    from bench.precision import FP32

    data = _cached(tmp_path, sizes={"train": 2_000, "val": 300, "test": 200})
    monkeypatch.setattr(probe, "train_grid", lambda *a, **k: pytest.fail("it trained"))
    data.memory_budget = 1000
    with pytest.raises(UsageError, match=r"memory budget 1\.0 kB is below one probe minibatch "
                                         r"\(256 rows x 8 dims"):
        GridProbeTrainer(ProbeConfig(), "cpu", FP32).search(data)


class _ChangesAShard:
    """Train features whose first shard's bytes are overwritten after a few reads."""

    def __init__(self, rows, path, after: int):
        self.rows, self.path, self.after, self.reads = rows, path, after, 0
        self.shape, self.dtype = rows.shape, rows.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index, axis=0):
        self.reads += 1
        if self.reads == self.after:
            with open(self.path, "r+b") as f:
                f.seek(-64, 2)
                f.write(b"\x00" * 64)
        return self.rows.take(index, axis=axis)


def test_a_shard_that_changes_while_streaming_raises_the_checksum_error(tmp_path):
    from bench.heads.probe import GridProbeTrainer, ProbeConfig
    from bench.precision import FP32

    data = _cached(tmp_path, sizes={"train": 4_000, "val": 300, "test": 200}, shard_size=1000)
    train = data.features["train"]
    data.features["train"] = _ChangesAShard(train, train.shards[0].filename, after=30)
    data.memory_budget = 1024 * DIM * 10  # rows mode: a gather per minibatch
    cfg = ProbeConfig(lrs=(1e-2,), weight_decays=(0.0,), epochs=3)
    with pytest.raises(CorruptShardError, match="shard-00000.npy is corrupt.*checksum mismatch"):
        GridProbeTrainer(cfg, "cpu", FP32).search(data)


def test_cli_refuses_a_budget_below_a_minibatch_logs_nothing_and_keeps_the_cache(capsys):
    from bench.cli import main

    from .conftest import records

    run = ["run", "--backbone", "pixels", "--task", "digits", "--workers", "0",
           "--backbone-arg", "size=8", "--epochs", "2", "--no-progress"]
    assert main([*run, "--memory-budget", "1KB"]) == 2
    err = capsys.readouterr().err
    assert "memory budget 1.0 kB is below one probe minibatch" in err and "Traceback" not in err
    assert "extracting" not in err  # refused before extraction (issue 31, item 10)
    assert records() == []
    with pytest.raises(SystemExit) as exit:
        main([*run, "--memory-budget", "bogus"])
    assert exit.value.code == 2 and "memory size 'bogus'" in capsys.readouterr().err
    assert main([*run, "--memory-budget", "64MB"]) == 0
    assert "extracting" in capsys.readouterr().err
    assert len(records()) == 1


def test_budget_sizes_parse_and_are_not_identity():
    from bench.ranges import parse_size
    from bench.run.spec import RunOptions

    assert parse_size("512MB") == 512 * 10**6 and parse_size("4GB") == 4 * 10**9
    assert parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("auto") == "auto"
    with pytest.raises(UsageError, match="memory_budget=0"):
        RunOptions(memory_budget=0)
    import dataclasses

    from bench.run.spec import RunSpec

    assert "memory_budget" not in {f.name for f in dataclasses.fields(RunSpec)}


# --- issue 31, item 10: a budget a head cannot run in is refused before extraction ----------
BUDGET_RUN = ["run", "--backbone", "pixels", "--task", "digits", "--workers", "0",
              "--backbone-arg", "size=8", "--epochs", "2", "--no-progress"]


def test_a_budget_below_one_minibatch_is_refused_before_extraction_with_its_arithmetic(
        capsys, tmp_path):
    """pixels at 8 px: 192 dims in float32 on the CPU: a minibatch of train (256 rows) and one
    of val (its 143 rows) as read, as the probe's input and standardised: 12 B a number."""
    from bench.cli import main

    from .conftest import records

    assert main([*BUDGET_RUN, "--memory-budget", "1KB"]) == 2
    err = capsys.readouterr().err
    train, val = 256 * 192 * 12, 143 * 192 * 12
    assert (train, val, train + val) == (589_824, 329_472, 919_296)
    assert ("memory budget 1.0 kB is below one probe minibatch (256 rows x 192 dims x 12 B "
            "[4 stored + 4 input + 4 working] = 589.8 kB, train) + one probe minibatch (143 rows "
            "x 192 dims x 12 B [4 stored + 4 input + 4 working] = 329.5 kB, val) = 919.3 kB: "
            "give --memory-budget 919.3kB or more (or auto), or lower batch_size") in err
    assert "extracting" not in err and not (tmp_path / "results" / "cache").exists()
    assert main([*BUDGET_RUN, "--memory-budget", str(train + val - 1)]) == 2  # one byte short
    assert "is below one probe minibatch" in capsys.readouterr().err
    assert main([*BUDGET_RUN, "--memory-budget", "919.3kB"]) == 0  # the advice is enough
    assert "every split in memory" not in capsys.readouterr().err and len(records()) == 1


@pytest.mark.parametrize("head, pool", [
    ("mlp", ""), ("bn-linear", ""), ("logreg", ""), ("knn", ""), ("few-shot", ""),
    ("attention", "map2"),
])
def test_every_head_refuses_a_budget_it_cannot_run_in_and_its_advice_is_enough(head, pool,
                                                                               capsys, tmp_path):
    """Each head's own least (its memory plan), refused by the dry run and the run before any
    extraction; the budget the refusal advises passes the same check."""
    import re

    from bench.cli import main

    sweep = ["sweep", "--backbones", "pixels", "--tasks", "digits", "--backbone-arg", "size=8",
             "--head", head, "--dry-run", *(["--grid", f"pool={pool}"] if pool else [])]
    flags = ["--epochs", "2"] if head not in ("logreg", "knn") else []
    assert main([*sweep, *flags, "--memory-budget", "1KB"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"memory budget 1\.0 kB is below .* = [\d.]+ [kM]B(; another phase of the "
                     r"head needs [\d.]+ [kM]B)?: give --memory-budget", err)
    advice = re.search(r"give --memory-budget (\S+) or more", err)[1]
    run = ["run", "--backbone", "pixels", "--task", "digits", "--backbone-arg", "size=8",
           "--head", head, *(["--pool", pool] if pool else []), "--workers", "0",
           "--no-progress", *flags]
    assert main([*run, "--memory-budget", "1KB"]) == 2
    assert "extracting" not in capsys.readouterr().err
    assert not (tmp_path / "results" / "cache").exists()
    assert main([*sweep, *flags, "--memory-budget", advice]) == 0
