"""What makes two results the same result: the resolved protocol, never what was typed (issue 9)."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass

import pytest

import bench
from bench.api import run
from bench.heads.probe import ProbeConfig
from bench.registry import backbones
from bench.run.spec import RunOptions, RunSpec

from .conftest import REPO, records

FAST = {"epochs": 4, "lrs": (1e-2,), "weight_decays": (0.0,)}
OPTIONS = RunOptions(workers=0, progress=False)


def _spec(**fields) -> RunSpec:
    return RunSpec(**{"backbone": "pixels", "task": "digits", "head_args": dict(FAST), **fields})


def test_the_same_protocol_typed_two_ways_is_one_result():
    [first] = run(_spec(), OPTIONS)
    default = bench.create_backbone("pixels")
    spelled = _spec(layers=list(default.default_layers), pools=[default.default_pool],
                    head_args={**FAST, "eval_every": 2, "batch_size": 256},  # the defaults
                    precision="fp32")  # what auto means on this CPU
    [second] = run(spelled, OPTIONS)
    assert not first.reused and second.reused
    assert second.run_id == first.run_id and second.identity == first.identity
    assert len(records()) == 1


def test_a_changed_preset_default_recomputes_and_supersedes(monkeypatch):
    [old] = run(_spec(pools=["4"]), OPTIONS)
    entry = backbones.entry("pixels")
    monkeypatch.setitem(entry.defaults, "size", 8)  # was the factory's 16
    [new] = run(_spec(pools=["4"]), OPTIONS)  # the same command, another preset default
    assert not new.reused and new.identity != old.identity
    assert [r.run_id for r in records()] == [new.run_id]  # leaderboards see the new one only
    [stale] = [r for r in records(include_superseded=True) if r.run_id == old.run_id]
    assert stale.superseded_by == new.identity  # kept in MLflow, marked, not deleted


@dataclass
class LongerProbe(ProbeConfig):
    eval_every: int = 4  # a changed head default


def test_a_changed_head_default_or_protocol_version_recomputes(monkeypatch):
    from dataclasses import replace

    from bench import protocol

    [old] = run(_spec(), OPTIONS)
    monkeypatch.setitem(protocol.HEADS._entries, "linear", replace(
        protocol.head_kind("linear"), config="tests.test_identity:LongerProbe"))
    [longer] = run(_spec(), OPTIONS)
    assert not longer.reused and longer.identity != old.identity
    assert len(longer.protocol["head"]) and longer.protocol["head"]["eval_every"] == 4
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", "next")
    [bumped] = run(_spec(), OPTIONS)
    assert not bumped.reused and bumped.identity not in (old.identity, longer.identity)
    assert bumped.protocol["protocol_version"] == "next"
    assert [r.run_id for r in records()] == [bumped.run_id]
    assert len(records(include_superseded=True)) == 3


def test_options_that_change_no_number_are_not_in_the_identity():
    [first] = run(_spec(), OPTIONS)
    [again] = run(_spec(), RunOptions(workers=0, progress=False, batch_size=7, shard_size=100))
    assert again.reused and again.identity == first.identity


def test_the_precision_policy_is_logged_in_full_and_fp32_stores_fp32():
    [record] = run(_spec(), OPTIONS)
    assert record.protocol["precision"] == {"name": "fp32", "extraction": "fp32",
                                            "storage": "float32", "probe_inputs": "float32",
                                            "heads": "fp32"}
    from bench.features.cache import FeatureCache

    features, _, _ = FeatureCache().find(record.cache_keys["train"][0])[0].load(dtype=None)
    assert features.dtype.name == "float32"
    [half] = run(_spec(precision="bf16"), OPTIONS)
    assert half.identity != record.identity and half.protocol["precision"]["storage"] == "float16"


def test_a_run_builds_its_backbone_once(monkeypatch):
    """Before the redesign `bench run` built (and loaded the weights of) the backbone twice."""
    from bench.registry import Entry

    calls = []
    entry = backbones.entry("pixels")

    def counting(**kwargs):
        calls.append(kwargs)
        return entry.factory(**kwargs)

    monkeypatch.setitem(backbones._entries, "pixels", Entry(
        "pixels", counting, entry.defaults, entry.description, entry.licence))
    run(_spec(), OPTIONS)
    assert len(calls) == 1
    run(_spec(), OPTIONS)  # reused: resolving still needs the backbone's config and digest
    assert len(calls) == 2


def test_a_submitted_run_builds_no_backbone_in_the_driver(monkeypatch, tmp_path):
    from bench.registry import Entry
    from bench.run.scheduler import ExecutorConfig

    entry = backbones.entry("pixels")
    built = []  # in this (the driver's) process; the job's process has its own registry

    def counting(**kwargs):
        built.append(kwargs)
        return entry.factory(**kwargs)

    monkeypatch.setitem(backbones._entries, "pixels", Entry(
        "pixels", counting, entry.defaults, entry.description, entry.licence))
    [record] = run(_spec(), OPTIONS, ExecutorConfig("submitit-local"))
    assert built == [] and record.metrics["test_top1"] > 50 and not record.reused


def test_flags_that_do_not_apply_to_the_head_are_refused(capsys):
    from bench.cli import main

    args = ["run", "--backbone", "pixels", "--task", "digits", "--head", "attention"]
    assert main([*args, "--wds", "0,1e-4"]) == 2
    assert "--wds does not apply to head 'attention'" in capsys.readouterr().err
    assert main([*args, "--probe-arg", "weight_decays=[0]"]) == 2
    assert "has no setting weight_decays" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    from bench.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("shapes (3, 4) and (5, 6) do not match")

    monkeypatch.setattr("bench.protocol.evaluate", broken)
    with pytest.raises(RuntimeError, match="do not match"):
        main(["run", "--backbone", "pixels", "--task", "digits", "--workers", "0",
              "--epochs", "2", "--no-progress"])


def test_the_library_runs_a_cell_without_the_cli():
    code = ("import sys; from bench.api import run; from bench.run.spec import RunSpec, RunOptions; "
            "[r] = run(RunSpec('pixels', 'digits', head_args={'epochs': 2}), "
            "RunOptions(workers=0, progress=False)); "
            "print(r.metrics['test_top1'] > 50, 'bench.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]
    # Only the CLI imports argparse.
    for path in (REPO / "bench").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if "argparse" in imported:
            assert path.parent.name == "cli", path
