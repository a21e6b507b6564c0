"""The paper's recipe as a named protocol (issue 30.3): ``--recipe paper`` trains the linear head
exactly as a hand-written torch loop of the released finetune.py (SGD without momentum, StepLR(7,
0.1) per epoch, 28 epochs, batch 128, lr 1e-2, raw features, no selection); bench's own recipe
leaves identities as they were, the paper's is a new identity, recorded and marked; heads without
it, unknown recipes and settings that contradict it are refused in one line before any work;
``bench reproduce`` plans a paper's cells under either recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.cli import main
from bench.errors import UsageError
from bench.protocol import RECIPES, ProbeData, apply_recipe, evaluate, head_kind
from bench.run.spec import RunOptions, RunSpec, resolve

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"size": 4}  # pixels at 4 x 4: 48 dims


def features(seed: int = 0) -> ProbeData:
    """Four Gaussian classes in 16 dims, off-centre and unevenly scaled (standardising would
    change the numbers), 300/60/80 rows."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (4, 16))
    scale = rng.uniform(0.5, 4.0, 16)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 4, n)
        return ((means[y] + rng.normal(0, 1.5, (n, 16))) * scale + 3.0).astype(np.float32), y

    parts = {s: split(n) for s, n in (("train", 300), ("val", 60), ("test", 80))}
    return ProbeData({s: x for s, (x, _) in parts.items()},
                     {s: y for s, (_, y) in parts.items()}, 4)


def reference_logits(x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int,
                     step_lr: bool = True) -> torch.Tensor:
    """finetune.py's training of its linear head, written with torch.optim: nn.Linear,
    cross-entropy, SGD(lr 1e-2, momentum 0, no decay), StepLR(7, 0.1) stepped after each of 28
    epochs, minibatches of 128 in bench's epoch order (the one thing taken from bench, so the
    two see the same minibatches). bench's head starts from zero weights (a convex problem):
    so does this one."""
    from bench.heads.streaming import epoch_order

    xs, ys = torch.from_numpy(x), torch.from_numpy(y).long()
    model = nn.Linear(x.shape[1], 4)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.0, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(28):
        order = torch.from_numpy(epoch_order(len(xs), gen))
        for start in range(0, len(order), 128):
            index = order[start : start + 128]
            loss = nn.functional.cross_entropy(model(xs[index]), ys[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step_lr:
            scheduler.step()
    with torch.no_grad():
        return model(torch.from_numpy(test))


def test_the_paper_recipe_trains_the_linear_head_as_the_released_loop():
    from bench.precision import FP32

    kind = head_kind("linear")
    cfg = kind.make_config(apply_recipe(kind, "paper", {}), seed=3)
    assert (cfg.optimizer, cfg.standardise, cfg.lrs, cfg.weight_decays, cfg.epochs,
            cfg.batch_size, cfg.checkpoints(), cfg.halving) == (
        "sgd-step", False, (1e-2,), (0.0,), 28, 128, [28], False)
    data = features()
    result = evaluate(kind.make_trainer(cfg, "cpu", FP32, False), data)
    # no selection: one grid point, scored on val once, after the last epoch
    assert [(r["lr"], r["weight_decay"], r["epochs"]) for r in result.grid] == [(1e-2, 0.0, 28)]
    assert result.best == {"lr": 1e-2, "weight_decay": 0.0, "epochs": 28}

    # the tested model: trained on train+val (val is a holdout of the paper's train), 28 epochs
    trainer = kind.make_trainer(cfg, "cpu", FP32, False)
    ours = trainer.refit_predict(data, result.best)
    x = np.concatenate([data.features["train"], data.features["val"]])
    y = np.concatenate([data.labels["train"], data.labels["val"]])
    theirs = reference_logits(x, y, data.features["test"], seed=3)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
    assert result.test["top1"] == pytest.approx(
        100 * float((theirs.argmax(1).numpy() == data.labels["test"]).mean()))
    # the comparison is sharp: without the step schedule the logits are far from ours
    assert (reference_logits(x, y, data.features["test"], 3, step_lr=False) - ours).abs().max() > 0.05


def test_the_paper_recipe_sets_the_attention_heads_settings():
    kind = head_kind("attention")
    cfg = kind.make_config(apply_recipe(kind, "paper", {}), seed=0)
    assert (cfg.recipe, cfg.lrs, cfg.weight_decay, cfg.epochs, cfg.batch_size,
            cfg.checkpoints()) == ("paper", (5e-2,), 0.0, 28, 128, [28])


def resolved(**changes):
    spec = RunSpec("pixels", "digits", pools=["4"], backbone_args=TINY, **changes)
    return resolve(spec, RunOptions(device="cpu")).run


def test_bench_leaves_identities_as_they_were_and_paper_is_another():
    default, bench, paper = resolved(), resolved(recipe="bench"), resolved(recipe="paper")
    assert bench.cells[0].identity == default.cells[0].identity
    protocol = default.protocol(default.cells[0])
    # what would change every identity from before recipes: none of it is there
    assert "recipe" not in protocol and not {"optimizer", "standardise"} & set(protocol["head"])
    assert default.settings == bench.settings == {"backbone_args": TINY}
    assert paper.cells[0].identity != default.cells[0].identity
    shown = paper.protocol(paper.cells[0])
    assert shown["recipe"] == "paper"
    assert (shown["head"]["optimizer"], shown["head"]["standardise"], shown["head"]["lrs"]) == (
        "sgd-step", False, [1e-2])
    # a recipe is a chosen setting: a paper run never supersedes bench's result of the cell
    assert paper.settings == {"recipe": "paper", "backbone_args": TINY}
    # the same value the recipe fixes is no contradiction, and not a choice of its own
    assert resolved(recipe="paper", head_args={"epochs": 28}).cells[0].identity == \
        paper.cells[0].identity


def test_a_paper_run_is_recorded_and_marked(tmp_path):
    from bench.api import run
    from bench.results import leaderboard
    from bench.results.record import RECIPE, RunRecord

    options = RunOptions(device="cpu", workers=0, progress=False)
    [ours] = run(RunSpec("pixels", "digits", pools=["4"], backbone_args=TINY,
                         head_args={"epochs": 2}), options)
    [paper] = run(RunSpec("pixels", "digits", pools=["4"], backbone_args=TINY,
                          recipe="paper"), options)
    assert (ours.recipe, paper.recipe) == ("bench", "paper")
    assert RECIPE not in ours.to_tags() and paper.to_tags()[RECIPE] == "paper"
    assert paper.best == {"lr": 1e-2, "weight_decay": 0.0, "epochs": 28}

    class Stored:  # an MLflow run as the reader gives it
        class data:
            tags, params, metrics = paper.to_tags(), paper.to_params(), paper.metrics

        class info:
            run_id, run_name, start_time = "r1", "x", 0

    assert RunRecord.from_mlflow(Stored).recipe == "paper"
    cells = leaderboard.select_cells([paper])
    shown = leaderboard.display_table(cells, set())
    mark = RECIPES.get("paper").mark
    assert shown.loc["pixels", "digits"].endswith(f" {mark}")
    [note] = leaderboard.footnotes(cells)
    assert note.startswith(f"{mark} pixels on digits") and "no validation selection" in note
    assert not leaderboard.display_table(leaderboard.select_cells([ours]), set()).loc[
        "pixels", "digits"].endswith(mark)


@pytest.mark.parametrize("argv, message", [
    (["--head", "knn", "--recipe", "paper"],
     "head 'knn' has no 'paper' recipe; heads with one: linear, attention, diffeed (or use --recipe "
     "bench)"),
    (["--recipe", "paper", "--lrs", "0.1"],
     "--recipe paper fixes lrs = (0.01,) for head 'linear': drop --lrs, or use --recipe bench"),
    (["--recipe", "paper", "--probe-arg", "standardise=true"],
     "--recipe paper fixes standardise = False for head 'linear': drop --probe-arg "
     "standardise=, or use --recipe bench"),
])
def test_refusals_are_one_line_before_any_extraction(argv, message, monkeypatch, capsys):
    import bench.features.extract as extract_module

    def no_extraction(*a, **k):
        raise AssertionError("extracted before refusing")

    monkeypatch.setattr(extract_module, "extract", no_extraction)
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--backbone-arg", "size=4",
                 "--workers", "0", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bench: error: {message}"]


def test_unknown_recipes_are_refused():
    with pytest.raises(UsageError, match="unknown recipe 'papr'. Did you mean paper"):
        resolved(recipe="papr")
    for head in ("bn-linear", "mlp", "logreg", "knn", "few-shot", "difformer"):
        with pytest.raises(UsageError, match=f"head '{head}' has no 'paper' recipe"):
            apply_recipe(head_kind(head), "paper", {})


def tiny_paper(tmp_path, **cell) -> str:
    import yaml

    cells = [{"id": "px-linear", "pool": "4", "value": 90.0, **cell},
             {"id": "px-knn", "pool": "4", "head": "knn", "value": 95.0}]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "title": "Tiny", "citation": "test 2026", "tables": [
            {"key": "main", "kind": "table", "source": "Table 1", "cells": cells, "defaults": {
                "backbone": "pixels", "backbone_args": TINY, "task": "digits", "head": "linear",
                "metric": "top1"}}]}))
    return str(path)


def test_reproduce_plans_the_papers_cells_under_either_recipe(tmp_path, capsys):
    from bench.api import reproduce_plan

    path = tiny_paper(tmp_path)
    options = RunOptions(device="cpu", workers=0, progress=False)
    paper = reproduce_plan(path, None, options)  # the paper's recipe by default
    ours = reproduce_plan(path, None, options, RunSpec("", "", recipe="bench"))
    assert (paper.cells["px-linear"].recipe, ours.cells["px-linear"].recipe) == ("paper", "bench")
    assert paper.cells["px-linear"].identity == resolved(recipe="paper").cells[0].identity
    assert ours.cells["px-linear"].identity == resolved().cells[0].identity
    # knn has no paper recipe: planned under bench's own either way, and said so
    assert paper.cells["px-knn"].identity == ours.cells["px-knn"].identity
    assert paper.cells["px-knn"].recipe_note == "head knn has no paper recipe: bench's own"

    for flags, linear in (([], "recipe paper"), (["--recipe", "bench"], "recipe bench")):
        assert main(["reproduce", path, "--dry-run", "--workers", "0", *flags]) == 0
        out = capsys.readouterr().out
        assert "px-linear: pixels digits (default layer) pool 4 linear: paper 90: to run" in out
        line = next(x for x in out.splitlines() if x.strip().startswith("px-linear:"))
        assert line.endswith(linear)
        assert "recipe bench (head knn has no paper recipe: bench's own)" in out or \
            flags == ["--recipe", "bench"]

    # a cell's own recipe wins over the flag
    pinned = tiny_paper(tmp_path, recipe="bench")
    assert reproduce_plan(pinned, None, options).cells["px-linear"].recipe == "bench"


def test_a_paper_cell_asking_for_a_recipe_its_head_lacks_is_refused(tmp_path, capsys):
    path = tiny_paper(tmp_path, head="mlp", recipe="paper")
    assert main(["reproduce", path, "--dry-run", "--workers", "0"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert ("table 'main', cell 'px-linear', field 'recipe': head 'mlp' has no 'paper' recipe"
            in line)


def test_the_shipped_paper_plans_under_both_recipes(capsys):
    for flags in ([], ["--recipe", "bench"]):
        assert main(["reproduce", "mukhopadhyay2023", "--dry-run", *flags]) == 0
        out = capsys.readouterr().out
        recipe = flags[-1] if flags else "paper"
        assert f"recipe: {recipe} (`--recipe`" in out
        line = next(x for x in out.splitlines() if x.strip().startswith("gd-b24-t90-p2:"))
        assert line.endswith(f"recipe {recipe}")
        mae = next(x for x in out.splitlines() if x.strip().startswith("followup-mae:"))
        assert mae.endswith("recipe bench (head bn-linear has no paper recipe: bench's own)"
                            if recipe == "paper" else "recipe bench")


def test_the_report_shows_each_cells_recipe_and_both_results(tmp_path, capsys):
    import json

    path = tiny_paper(tmp_path)
    run = ["reproduce", path, "--workers", "0", "--no-progress"]
    assert main(run) == 0 and main([*run, "--recipe", "bench"]) == 0
    capsys.readouterr()
    for recipe, other in (("paper", "bench"), ("bench", "paper")):
        assert main(["report", path, "--recipe", recipe]) == 0
        folder = tmp_path / "results" / "reports" / "tiny"
        cells = {c["id"]: c for c in json.loads((folder / "report.json").read_text())["cells"]}
        linear, knn = cells["px-linear"], cells["px-knn"]
        assert (linear["recipe"], knn["recipe"]) == (recipe, "bench")
        [beside] = linear["others"]  # the other recipe's result of the same cell, not judged
        assert beside["recipe"] == other and beside["ours"] != linear["ours"]
        assert knn["others"] == []  # knn trains under bench's own either way: one result
        assert ("--recipe paper" in linear["command"]) == (recipe == "paper")
        page = (folder / "main.md").read_text()
        assert "| recipe | ours [95% interval] |" in page and f"| ours, {other} recipe |" in page
        assert "head knn has no paper recipe: bench's own" in page or recipe == "bench"
