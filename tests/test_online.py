"""Heads trained through the frozen backbone (``--online``, issue 30): epoch e trains on view e
of each train image with that view's noise, every head of the grid from one forward pass; the
same numbers as a cached ``--views E`` run; no train cache; resumable at a step; heads that need
cached features refuse it before any work."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import bench
from bench.backbone import view_sample_ids
from bench.features.augment import ViewTransform
from bench.run.spec import RunOptions, RunSpec, resolve

CPU = torch.device("cpu")
PIXELS = dict(backbone="pixels", task="digits", backbone_args={"size": 8}, pools=["8"])
# a grid of two points (selection happens), raw features (a cached --views run standardises
# with the statistics of every view, an online one with view 0's: the same numbers only raw)
GRID = {"epochs": 3, "lrs": (3e-2, 0.3), "weight_decays": (0.0,), "standardise": False,
        "eval_every": 1}


def _options(tmp_path, **kw) -> RunOptions:
    return RunOptions(workers=0, progress=False, cache_dir=str(tmp_path / "cache"), **kw)


def _by_hand(backbone, split, view: int, seed: int, request, rows) -> torch.Tensor:
    transform = ViewTransform("paper", backbone.input_size, seed, view, backbone.transform())
    x = torch.stack([transform(split.load(int(i)), int(i)) for i in rows])
    ids = view_sample_ids(torch.as_tensor(np.asarray(rows, dtype=np.int64)), view)
    with torch.no_grad():
        return backbone.eval().extract(x, [request], ids)[request].float().reshape(len(rows), -1)


def test_an_online_minibatch_is_its_view_through_the_backbone():
    """Features of epoch e's minibatch: ``ViewTransform`` view e, noise ``view_sample_ids(ids,
    e)`` (a stochastic backbone), rows in the probe's seeded order."""
    from bench.heads.streaming import epoch_order
    from bench.run.online import OnlineBatches, OnlineSource

    backbone = bench.create_backbone("diffusion-tiny").eval()
    task = bench.create_task("digits")
    split = task.split("train").subset(range(20))
    request = ("block24@t90", "2")
    source = OnlineSource(backbone, split, request, "paper", 0, CPU, "fp32")
    for view in (0, 2):
        batches = OnlineBatches(source, view, batch_size=8)
        gen = torch.Generator().manual_seed(5)
        order = epoch_order(20, torch.Generator().manual_seed(5))
        [(first, labels), *_] = list(batches.epoch(gen))
        torch.testing.assert_close(first, _by_hand(backbone, split, view, 0, request,
                                                   order[:8]), rtol=1e-5, atol=1e-6)
        assert labels.tolist() == split.labels[order[:8]].tolist()
    # fresh noise: view 1 of the same images with view 0's ids is not view 1
    one = OnlineBatches(source, 1, 8).source.features(1, np.arange(4))
    transform = ViewTransform("paper", backbone.input_size, 0, 1, backbone.transform())
    x = torch.stack([transform(split.load(i), i) for i in range(4)])
    with torch.no_grad():
        same_ids = backbone.extract(x, [request], torch.arange(4))[request].reshape(4, -1)
    assert not torch.allclose(one, same_ids, atol=1e-4)


def test_an_online_run_gives_the_numbers_of_a_cached_run_of_as_many_views(tmp_path):
    """The issue's equivalence: E online epochs see exactly the images (and noise) of a cached
    ``--views E`` run, so selection, refit and test give the same numbers; no train cache."""
    from bench.api import run
    from bench.features.cache import FeatureCache

    options = _options(tmp_path)
    spec = RunSpec(**PIXELS, head_args=GRID, seed=2)
    [online] = run(replace(spec, online=True), options)
    cached_keys = {e.key for e in FeatureCache(options.cache_dir).entries()}
    assert set(online.cache_keys) == {"val", "test"}  # train never cached
    assert len(cached_keys) == 2
    [views] = run(replace(spec, views=3), options)
    assert online.identity != views.identity
    assert online.protocol["online"]["augmentation"] == "paper"
    def numbers(record):
        return {k: v for k, v in record.metrics.items() if not k.endswith("seconds")}

    assert numbers(online) == numbers(views) and "test_top1" in numbers(online)
    assert online.metrics["test_top1"] > 50
    assert online.best == views.best
    [again] = run(replace(spec, online=True), options)
    assert again.reused and again.identity == online.identity


def test_online_leaves_existing_identities_as_they_were(tmp_path):
    options = _options(tmp_path)
    plain = resolve(RunSpec(**PIXELS), options).run
    [cell] = plain.cells
    assert "online" not in plain.protocol(cell) and "online" not in plain.settings
    online = resolve(RunSpec(**PIXELS, online=True), options).run
    assert online.cells[0].identity != cell.identity
    assert online.settings["online"] == {"augmentation": "paper"}
    assert [p.name for p in online.parts] == ["val", "test"]


@pytest.mark.parametrize("flags, message", [
    (["--head", "knn"], "head knn needs cached features; drop --online"),
    (["--head", "logreg"], "head logreg needs cached features; drop --online"),
    (["--head", "attention", "--pool", "map2"], "head attention needs cached features"),
    (["--views", "2"], "drop --views 2"),
])
def test_heads_needing_cached_features_refuse_online_before_any_work(tmp_path, capsys, flags,
                                                                      message):
    from bench.cli import main

    cache = tmp_path / "cache"
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--workers", "0",
                 "--cache-dir", str(cache), "--no-progress", "--online", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not cache.exists() or not any(cache.rglob("*.npy"))  # nothing extracted


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("head, args, stop", [
    ("linear", GRID, 8),  # in epoch 2 of the search, after halving at epoch 1
    ("linear", GRID, 21),  # in the refit
    ("bn-linear", {**GRID, "standardise": True}, 10),  # BatchNorm's running statistics too
])
def test_an_interrupted_online_run_resumes_to_the_same_numbers(tmp_path, monkeypatch, head,
                                                                args, stop):
    """A job stopped after ``stop`` steps and run again resumes at the step (its state written
    every step here) and gives exactly the numbers of an uninterrupted run."""
    from bench.api import run
    from bench.run import online
    from bench.run.online import OnlineCheckpoint, checkpoint_path

    monkeypatch.setattr(online, "CHECKPOINT_STEPS", 1)
    options = _options(tmp_path)
    spec = RunSpec(**PIXELS, head=head, head_args=args, seed=1, online=True)
    steps: list[int] = []
    step = OnlineCheckpoint.step

    def counted(self, phase, snapshot, boundary=False):
        step(self, phase, snapshot, boundary)
        steps.append(self.steps)
        if self.steps == stop and not boundary and limit:
            raise Interrupted

    monkeypatch.setattr(OnlineCheckpoint, "step", counted)
    limit = False
    [whole] = run(spec, options)
    total = max(steps)
    assert total > stop
    [cell] = resolve(spec, options).run.cells
    assert not checkpoint_path(options, cell.identity).exists()  # deleted once computed
    limit, steps[:] = True, []
    with pytest.raises(Interrupted):
        run(spec, replace(options, force=True))
    assert checkpoint_path(options, cell.identity).exists()
    limit, steps[:] = False, []
    [resumed] = run(spec, replace(options, force=True))
    assert max(steps) == total - stop  # it restarted at the step, not at the beginning
    assert {k: v for k, v in resumed.metrics.items() if not k.endswith("seconds")} == {
        k: v for k, v in whole.metrics.items() if not k.endswith("seconds")}
    assert resumed.best == whole.best


class _Memory:
    """A ``Resume`` in memory that stops training after ``stop`` steps."""

    def __init__(self, stop: int | None = None):
        self.saved, self.stop, self.steps = {}, stop, 0

    def restored(self, phase):
        return self.saved.get(phase)

    def step(self, phase, snapshot, boundary=False):
        self.steps += not boundary
        self.saved[phase] = snapshot()
        if self.steps == self.stop and not boundary:
            raise Interrupted


@pytest.mark.parametrize("head", ["bn-linear", "mlp"])
def test_a_resumed_grid_ends_with_the_same_weights_and_statistics(head):
    """Below the metrics: every parameter, BatchNorm running statistic and validation record
    of a grid stopped mid-epoch and resumed equals the uninterrupted grid's, bit for bit."""
    from bench.heads.probe import ProbeConfig, train_grid
    from bench.run.online import OnlineSource, OnlineViews

    backbone = bench.create_backbone("pixels", size=4)
    split = bench.create_task("digits").split("train").subset(range(64))
    source = OnlineSource(backbone, split, ("image", "4"), "paper", 0, CPU, "fp32")
    cfg = ProbeConfig(head=head, epochs=3, batch_size=16, eval_every=1, hidden=8,
                      lrs=(1e-2, 0.1), weight_decays=(0.0,))
    lrs, wds = torch.tensor(cfg.lrs), torch.tensor([0.0, 0.0])

    def train(resume):
        records: list = []

        def at(epoch):
            def score(model):
                records.append({"epoch": epoch, "w": float(model.heads.weights[0].detach().sum())})
                return [50.0] * len(model.points)
            return score

        model = train_grid(OnlineViews(source, cfg.epochs, cfg.batch_size), None, 10, lrs, wds,
                           cfg, {e: at(e) for e in (1, 2, 3)}, resume=resume, records=records)
        return model, records

    whole, whole_records = train(None)
    memory = _Memory(stop=6)  # epoch 2, step 2
    with pytest.raises(Interrupted):
        train(memory)
    memory.stop, memory.steps = None, 0
    resumed, resumed_records = train(memory)
    assert memory.steps == 3 * 4 - 6
    for a, b in zip(whole.heads.parameters(), resumed.heads.parameters(), strict=True):
        assert torch.equal(a, b)
    norms = {k: v for k, v in vars(whole.norm).items() if isinstance(v, torch.Tensor)}
    for k, v in norms.items():
        assert torch.equal(v, getattr(resumed.norm, k)), k
    assert resumed_records == whole_records and len(whole_records) == 3


def test_costs_of_an_online_run_count_forwards_not_a_train_cache(tmp_path, capsys):
    from bench.cli import main
    from bench.features.cache import FeatureCache
    from bench.run.costs import job_cost

    options = _options(tmp_path)
    cache = FeatureCache(options.cache_dir)
    plain = resolve(RunSpec(**PIXELS, head_args={"epochs": 3}), options)
    online = resolve(RunSpec(**PIXELS, head_args={"epochs": 3}, online=True), options)
    a, b = (job_cost(p, cache, "x", options.shard_size) for p in (plain, online))
    train = len(plain.task.split("train"))
    assert set(b.images) == {"val", "test"} and a.images["train"] == train
    assert a.online_forwards == 0
    assert b.online_forwards == train * (3 + 1)  # each epoch's view, view 0 for the statistics
    raw = resolve(RunSpec(**PIXELS, head_args={"epochs": 3, "standardise": False},
                          online=True), options)
    assert job_cost(raw, cache, "x", options.shard_size).online_forwards == train * 3
    assert main(["sweep", "--backbones", "pixels", "--tasks", "digits", "--backbone-arg",
                 "size=8", "--grid", "pool=8", "--workers", "0", "--epochs", "3", "--online",
                 "--cache-dir", options.cache_dir, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"online: {train * 4:,} train images through the backbone" in out
    assert "train " not in out.split("images:")[1].splitlines()[0]


def test_reproduce_trains_online_every_cell_whose_head_can_and_says_which_cannot(tmp_path):
    """``bench reproduce --online``: a linear cell resolves to the identity of ``bench run
    --online`` of the same spec, and the one command the report prints for it recomputes it; a
    knn cell (cached features only) is planned on its cached features, the plan saying why."""
    import shlex

    import yaml

    from bench.api import reproduce_plan
    from bench.cli import build_parser
    from bench.cli.options import csv, run_spec
    from bench.cli.reproduce import spec_template
    from bench.study.judge import run_command
    from bench.study.paper import load_paper

    digits = {"task": "digits", "metric": "top1", "recipe": "bench"}
    cells = [{"id": "lin", "backbone": "pixels", "pool": "8", "head": "linear", "value": 90.0,
              "head_args": {"epochs": 2}, "backbone_args": {"size": 8}},
             {"id": "nn", "backbone": "pixels", "pool": "8", "head": "knn", "value": 90.0,
              "backbone_args": {"size": 8}}]
    path = tmp_path / "online.yaml"
    path.write_text(yaml.safe_dump({
        "name": "online", "title": "Online", "citation": "test 2026", "tables": [
            {"key": "main", "kind": "table", "title": "Digits", "source": "Table 1",
             "defaults": digits, "cells": cells}]}))
    parser = build_parser()
    template = spec_template(parser.parse_args(["reproduce", str(path), "--online",
                                                 "--recipe", "bench"]))
    assert template.online
    options = RunOptions(workers=0, progress=False, cache_dir=str(tmp_path / "cache"))
    plan = reproduce_plan(str(path), None, options, template)
    by_hand = resolve(RunSpec(**PIXELS, head_args={"epochs": 2}, online=True), options)
    assert plan.cells["lin"].identity == by_hand.run.cells[0].identity
    assert plan.cells["lin"].recipe_note == ""
    cached = resolve(RunSpec(**{**PIXELS, "head": "knn"}), options)
    assert plan.cells["nn"].identity == cached.run.cells[0].identity
    assert plan.cells["nn"].recipe_note == "head knn cannot train online: on cached train features"

    cell = next(c for c in load_paper(str(path)).cells() if c.id == "lin")
    command = shlex.split(run_command(cell, template, "bench"))
    assert "--online" in command
    args = parser.parse_args(command[1:])
    spec = run_spec(args, args.backbone, args.task, [v for a in args.layer for v in csv(a)],
                    [v for a in args.pool for v in csv(a)])
    assert resolve(spec, options).run.cells[0].identity == plan.cells["lin"].identity
    knn = next(c for c in load_paper(str(path)).cells() if c.id == "nn")
    assert "--online" not in run_command(knn, template, "bench")
