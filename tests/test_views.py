"""Augmented train views in the cache (``--views V``, issue 30): each train view is extracted
once into its own cache entries (its images drawn by ``ViewTransform``, a stochastic backbone's
noise by ``view_sample_ids``), epoch e of an epoch-trained head reads view e mod V, one view
leaves every identity as it was, costs count the views, and bad input is refused before any
work."""

from __future__ import annotations

import shlex

from dataclasses import replace

import numpy as np
import pytest
import torch

import bench
from bench.backbone import view_sample_ids
from bench.errors import UsageError
from bench.features.augment import TrainView, ViewTransform, augmentation
from bench.features.cache import FeatureCache
from bench.run.spec import RunOptions, RunSpec, resolve

CPU = torch.device("cpu")
PIXELS = dict(backbone="pixels", task="digits", backbone_args={"size": 8}, pools=["8"])
# the keys a resolved protocol had before --views: a run of one view must have exactly these
PROTOCOL_KEYS = {"result_schema", "protocol_version", "bench_version", "backbone",
                 "weights_sha256", "task", "split_manifests", "features", "head", "groups",
                 "precision", "skip_corrupt", "image_reader"}


def _options(tmp_path, **kw) -> RunOptions:
    return RunOptions(workers=0, progress=False, cache_dir=str(tmp_path / "cache"), **kw)


def _entries(prepared, options):
    """Part name -> the cache entry of the run's one feature point."""
    from bench.run.costs import entries_of

    [by_part] = entries_of(prepared, FeatureCache(options.cache_dir)).values()
    return by_part


def test_one_view_leaves_the_identity_and_the_cache_keys_as_they_were(tmp_path):
    from bench.digest import json_digest

    options = _options(tmp_path)
    plain = resolve(RunSpec(**PIXELS), options)
    explicit = resolve(RunSpec(**PIXELS, views=1, augment="paper"), options)
    run = plain.run
    [cell] = run.cells
    assert set(run.protocol(cell)) == PROTOCOL_KEYS  # nothing added: identities as before
    assert cell.identity == json_digest(run.protocol(cell))[:32]
    assert [c.identity for c in explicit.run.cells] == [cell.identity]
    assert explicit.run.settings == run.settings == {"backbone_args": {"size": 8}}
    assert [p.name for p in run.parts] == ["train", "val", "test"]
    from bench.features.extract import entry_fields

    # the entries are the plain ones: no view in their key

    task = plain.task
    key = FeatureCache(options.cache_dir).entry(entry_fields(
        plain.backbone, run.task_config, task.split("train"), "image", "8",
        run.precision)).key
    assert _entries(plain, options)["train"].key == key

    several = resolve(RunSpec(**PIXELS, views=2), options).run
    [other] = several.cells
    assert other.identity != cell.identity
    views = several.protocol(other)["views"]
    assert views["count"] == 2 and views["augmentation"] == "paper"
    assert "random s x s crop" in views["description"]
    # a chosen setting: an alternative of the same cell, never its successor
    assert several.settings["views"] == {"count": 2, "augmentation": "paper"}


def _by_hand(backbone, split, view: int, seed: int, request, rows: range) -> np.ndarray:
    """View ``view`` of items ``rows`` computed here: the augmentation by ``ViewTransform``,
    then the backbone with the view's sample ids."""
    transform = ViewTransform("paper", backbone.input_size, seed, view, backbone.transform())
    x = torch.stack([transform(split.load(i), i) for i in rows])
    ids = view_sample_ids(torch.tensor(list(rows)), view)
    with torch.inference_mode():
        return backbone.eval().extract(x, [request], ids)[request].float().numpy()


def test_each_view_is_extracted_once_into_its_own_entries(tmp_path, capsys):
    from bench.cli import main
    from bench.run.jobs import ExtractJob

    options = _options(tmp_path)
    spec = RunSpec(**PIXELS, views=2, seed=3)
    written = ExtractJob(spec, options)()
    assert list(written) == ["train view 0", "train view 1", "val", "test"]
    assert ExtractJob(spec, options)() == dict.fromkeys(written, 0)  # all cached: nothing redone
    prepared = resolve(spec, options)
    entries = _entries(prepared, options)
    views = [entries[f"train view {v}"].load()[0] for v in (0, 1)]
    plain = resolve(RunSpec(**PIXELS), options)
    ExtractJob(RunSpec(**PIXELS), options)()
    centre = _entries(plain, options)
    assert entries["val"].key == centre["val"].key and entries["test"].key == centre["test"].key
    assert len({entries["train view 0"].key, entries["train view 1"].key,
                centre["train"].key}) == 3
    assert entries["train view 1"].manifest["fields"]["view"] == {
        "augmentation": "paper", "description": augmentation("paper").description, "view": 1,
        "seed": 3}
    centre_train = centre["train"].load()[0]
    assert views[0].shape == views[1].shape == centre_train.shape
    assert not np.allclose(views[0], views[1])
    assert not np.allclose(views[0], centre_train) and not np.allclose(views[1], centre_train)
    split = prepared.task.split("train")
    for v in (0, 1):  # the cached rows are the views computed independently
        np.testing.assert_array_equal(
            views[v][:40], _by_hand(prepared.backbone, split, v, 3, ("image", "8"), range(40)))
    # determinism: a fresh cache, the same views; another seed, other views
    again = _options(tmp_path / "again")
    ExtractJob(spec, again)()
    rerun = _entries(resolve(spec, again), again)
    for v in (0, 1):
        assert rerun[f"train view {v}"].key == entries[f"train view {v}"].key
        np.testing.assert_array_equal(rerun[f"train view {v}"].load()[0], views[v])
    assert _entries(resolve(replace(spec, seed=4), options), options)[
        "train view 0"].key != entries["train view 0"].key
    capsys.readouterr()
    assert main(["cache", "ls", "--cache-dir", options.cache_dir]) == 0
    listed = capsys.readouterr().out
    assert "digits/train view 1 " in listed and "digits/train " in listed


def test_a_stochastic_backbone_draws_each_views_noise_by_its_sample_ids(tmp_path):
    from bench.features.extract import extract

    backbone = bench.create_backbone("diffusion-tiny")
    task = bench.create_task("digits")
    split = task.split("train").subset(range(6))
    request = ("block24@t90", "2")
    cache = FeatureCache(tmp_path / "cache")
    for v in (0, 1):
        report = extract(backbone, split, [request], cache, task.config, device=CPU,
                         progress=False, view=TrainView("paper", v, 0))
        cached = report.entries[request].load()[0]
        np.testing.assert_allclose(cached, _by_hand(backbone, split, v, 0, request, range(6)),
                                   rtol=1e-5, atol=1e-6)
    # the ids matter: view 1's augmented images with view 0's noise give other features
    assert not np.allclose(cached, _with_ids(backbone, split, 1, request, torch.arange(6)),
                           atol=1e-4)


def _with_ids(backbone, split, view, request, ids) -> np.ndarray:
    transform = ViewTransform("paper", backbone.input_size, 0, view, backbone.transform())
    x = torch.stack([transform(split.load(i), i) for i in range(len(ids))])
    with torch.inference_mode():
        return backbone.extract(x, [request], ids)[request].float().numpy()


def _probe_data(views: int, n: int = 96, dim: int = 6):
    from bench.protocol import ProbeData

    rng = np.random.default_rng(0)
    y = {s: np.arange(n) % 3 for s in ("train", "val", "test")}
    x = {s: rng.normal(size=(n, dim)).astype(np.float32) + y[s][:, None] for s in y}
    train = [x["train"] + v for v in range(views)]  # each view its own rows
    return ProbeData({**x, "train": train[0]}, y, 3, views=train if views > 1 else [])


def test_epoch_e_of_the_grid_probe_reads_view_e_mod_v(monkeypatch):
    from bench.heads import streaming
    from bench.heads.probe import GridProbeTrainer, ProbeConfig
    from bench.precision import FP32
    from bench.protocol import evaluate

    data = _probe_data(3)
    read: list[int] = []
    epoch = streaming.Batches.epoch

    def recorded(self, gen):
        read.append(next(v for v, x in enumerate(data.views) if self.rows.parts[0] is x))
        return epoch(self, gen)

    monkeypatch.setattr(streaming.Batches, "epoch", recorded)
    cfg = ProbeConfig(lrs=(0.01,), weight_decays=(0.0,), epochs=5, eval_every=5, batch_size=32)
    result = evaluate(GridProbeTrainer(cfg, CPU, FP32), data)
    assert read == [0, 1, 2, 0, 1] * 2  # the search, then the refit on train+val
    assert result.best["epochs"] == 5


def test_the_views_statistics_cover_every_view():
    from bench.heads.probe import _Normaliser
    from bench.heads.streaming import Batches, Rows, ViewCycle

    data = _probe_data(2)

    def batches(view: int) -> Batches:
        return Batches(Rows([data.views[view]]), data.labels["train"], 32, CPU, torch.float32)

    norm = _Normaliser(ViewCycle(batches, 2), batchnorm=False)
    both = np.concatenate(data.views).astype(np.float64)
    np.testing.assert_allclose(norm.mean.numpy(), both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.scale.numpy(), 1 / both.std(0), rtol=1e-5)


def test_a_garbage_view_changes_what_the_probe_learns():
    """The second view is read: shuffled rows in it change the result, the same rows do not."""
    from bench.heads.probe import GridProbeTrainer, ProbeConfig
    from bench.precision import FP32
    from bench.protocol import evaluate

    cfg = ProbeConfig(lrs=(0.1,), weight_decays=(0.0,), epochs=4, eval_every=4, batch_size=32)
    data = _probe_data(1)

    def logits(views):
        trainer = GridProbeTrainer(cfg, CPU, FP32)
        return trainer.refit_predict(replace(data, views=views), {"lr": 0.1, "weight_decay": 0,
                                                                   "epochs": 4})

    one = logits([])
    assert torch.equal(one, logits([data.features["train"]] * 2))
    garbage = np.random.default_rng(1).permutation(data.features["train"])
    assert not torch.allclose(one, logits([data.features["train"], garbage]))
    assert evaluate(GridProbeTrainer(cfg, CPU, FP32), data).test["top1"] > 60


def test_epoch_e_of_the_attention_head_reads_view_e_mod_v(monkeypatch):
    from bench.heads import attention
    from bench.heads.attention import AttentionTrainer, HeadConfig
    from bench.precision import FP32
    from bench.protocol import ProbeData, evaluate

    rng = np.random.default_rng(0)
    y = {s: np.arange(48) % 2 for s in ("train", "val", "test")}
    maps = {s: {"m": rng.normal(size=(48, 4, 2, 2)).astype(np.float32)} for s in y}
    views = [maps["train"], {"m": maps["train"]["m"] + 1}]
    data = ProbeData({**maps}, y, 2, views=views)
    read: list[int] = []
    batches = attention._Maps.batches

    def recorded(self, chunks, layers, device):
        read.append(next((v for v, x in enumerate(views)
                          if np.array_equal(self.parts[0]["m"], x["m"])), None))
        return batches(self, chunks, layers, device)

    monkeypatch.setattr(attention._Maps, "batches", recorded)
    cfg = HeadConfig(dim=8, heads=2, depth=1, epochs=3, eval_every=3, lrs=(1e-2,),
                     recipe="adamw", batch_size=16)
    evaluate(AttentionTrainer(cfg, CPU, FP32), data)
    training = [v for v in read if v is not None]  # val and test hold no train rows
    assert training == [0, 1, 0] * 2  # the search, then the refit on train+val


def test_costs_count_every_train_view(tmp_path, capsys):
    from bench.cli import main
    from bench.run.costs import job_cost

    options = _options(tmp_path)
    one = resolve(RunSpec(**PIXELS), options)
    three = resolve(RunSpec(**PIXELS, views=3), options)
    cache = FeatureCache(options.cache_dir)
    a, b = (job_cost(p, cache, "x", options.shard_size) for p in (one, three))
    train = len(one.task.split("train"))
    assert sum(b.to_extract.values()) - sum(a.to_extract.values()) == 2 * train
    assert b.images == {"train view 0": train, "train view 1": train, "train view 2": train,
                        "val": a.images["val"], "test": a.images["test"]}
    train_bytes = a.points[0].bytes["train"]
    assert b.new_bytes - a.new_bytes == 2 * train_bytes
    assert all(b.points[0].bytes[f"train view {v}"] == train_bytes for v in range(3))

    def extracted(*flags: str) -> int:
        assert main(["sweep", "--backbones", "pixels", "--tasks", "digits", "--backbone-arg",
                     "size=8", "--grid", "pool=8", "--workers", "0", "--dry-run", *flags]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if "images to extract" in x)
        return int(line.split(" images to extract")[0].rsplit(" ", 1)[1].replace(",", ""))

    assert extracted("--views", "3") - extracted() == 2 * train


@pytest.mark.parametrize("flags, message", [
    (["--views", "0"], "views 0: give a whole number of train views from 1"),
    (["--views", "-2"], "views -2: give a whole number"),
    (["--views", "2", "--head", "knn"], "head 'knn' fits on one fixed set"),
    (["--views", "2", "--head", "logreg"], "head 'logreg' fits on one fixed set"),
    (["--views", "2", "--head", "few-shot"], "head 'few-shot' fits on one fixed set"),
    (["--augment", "paper"], "--augment paper draws the train views of --views V"),
])
def test_bad_views_are_one_line_errors_before_any_work(tmp_path, capsys, flags, message):
    from bench.cli import main

    cache = tmp_path / "cache"
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--workers", "0",
                 "--cache-dir", str(cache), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not cache.exists() or not any(cache.rglob("*.npy"))  # nothing extracted


def test_an_unknown_augmentation_is_refused(capsys):
    from bench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--backbone", "pixels", "--task", "digits", "--views", "2",
              "--augment", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="augmentation"):
        resolve(RunSpec(**PIXELS, views=2, augment="nope"), RunOptions(progress=False))


def _paper(tmp_path, head: str = "linear") -> str:
    import yaml

    digits = {"task": "digits", "head": head, "metric": "top1", "recipe": "bench",
              "head_args": {"epochs": 2} if head == "linear" else {}}
    paper = {"name": "views", "title": "Views", "citation": "test 2026", "tables": [
        {"key": "main", "kind": "table", "title": "Digits", "source": "Table 1",
         "defaults": digits, "cells": [{"id": "px", "backbone": "pixels", "pool": "4",
                                        "value": 90.0}]}]}
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "views.yaml"
    path.write_text(yaml.safe_dump(paper))
    return str(path)


def test_reproduce_passes_the_views_to_every_cell_or_refuses_them(tmp_path, capsys):
    from bench.api import reproduce_plan
    from bench.cli import build_parser, main
    from bench.cli.reproduce import spec_template

    parser = build_parser()
    path = _paper(tmp_path)
    for command in ("reproduce", "report"):  # report finds what reproduce computed
        template = spec_template(parser.parse_args([command, path, "--views", "2"]))
        assert (template.views, template.augment) == (2, "paper")
    options = RunOptions(workers=0, progress=False)
    plan = reproduce_plan(path, None, options, template)
    by_hand = resolve(RunSpec("pixels", "digits", pools=["4"], head_args={"epochs": 2},
                              views=2), options)
    assert plan.cells["px"].identity == by_hand.run.cells[0].identity
    assert plan.cells["px"].identity != reproduce_plan(path, None, options).cells["px"].identity
    # the one `bench run` the report prints for the cell recomputes it, views included
    from bench.study.judge import run_command
    from bench.study.paper import load_paper

    cell = next(c for c in load_paper(path).cells() if c.id == "px")
    command = shlex.split(run_command(cell, template, "bench"))
    assert command[command.index("--views"):][:4] == ["--views", "2", "--augment", "paper"]
    from bench.cli.options import csv, run_spec

    args = parser.parse_args(command[1:])
    spec = run_spec(args, args.backbone, args.task, [v for a in args.layer for v in csv(a)],
                    [v for a in args.pool for v in csv(a)])
    assert resolve(spec, options).run.cells[0].identity == plan.cells["px"].identity
    # a cell whose head cannot use views: the whole command refused, before any work
    assert main(["reproduce", _paper(tmp_path / "knn", "knn"), "--views", "2", "--dry-run",
                 "--workers", "0"]) == 2
    assert "fits on one fixed set" in capsys.readouterr().err


def test_a_run_of_two_views_trains_logs_and_is_reused(tmp_path):
    from bench.api import run

    options = _options(tmp_path)
    spec = RunSpec(**PIXELS, views=2, head_args={"epochs": 4})
    [record] = run(spec, options)
    assert record.protocol["views"]["count"] == 2
    assert set(record.cache_keys) == {"train view 0", "train view 1", "val", "test"}
    assert record.metrics["test_top1"] > 70
    [again] = run(spec, options)
    assert again.reused and again.identity == record.identity
    [plain] = run(replace(spec, views=1), options)
    assert plain.identity != record.identity and not plain.reused
