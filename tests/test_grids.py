"""Default grids and their edges (issue 31, item 16): the demo's results select inside their
grids (benchmarks/grid_centre.py measured where standardised features select), and a result
selected at a grid's end names the flag that widens that axis."""

from __future__ import annotations

import numpy as np
import pytest

from bench.precision import FP32
from bench.protocol import ProbeData, evaluate, grid_edges, head_kind, head_names


def test_a_grid_edge_hint_names_the_flag_that_widens_the_axis():
    records = [{"lr": lr, "weight_decay": wd, "epochs": 4, "top1": 50.0}
               for lr in (1e-3, 1e-2) for wd in (0.0, 0.1)]
    linear = head_kind("linear")
    assert grid_edges(records, {"lr": 1e-2, "weight_decay": 0.1, "epochs": 4}, {"top1"},
                      linear.widen) == [
        "lr 0.01 is the largest of 0.001..0.01: try a grid reaching 0.1 with --lrs",
        "weight_decay 0.1 is the largest of 0..0.1: try a grid reaching 0.2 with --wds"]
    logreg = [{"C": c, "top1": 50.0} for c in (1e-2, 1.0)]
    assert grid_edges(logreg, {"C": 1.0}, {"top1"}, head_kind("logreg").widen) == [
        "C 1 is the largest of 0.01..1: try a grid reaching 100 with --probe-arg cs=[...]"]
    assert head_kind("knn").widen("k") == "--probe-arg ks=[...]"


@pytest.mark.parametrize("head", [h for h in head_names()
                                  if h != "difformer" and not head_kind(h).online_only])
def test_every_axis_a_built_in_head_selects_on_has_a_flag_to_widen_it(head):
    """The axes each head searches (two or more values in its records: what a grid-edge hint
    can name) are the axes its kind declares, each with the flag or --probe-arg setting that
    widens it."""
    from bench.metrics import names

    rng = np.random.default_rng(0)
    maps = head_kind(head).inputs == "maps"
    shape = (4, 2, 2) if maps else (6,)
    y = {s: np.arange(24) % 3 for s in ("train", "val", "test")}
    x = {s: (rng.normal(size=(24, *shape)) + y[s].reshape(-1, *[1] * len(shape)))
         .astype(np.float32) for s in y}
    if maps:
        x = {s: {"block": v} for s, v in x.items()}
    small = {"linear": {"epochs": 2}, "bn-linear": {"epochs": 2}, "mlp": {"epochs": 2},
             "few-shot": {"epochs": 2, "shots": 2}, "logreg": {"refinements": 0},
             "knn": {"ks": [3, 5]},
             "attention": {"epochs": 1, "dim": 8, "heads": 2, "depth": 1, "batch_size": 8,
                           "recipe": "adamw"}}
    kind = head_kind(head)
    trainer = kind.make_trainer(kind.make_config(small[head], 0), "cpu", FP32, False)
    result = evaluate(trainer, ProbeData(x, y, 3, [str(i) for i in range(24)]))
    axes = {axis for axis in set(result.best) - {"epochs"} - set(names())
            if len({r[axis] for r in result.grid}) > 1}
    assert axes and all(kind.widen(axis) for axis in axes), (axes, kind.axes)


def test_the_demo_selects_inside_its_grids(capsys):
    """Before the grids were centred, both demo results carried a dagger (lr 0.03 at the end of
    3e-4..3e-2, weight decay 0.1 at the end of 0..0.1)."""
    from bench.cli import main

    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("| backbone"):out.index("`a ± h`")]
    assert "pixels" in table and "random-unet" in table
    assert "†" not in table and "selected at the grid's edge" not in out
