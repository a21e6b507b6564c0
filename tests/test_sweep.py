"""bench sweep on this machine: grid expansion, dry run, resume, failures, profiles."""

from __future__ import annotations

import os
import re

import pytest

from bench.cli import main
from bench.run.scheduler import executor_config, load_profile
from bench.run.sweep import grid_layers, parse_grid

FAST = ["--epochs", "4", "--workers", "0", "--lrs", "1e-2", "--wds", "0"]


def test_grid_axes_expand_through_the_layer_template():
    grid = parse_grid(["block=19,24", "t=90,150", "pool=1,2"])
    layers = grid_layers("block{block}@t{t}", "diffusion", grid)
    assert layers == ["block19@t90", "block19@t150", "block24@t90", "block24@t150"]
    assert grid_layers("block{block}@t{t}", "d", parse_grid(["block=19"])) == ["block19"]
    assert grid_layers(None, "pixels", parse_grid(["layer=image", "pool=4"])) == ["image"]
    with pytest.raises(ValueError, match="no sweep axis t"):
        grid_layers(None, "pixels", parse_grid(["t=90"]))
    with pytest.raises(ValueError, match="NAME=V1,V2"):
        parse_grid(["block"])


def test_sweep_dry_run_then_run_then_resume(capsys):
    args = ["sweep", "--backbones", "pixels", "--tasks", "digits", "--grid", "pool=4,8", *FAST]
    assert main([*args, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "2 cells, 0 already done" in plan and re.search(r"[\d.]+ [kMG]?B new cache", plan)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pixels/digits/image/4/linear" in out and "pixels/digits/image/8/linear" in out
    assert main([*args, "--dry-run"]) == 0
    assert "2 cells, 2 already done" in capsys.readouterr().out
    assert main(args) == 0
    assert out.count("(reused)") == 0 and capsys.readouterr().out.count("(reused)") == 2


def test_a_failing_job_is_reported_and_the_rest_completes(tmp_path, capsys):
    missing = tmp_path / "no-such-tree"
    code = main(["sweep", "--backbones", "pixels", "--tasks", f"digits,folder:{missing}",
                 "--grid", "pool=8", *FAST])
    captured = capsys.readouterr()
    assert code == 1
    assert "pixels/digits/image/8/linear" in captured.out
    assert "FAILED pixels x folder:" in captured.err and str(missing) in captured.err


def test_profiles_are_read_and_checked(tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("gpu:\n  executor: slurm\n  partition: a100\n  gpus: 1\n  mem_gb: 64\n"
                        "bad:\n  partiton: x\n")
    assert load_profile("gpu", str(profiles))["partition"] == "a100"
    with pytest.raises(ValueError, match="unknown keys"):
        load_profile("bad", str(profiles))
    with pytest.raises(ValueError, match="no profile 'cpu'"):
        load_profile("cpu", str(profiles))
    config = executor_config(None, "gpu", str(profiles), mem_gb=32, qos=None)  # a flag wins
    assert config.kind == "slurm"
    assert config.params == {"slurm_partition": "a100", "gpus_per_node": 1, "mem_gb": 32}


def test_slurm_executor_reads_squeue(tmp_path, monkeypatch):
    """The slurm executor's queue: one squeue call lists this user's jobs (not the whole
    cluster's), one line per array task; a job it does not list has left the queue; no answer
    when squeue fails (then nothing is declared gone)."""
    from bench.run.scheduler import ExecutorConfig

    squeue, calls = tmp_path / "bin" / "squeue", tmp_path / "calls"
    squeue.parent.mkdir()
    squeue.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\nprintf '41 RUNNING\\n42_3 PENDING\\n'\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{squeue.parent}:/usr/bin:/bin")
    slurm = ExecutorConfig("slurm").create()
    listed = slurm.queue_states()
    assert [listed.get(j, "") for j in ("41", "42_3", "43")] == ["RUNNING", "PENDING", ""]
    assert calls.read_text().split() == ["--noheader", "--array", "--user", str(os.getuid()),
                                         "--format", "%i", "%T"]
    squeue.write_text("#!/bin/sh\nexit 1\n")
    assert slurm.queue_states() is None
    assert ExecutorConfig("submitit-local").create().queue_states() is None  # no queue


def test_diffusion_sweep_draws_the_paper_figures(tmp_path, capsys):
    """block x t x pool on the tiny ADM: one job, eight cells, figures logged to MLflow."""
    import mlflow

    args = ["sweep", "--backbones", "diffusion-tiny", "--tasks", "digits", "--task-arg", "limit=60",
            "--grid", "block=19,24", "t=90,300", "pool=1,2", *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    for layer in ("block19@t90", "block19@t300", "block24@t90", "block24@t300"):
        assert f"diffusion-tiny/digits/{layer}/2/linear" in out
    figures = tmp_path / "results" / "figures"
    assert {p.name for p in figures.glob("*.png")} == {
        "diffusion-tiny_digits_vs_t.png", "diffusion-tiny_digits_vs_pool.png"}
    assert all(p.stat().st_size > 10_000 for p in figures.glob("*.png"))
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("bench")
    [board] = client.search_runs([experiment.experiment_id], "tags.`bench.kind` = 'leaderboard'")
    logged = {a.path for a in client.list_artifacts(board.info.run_id, "figures")}
    assert logged == {"figures/diffusion-tiny_digits_vs_t.png",
                      "figures/diffusion-tiny_digits_vs_pool.png"}


def test_paper_rows_sit_beside_ours():
    import pandas as pd

    from bench.results.leaderboard import with_references
    from bench.study.references import reference_rows

    def with_paper(table):
        return with_references(table, reference_rows)

    ours = pd.DataFrame({"cub": [40.0], "digits": [95.0]}, index=["diffusion"])
    table = with_paper(ours)
    assert table.loc["seed paper, fine-grained table: GD linear", "cub"] == 31.57
    assert table.loc["follow-up, fine-grained table: DifFormer", "cub"] == 72.4
    assert pd.isna(table.loc["seed paper, fine-grained table: GD linear", "digits"])
    assert "seed paper, fine-grained table: GD linear" not in with_paper(ours[["digits"]]).index


def test_run_through_submitits_local_executor(capsys, tmp_path):
    """The job boundary: the same BenchJob pickled into a subprocess by submitit."""
    from .conftest import records

    assert main(["run", "--backbone", "pixels", "--task", "digits", "--executor",
                 "submitit-local", "--backbone-arg", "size=8", *FAST, "--no-progress"]) == 0
    assert "pixels/digits/image/8/linear: test_top1" in capsys.readouterr().out
    [record] = records()
    assert record.metrics["test_top1"] > 80
    assert list((tmp_path / "results" / "jobs").glob("*_result.pkl"))  # it ran out of process


def test_a_bad_grid_value_is_an_error_of_the_dry_run(capsys):
    """`--grid block=x24 --dry-run` resolves every job: the bad layer is an error (exit 2), not a
    cell listed "to run" with the problem hidden in a size note."""
    code = main(["sweep", "--backbones", "diffusion-tiny", "--tasks", "digits", "--task-arg",
                 "limit=20", "--grid", "block=x24", "t=90", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2 and "to run" not in captured.out
    assert "diffusion-tiny x digits: layer 'blockx24@t90'" in captured.err


def test_a_dry_run_with_nothing_resolvable_exits_non_zero_and_counts_in_words(tmp_path, capsys):
    missing = tmp_path / "no-such-tree"
    code = main(["sweep", "--backbones", "pixels", "--tasks", f"folder:{missing}", "--dry-run",
                 *FAST])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert "1 job (1 not resolvable here), 0 cells" in captured.out
    assert "nothing would run" in captured.err


def test_the_closing_table_explains_its_marks_and_the_hint_names_the_flag(capsys):
    """Issue 31, items 16 and 17: every dagger of the closing table has its footnote (the
    leaderboard's), and a grid-edge hint names the flag that widens the grid."""
    args = ["sweep", "--backbones", "pixels", "--tasks", "digits", "--backbone-arg", "size=4",
            "--epochs", "3", "--workers", "0", "--lrs", "1e-5,1e-4", "--wds", "0,1e-3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("| backbone"):]
    assert table.count("†") >= 1  # learning rates far below those that select
    assert "`a ± h`: test metric and the half-width h of its 95% bootstrap interval" in out
    footnote = next(line for line in out.splitlines() if line.startswith("† pixels on digits"))
    assert re.search(r"selected at the grid's edge: lr [\de.-]+ is the (smallest|largest) of "
                     r"1e-05\.\.0\.0001: try a grid reaching [\de.-]+ with --lrs$", footnote)
