"""bench reproduce end to end, offline: a tiny paper file (pixels and random-unet on digits and a
folder task; two tables, a curve, a similarity matrix, a cell that cannot resolve here), its plan
and dry-run costs, the run (one forward pass per backbone and task), identities equal to `bench
run`'s, a rerun that extracts and trains nothing; bad input; the shipped seed file's dry run."""

from __future__ import annotations

import pytest
import yaml

from bench.cli import main
from bench.ranges import size_text

FAST = {"epochs": 4, "lrs": [0.01], "weight_decays": [0.0]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny work: a second thread only waits


def folder_tree(root):
    from PIL import Image

    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8, 8), (80 * c, 40, 10 * i)).save(root / f"class{c}/{i}.png")
    return root


def tiny_paper(tmp_path, **changes) -> str:
    """Made-up "paper" values: px-p4 close to ours, px-p8 far below ours (ours higher), the
    simclr cell not resolvable offline (not run)."""
    tree = folder_tree(tmp_path / "tree")
    # bench's recipe: the cells' own fast settings (the paper's recipe fixes 28 epochs)
    digits = {"task": "digits", "head": "linear", "metric": "top1", "head_args": FAST,
              "recipe": "bench"}
    paper = {
        "name": "tiny", "title": "A tiny paper", "citation": "test 2026",
        "tables": [
            {"key": "main", "kind": "table", "title": "Digits and a folder", "source": "Table 1",
             "defaults": digits, "cells": [
                 {"id": "px-p4", "backbone": "pixels", "pool": "4", "value": 90.0},
                 {"id": "px-p8", "backbone": "pixels", "pool": 8, "value": 10.0},
                 {"id": "px-knn", "backbone": "pixels", "pool": "16", "head": "knn",
                  "head_args": {}, "value": 95.0},
                 {"id": "px-folder", "backbone": "pixels", "task": f"folder:{tree}",
                  "pool": "2", "value": 50.0, "protocol": "paper: SGD; bench: AdamW grid"},
                 {"id": "unet-mid", "backbone": "random-unet", "layer": "mid", "pool": "1",
                  "value": 30.0}]},
            {"key": "by-pool", "kind": "curve", "x": "pool", "source": "Figure 2",
             "defaults": {**digits, "backbone": "pixels"}, "cells": [
                 {"id": "curve-p2", "pool": "2", "value": 80.0},
                 {"id": "curve-p4", "pool": "4", "value": 90.0}]},
            {"key": "cka", "kind": "similarity", "source": "Figure 3", "similarity": {
                "backbone": "random-unet", "task": "digits", "split": "val", "n": 50,
                "layers": ["down1", "mid"], "pools": ["1"], "permutations": 5,
                "interval": "jackknife", "interval_draws": 5}},
            {"key": "offline", "kind": "table", "source": "Table 4", "defaults": digits,
             "cells": [{"id": "simclr", "backbone": "simclr", "value": 60.0}]}],
        "claims": [{"text": "pool 4 beats pool 8", "higher": "px-p4", "lower": "px-p8"}],
    }
    for key, value in changes.items():
        table, cell, name = key.split(".")
        paper["tables"][int(table)]["cells"][int(cell)][name] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(paper))
    return str(path)


def count_extractions(monkeypatch) -> list[tuple[str, str, tuple, bool]]:
    """Every extraction: (backbone class, split, requests, whether all were cached already)."""
    import bench.features.extract as extract_module

    calls = []
    real = extract_module.extract

    def counted(backbone, split, requests, cache, task_config, **kw):
        cached = all(cache.entry(extract_module.entry_fields(
            backbone, task_config, split, *r, kw["precision"])).complete() for r in requests)
        calls.append((type(backbone).__name__, task_config.get("task", ""), tuple(requests),
                      cached))
        return real(backbone, split, requests, cache, task_config, **kw)

    monkeypatch.setattr(extract_module, "extract", counted)
    return calls


def test_plan_run_and_rerun(tmp_path, capsys, monkeypatch):
    from bench.api import reproduce_plan, run
    from bench.run.jobs import SharedJob
    from bench.run.spec import RunOptions, RunSpec

    path = tiny_paper(tmp_path)
    args = ["reproduce", path, "--workers", "0", "--no-progress"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "px-p4: pixels digits (default layer) pool 4 linear: paper 90: to run" in out
    assert "px-folder: " in out and "[protocol differs]" in out
    assert "simclr: simclr digits" in out and "not resolvable here: weights missing" in out
    assert "pixels x digits: one pass over 1,797 images, 4 feature points feeds 5 cells" in out
    assert " new cache (of " in out  # the sweep dry run's cost of the jobs to run
    assert "similarity matrix random-unet on digits val (n=50, cka-debiased)" in out
    assert ("8 cells: 0 done, 7 to run, 1 not resolvable here, 0 not computed; 1 similarity "
            "matrix; 4 jobs") in out

    options = RunOptions(workers=0, progress=False)
    plan = reproduce_plan(path, ["main", "by-pool", "cka"], options)
    shared = plan.jobs[0]
    assert isinstance(shared, SharedJob) and [j.spec.head for j in shared.jobs] == ["linear", "knn"]
    assert plan.jobs[1].prepared.backbone is shared.jobs[0].prepared.backbone  # built once
    assert plan.cells["curve-p4"].identity == plan.cells["px-p4"].identity  # one result
    assert plan.cells["px-p8"].run_name == "pixels/digits/image/8/linear"

    calls = count_extractions(monkeypatch)
    run_args = [*args, "--table", "main", "--table", "by-pool", "--table", "cka"]
    assert main(run_args) == 0
    out = capsys.readouterr().out
    assert "pixels/digits/image/4/linear" in out and "similarity cka:" in out
    computed = [c for c in calls if c[0] == "Pixels" and c[1] == "digits" and not c[3]]
    assert len(computed) == 3  # one pass per split fed the linear and knn cells
    assert all(set(c[2]) == {("image", p) for p in ("4", "8", "2", "16")} for c in computed)

    # the identity of a cell is the one `bench run` resolves: the hand-typed run is reused
    [by_hand] = run(RunSpec("pixels", "digits", pools=["4"], head_args=dict(FAST)), options)
    assert by_hand.reused and by_hand.identity == plan.cells["px-p4"].identity

    assert main([*args, "--dry-run"]) == 0
    assert "8 cells: 7 done, 0 to run, 1 not resolvable here" in capsys.readouterr().out

    def no_extraction(*a, **k):
        raise AssertionError("a rerun extracted features")

    import bench.features.extract as extract_module
    monkeypatch.setattr(extract_module, "extract", no_extraction)
    assert main(run_args) == 0
    out = capsys.readouterr().out
    assert "computed 0 results, reused 6 already logged" in out  # 7 cells, one result twice
    assert "similarity cka:" in out and "(reused)" in out

    # a shared job sent elsewhere (submitit, SLURM) travels without its backbone, resolves there
    import pickle

    sent = pickle.loads(pickle.dumps(shared))
    assert all(job.prepared is None for job in sent.jobs)
    monkeypatch.setattr(extract_module, "extract", no_extraction)
    assert all(record.reused for record in sent())


def test_a_fusing_head_cell_reads_all_its_layers(tmp_path):
    """A difformer cell names its layers joined by "+": one spec of its own, the identity of the
    same `bench run --layers down1,mid --head difformer`."""
    from bench.api import reproduce_plan
    from bench.study.paper import parse_paper
    from bench.run.spec import RunOptions, RunSpec, resolve

    paper = parse_paper({"name": "fused", "tables": [
        {"key": "t", "kind": "table", "source": "Table 1", "defaults": {
            "task": "digits", "head": "difformer", "metric": "top1", "backbone": "random-unet"},
         "cells": [{"id": "both", "layer": "down1+mid", "value": 1},
                   {"id": "mid", "layer": "mid", "value": 2}]}]}, "fused.yaml")
    options = RunOptions(workers=0, progress=False)
    plan = reproduce_plan(paper, None, options)
    by_hand = resolve(RunSpec("random-unet", "digits", layers=["down1", "mid"],
                              head="difformer"), options).run.cells
    assert len(plan.jobs) == 1 and len(plan.jobs[0].jobs) == 2
    assert [plan.cells["both"].identity] == [c.identity for c in by_hand]
    assert plan.cells["mid"].identity != plan.cells["both"].identity


@pytest.mark.parametrize("change, message", [
    ({"0.0.backbone": "pixel"}, "cell 'px-p4', field 'backbone': unknown backbone 'pixel'"),
    ({"0.0.task": "digitz"}, "cell 'px-p4', field 'task': unknown task 'digitz'"),
    ({"0.0.layer": "nolayer"}, "cell 'px-p4', field 'layer': backbone 'pixels' has no layer"),
    ({"0.0.pool": "cls"}, "cell 'px-p4', field 'pool': pool 'cls' does not apply"),
    ({"0.0.head_args": {"epochs": 0}}, "cell 'px-p4', field 'head_args': head 'linear'"),
    ({"0.4.layer": "mid-block"}, "cell 'unet-mid', field 'layer': backbone 'random-unet' has"),
    ({"0.1.value": "ten"}, "cell 'px-p8', field 'value': the paper's value must be a number"),
    ({"0.0.head": "svm"}, "cell 'px-p4', field 'head': unknown head 'svm'"),
])
def test_bad_cells_are_one_line_errors(tmp_path, capsys, change, message):
    path = tiny_paper(tmp_path, **change)
    assert main(["reproduce", path, "--dry-run", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and path in err, err


def test_unknown_paper_and_table(tmp_path, capsys):
    assert main(["reproduce", "no-such-paper", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown paper 'no-such-paper'; papers: mukhopadhyay2023" in err
    assert main(["reproduce", "mukhopadhyay2023", "--table", "nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "has no table 'nope'; its tables: imagenet-headline" in err and len(err.splitlines()) == 1


def test_layers_without_weights_are_checked_against_the_template(tmp_path):
    from bench.api import reproduce_plan
    from bench.study.paper import parse_paper
    from bench.run.spec import RunOptions

    paper = parse_paper({"name": "adm", "tables": [
        {"key": "t", "kind": "table", "source": "Table 1", "defaults": {
            "task": "digits", "head": "linear", "metric": "top1", "backbone": "diffusion"},
         "cells": [{"id": "named", "layer": "block24@t90", "value": 1},
                   {"id": "module", "layer": "output_blocks.4", "value": 2},
                   {"id": "default", "value": 3}]}]}, "adm.yaml")
    plan = reproduce_plan(paper, None, RunOptions(workers=0))
    cells = plan.cells
    assert all(c.identity is None and c.problem == "weights missing" for c in cells.values())
    assert cells["named"].checked.endswith("layer matches block{block}@t{t}")
    assert "'output_blocks.4' is not of the form block{block}@t{t}" in cells["module"].checked
    assert cells["default"].checked.endswith("the preset's default layer")


def test_seed_paper_dry_runs_without_weights(capsys):
    """Every cell of the shipped file is listed, checked by name, and says why it cannot
    resolve on this machine (no weights, no ImageNet) instead of failing."""
    from bench.study.paper import load_paper

    assert main(["reproduce", "mukhopadhyay2023", "--dry-run"]) == 0
    out = capsys.readouterr().out
    paper = load_paper("mukhopadhyay2023")
    lines = {line.strip().split(":")[0]: line for line in out.splitlines()}
    computed = [cell for cell in paper.cells() if cell.computed]
    for cell in computed:
        line = lines[cell.id]
        assert "not resolvable here: " in line and "weights missing" in line, line
        if cell.layer and cell.backbone.startswith("diffusion"):
            assert "layer matches block{block}@t{t}" in line, line
    for cell in paper.cells():
        if not cell.computed:
            assert f"not computed: {cell.not_computed}" in lines[cell.id]
    assert (f"{len(paper.cells())} cells: 0 done, 0 to run, {len(computed)} not resolvable here, "
            f"{len(paper.cells()) - len(computed)} not computed") in out
    assert out.count("similarity matrix diffusion") == 4


def test_spec_features_and_similarity_settings_are_checked(tmp_path):
    from bench.api import reproduce_plan
    from bench.errors import UsageError
    from bench.study.paper import PaperError, parse_paper
    from bench.run.spec import RunOptions, RunSpec, resolve

    with pytest.raises(UsageError, match="features or layers and pools, not both"):
        resolve(RunSpec("pixels", "digits", pools=["4"], features=[("image", "2")]), RunOptions())
    with pytest.raises(PaperError, match=r"s.yaml, table 'm', field 'similarity': similarity "
                                         r"setting nn: use preset, backbone"):  # when read
        parse_paper({"name": "s", "tables": [{"key": "m", "kind": "similarity", "source": "F",
                                              "similarity": {"preset": "paper-cka", "nn": 5}}]},
                    "s.yaml")
    assert reproduce_plan  # planning is where names are checked (below)


# --- every flag reaches the cells; a dry run reads local files only (issue 31, 4 and 14) ----------
def recording(argv: list[str]):
    """The parsed arguments of a command, recording which of them are read, and a function
    giving the command's flags not read so far (a flag accepted and dropped)."""
    import argparse

    from bench.cli import build_parser

    read: set[str] = set()

    class Recording(argparse.Namespace):
        def __getattribute__(self, name):
            if not name.startswith("_"):
                read.add(name)
            return super().__getattribute__(name)

    parser = build_parser()
    command = parser._subparsers._group_actions[0].choices[argv[0]]
    dests = {a.dest for a in command._actions if a.dest != "help"}
    return parser.parse_args(argv, namespace=Recording()), lambda: dests - read


def test_every_reproduce_flag_reaches_the_cells_or_the_run(tmp_path, monkeypatch):
    """`--cache-dtype` (and precision, seed, skip-corrupt) reach every cell's identity and the
    similarity matrices, as `bench run` with the same flags resolves them; every flag of the
    command is read before any work (none is accepted and dropped)."""
    import bench.api
    from bench.api import reproduce_plan
    from bench.run.spec import RunOptions, RunSpec, resolve

    path = tiny_paper(tmp_path)
    options = RunOptions(workers=0, progress=False)
    plain = reproduce_plan(path, ["main", "cka"], options)
    captured = {}

    def capture(paper, tables, options, template, local_only=False):
        captured.update(template=template, options=options, local_only=local_only)
        return reproduce_plan(paper, tables, options, template, local_only)

    monkeypatch.setattr(bench.api, "reproduce_plan", capture)
    args, unread = recording(["reproduce", path, "--table", "main", "--table", "cka",
                              "--dry-run", "--workers", "0", "--no-progress", "--cache-dtype",
                              "bf16", "--precision", "fp32"])
    assert args.func(args) == 0
    template = captured["template"]
    assert (template.cache_dtype, template.precision) == ("bf16", "fp32")
    assert captured["local_only"] and captured["options"].workers == 0
    assert unread() == set(), f"flags accepted but never read: {sorted(unread())}"

    cast = reproduce_plan(path, ["main", "cka"], options, template)
    by_hand = resolve(RunSpec("pixels", "digits", pools=["4"], head_args=dict(FAST),
                              cache_dtype="bf16", precision="fp32"), options)
    assert cast.cells["px-p4"].identity == by_hand.run.cells[0].identity
    assert cast.cells["px-p4"].identity != plain.cells["px-p4"].identity
    assert cast.similarity["cka"].cache_dtype == "bf16"
    assert cast.similarity["cka"].precision == "fp32"
    assert plain.similarity["cka"].cache_dtype == "auto"


def test_a_dry_run_downloads_nothing_and_lists_what_is_missing(tmp_path, monkeypatch, capsys):
    """With downloads on (no offline switch), a dry run opens no connection: the weights a
    full run would fetch are listed with where they go; reasons are whole, never cut, and no
    "run the same command again" advice."""
    import socket

    path = tiny_paper(tmp_path)
    data = yaml.safe_load(open(path))
    data["tables"][3]["cells"].append({"id": "mae", "backbone": "mae", "head": "bn-linear",
                                       "value": 60.0})
    open(path, "w").write(yaml.safe_dump(data))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("BENCH_OFFLINE", raising=False)
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    connections = []

    def no_network(*args, **kwargs):
        connections.append(args)
        raise OSError("the test forbids the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert main(["reproduce", path, "--table", "offline", "--dry-run", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert connections == []
    assert "missing on this machine" in out
    weights = [line for line in out.splitlines() if line.strip().startswith("weights: ")]
    assert any("resnet50-1x.pth -> " in line and str(tmp_path / "weights") in line
               for line in weights), out
    assert any("vit_base_patch16_224.mae" in line for line in weights), out
    assert "run the same command again" not in out.lower()
    reason = next(line for line in out.splitlines() if line.strip().startswith("not resolvable"))
    assert len(reason) > 200 and reason.rstrip().endswith(")")  # whole, not cut at 200
    assert hub.HF_HUB_OFFLINE is False  # the switch is put back after the dry run


def test_cells_unavailable_here_are_said_and_exit_zero(tmp_path, capsys):
    """Issue 30: a cell whose weights are absent is "unavailable here", not a failure: the run
    starts no job for it and exits 0 when everything that can run here ran."""
    path = tiny_paper(tmp_path)
    assert main(["reproduce", path, "--table", "offline", "--workers", "0", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "unavailable here: simclr x digits: weights missing" in captured.out
    assert "FAILED" not in captured.err


def test_similarity_tables_are_checked_by_name_when_planned(tmp_path):
    """A similarity table's backbone, task and arguments fail at plan time, before any cell
    runs, naming the file and table (issue 31, 7)."""
    from bench.api import reproduce_plan
    from bench.run.spec import RunOptions
    from bench.study.paper import PaperError

    for k, (change, message) in enumerate([({"backbone": "random-unett"}, "unknown backbone 'random-unett'"),
                            ({"task": "digitz"}, "unknown task 'digitz'"),
                            ({"backbone_args": {"sed": 1}}, "has no argument 'sed'"),
                            ({"task_args": {"limitt": 5}}, "has no argument 'limitt'"),
                            ({"against": "pixel"}, "unknown backbone 'pixel'"),
                            ({"preset": "no-such-preset"}, "similarity preset 'no-such-preset'")]):
        path = tiny_paper(tmp_path / str(k))
        data = yaml.safe_load(open(path))
        data["tables"][2]["similarity"].update(change)
        open(path, "w").write(yaml.safe_dump(data))
        with pytest.raises(PaperError) as info:
            reproduce_plan(path, ["cka"], RunOptions(workers=0))
        assert f"{path}, table 'cka', field 'similarity': " in str(info.value), info.value
        assert message in str(info.value) and "\n" not in str(info.value), info.value


def test_a_dry_run_lists_each_missing_release_file_with_its_published_size(tmp_path, capsys):
    """What a full run would download comes from the preset's registered release (files at the
    pinned Hub revision, sizes as the source publishes them), looked up without the network."""
    from bench.registry import backbones

    released = backbones.entry("ddpm-celebahq").released
    [published] = [f for f in released.files if f.size]
    path = tiny_paper(tmp_path)
    data = yaml.safe_load(open(path))
    data["tables"][3]["cells"].append({"id": "ddpm", "backbone": "ddpm-celebahq",
                                       "value": 60.0})
    open(path, "w").write(yaml.safe_dump(data))
    assert main(["reproduce", path, "--table", "offline", "--dry-run", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if published.name in line]
    assert released.hub_id in line and size_text(published.size) in line, out
