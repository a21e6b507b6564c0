"""A head added from outside the package is one file (issue 32, item 2): the module below,
installed only as a dist-info entry point in the group ``bench.heads``, declares its settings
and their ranges, its command-line option, its grid axis, its memory plan and its cost, and
``bench run --help``, ``bench sweep --dry-run``, ``bench sweep`` and the range checks find them:
no file of bench names it."""

from __future__ import annotations

import pytest

from .conftest import records

PLUGIN = '''
"""Nearest shrunken centroid: class means pulled toward the grand mean by ``shrink``."""
from dataclasses import dataclass

import numpy as np
import torch

from bench.heads.memory import MemoryPlan, Source
from bench.protocol import HeadKind, HeadOption, metrics
from bench.ranges import NON_NEGATIVE, parse_numbers, setting


@dataclass
class Config:
    head: str = "centroid-grid"
    shrinks: tuple = setting((0.0, 0.5), NON_NEGATIVE)
    seed: int = 0


class Trainer:
    def __init__(self, config, device, precision, progress, groups):
        self.config = config

    def _scores(self, train, labels, queries, classes, shrink):
        x = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
        grand = x.mean(0)
        means = np.stack([x[labels == c].mean(0) for c in range(classes)])
        centres = (1 - min(shrink, 1.0)) * means + min(shrink, 1.0) * grand
        q = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)
        return torch.from_numpy(-((q[:, None, :] - centres[None]) ** 2).sum(-1))

    def search(self, data):
        return [{"shrink": s, **metrics(self._scores(data.features["train"], data.labels["train"],
                                                     data.features["val"], data.num_classes, s),
                                        data.labels["val"], data.num_classes)}
                for s in self.config.shrinks]

    def refit_predict(self, data, point):
        x = np.concatenate([data.features["train"], data.features["val"]])
        y = np.concatenate([data.labels["train"], data.labels["val"]])
        return self._scores(x, y, data.features["test"], data.num_classes, point["shrink"])


def memory(config, inputs, budget):
    def source(name):
        rows = inputs.rows_of(name)
        size = rows * inputs.dims * 8
        return Source(name, size, size, f"{rows} rows x {inputs.dims} dims x 8 B",
                      what="centroid pass", fix="")

    return MemoryPlan.of(budget, {"search": [source("train"), source("val")],
                                  "test": [source("train+val"), source("test")]})


def state(config, inputs):
    return inputs.classes * inputs.dims * 8, f"{inputs.classes} x {inputs.dims} x 8 B centroids"


HEAD = HeadKind("centroid-grid", "nearest shrunken centroid, shrink selected on val", Config,
                Trainer, "vectors",
                options=(HeadOption("--shrinks", "shrinks", parse_numbers,
                                    "shrinkage grid, e.g. 0,0.5"),),
                axes={"shrink": "shrinks"}, memory=memory, state=state)
'''

DIGITS = ["--backbones", "pixels", "--tasks", "digits", "--backbone-arg", "size=4",
          "--head", "centroid-grid", "--workers", "0", "--no-progress"]


@pytest.fixture
def one_file_head(tmp_path, monkeypatch):
    """The module above, installed only as a dist-info folder declaring it in ``bench.heads``."""
    import importlib
    import sys

    from bench import protocol

    (tmp_path / "centroid_grid.py").write_text(PLUGIN)
    info = tmp_path / "centroid_grid-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: centroid-grid\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[bench.heads]\ncentroid-grid = centroid_grid:HEAD\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    protocol.head_names()  # the built-ins first
    monkeypatch.setattr(protocol.HEADS, "_entries", dict(protocol.HEADS._entries))
    monkeypatch.setattr(protocol.HEADS, "_discovered", False)
    yield
    sys.modules.pop("centroid_grid", None)


def test_its_flags_show_in_bench_run_help(one_file_head, capsys):
    from bench.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--shrinks SHRINKS shrinkage grid, e.g. 0,0.5 (heads: centroid-grid)" in out
    assert "centroid-grid: nearest shrunken centroid" in out


def test_its_settings_are_range_checked_before_any_work(one_file_head, capsys, tmp_path):
    from bench.cli import main
    from bench.errors import UsageError
    from bench.protocol import head_kind

    assert main(["sweep", *DIGITS, "--shrinks", "0,-1"]) == 2
    err = capsys.readouterr().err
    assert ("shrinks value -1.0 (--shrinks) is out of range: it must be a finite number >= 0"
            in err and err.count("\n") == 1)
    assert main(["run", "--backbone", "pixels", "--task", "digits", "--head", "centroid-grid",
                 "--lrs", "0.1"]) == 2
    assert "--lrs does not apply to head 'centroid-grid' (its flags: --shrinks" in (
        capsys.readouterr().err)
    with pytest.raises(UsageError, match="shrinks value nan"):
        head_kind("centroid-grid").make_config({"shrinks": [float("nan")]}, 0)
    assert not (tmp_path / "results" / "cache").exists()


def test_its_cost_shows_in_the_dry_run_and_its_plan_refuses_a_small_budget(one_file_head,
                                                                           capsys):
    from bench.cli import main

    assert main(["sweep", *DIGITS, "--dry-run"]) == 0
    out = capsys.readouterr().out
    # pixels at size 4: 48 dims; at its most the head holds train+val and test: 1,797 x 48 x 8 B
    assert "probe memory about 690.0 kB of inputs (every split in memory)" in out
    assert "+ 3.8 kB head state (10 x 48 x 8 B centroids)" in out
    assert main(["sweep", *DIGITS, "--dry-run", "--memory-budget", "100KB"]) == 2
    err = capsys.readouterr().err
    assert ("memory budget 100.0 kB is below one centroid pass (1295 rows x 48 dims x 8 B = "
            "497.3 kB, train) + one centroid pass (143 rows x 48 dims x 8 B = 54.9 kB, val) = "
            "552.2 kB; another phase of the head needs 690.0 kB: give --memory-budget 690.1kB or more "
            "(or auto)") in err


def test_it_runs_in_a_sweep_and_its_grid_edge_hint_names_its_flag(one_file_head, capsys):
    from bench.cli import main
    from bench.protocol import head_kind

    assert main(["sweep", *DIGITS, "--shrinks", "0,0.25"]) == 0
    [record] = records()
    assert record.name == "pixels/digits/image/4/centroid-grid"
    assert record.metrics["test_top1"] > 70 and record.best["shrink"] in (0.0, 0.25)
    assert head_kind("centroid-grid").widen("shrink") == "--shrinks"
    if record.best["shrink"] == 0.25:
        assert record.grid_edge.endswith("with --shrinks")


def test_what_a_user_chose_leaves_out_what_the_task_and_the_head_say_is_no_choice(tmp_path):
    """``ResolvedRun.settings`` (what makes a run an alternative of its cell) asks the task for
    the arguments outside its identity (``Task.identity_excludes``, not a hard-coded ``root``)
    and the head kind for the settings naming its cell (``HeadKind.cell_settings``, not a
    hard-coded ``shots``)."""
    from bench.run.spec import RunOptions, RunSpec, resolve

    (tmp_path / "mirrored.py").write_text(
        "from bench.tasks.digits import Digits\n\n\n"
        "class Mirrored(Digits):\n"
        "    identity_excludes = ('root', 'expected_counts', 'mirror')\n\n\n"
        "def mirrored(mirror: str = 'a', limit: int = 30):\n"
        "    return Mirrored(limit)\n")
    task = f"{tmp_path / 'mirrored.py'}:mirrored"
    options = RunOptions(device="cpu")
    run = resolve(RunSpec("pixels", task, task_args={"mirror": "b", "limit": 20},
                          backbone_args={"size": 4}), options).run
    assert run.settings["task_args"] == {"limit": 20}  # where the data comes from is no choice
    shots = resolve(RunSpec("pixels", "digits", head="few-shot", backbone_args={"size": 4},
                            head_args={"shots": 2, "epochs": 3}), options).run
    assert shots.settings["head"] == {"epochs": 3} and shots.variant == "2-shot"
