"""A new user's first hour: the README's quick start and the commands after it (listed on the docs'
quick start page), in a fresh folder; instant listing; what each command says it did."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
import types
from pathlib import Path

from bench.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK_START = "docs/getting-started/quickstart.md"


def _readme_block(after: str, page: str = "README.md", fence: str = "bash") -> list[str]:
    """The commands of the first ```bash block after the line starting with ``after`` in ``page``
    (a path from the repository's root)."""
    text = (REPO / page).read_text()
    block = text[text.index(after):].split(f"```{fence}\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def _board_shape(lines: list[str]) -> list[str]:
    """A leaderboard's rows with each `value ± h` masked and the column padding collapsed: what
    stays the same from one machine to another."""
    masked = [re.sub(r"\d+\.\d\d ± \d+\.\d\d", "V ± H", line) for line in lines]
    return [re.sub(r" +", " ", re.sub(r"-+", "-", line)).strip() for line in masked]


def _bench(capsys, command: str) -> tuple[int, str, str]:
    argv = shlex.split(command)
    assert argv[0] == "bench", command
    code = main(argv[1:])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_readme_quick_start_and_the_commands_after_it_find_the_demos_results(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BENCH_RESULTS")  # as a new user: results/ in the current folder
    assert _readme_block("## Quick start")[-1] == "bench demo"

    code, out, err = _bench(capsys, "bench demo --no-progress")
    assert code == 0
    assert "computed 2 results, reused 0" in out
    assert re.search(r"extracting 1,797 images .* x 1 feature point", err)
    assert "first batch:" in err and "MB of feature cache" in err
    assert f"wrote {tmp_path / 'results' / 'leaderboard.md'}" in out
    ids = dict(re.findall(r"^(pixels|random-unet)/\S+: test_top1 .* run ([0-9a-f]{8})$", out,
                          re.MULTILINE))
    assert set(ids) == {"pixels", "random-unet"}, out
    suggested = [line.split("#")[0].strip() for line in out.split("\nnext:\n")[1].splitlines()]
    after = _readme_block("as typed:", QUICK_START)
    assert after == suggested  # the quick start page shows what the demo suggests
    # the leaderboard the README and the quick start page show is the one the demo prints
    # (its numbers may differ by machine; its rows and marks may not)
    shown = _readme_block("prints the leaderboard:", fence="text")
    assert shown == _readme_block("## What the demo prints", QUICK_START, fence="text")
    printed = [line for line in out.splitlines() if line.startswith("|")]
    assert _board_shape(shown) == _board_shape(printed), (shown, printed)

    for command in after:
        code, out, err = _bench(capsys, command)
        assert code == 0, (command, err)
        if command.startswith("bench runs"):
            assert all(run_id in out for run_id in ids.values()) and "± " in out
            assert "2 results in suite(s) bench" in out
        elif command.startswith("bench leaderboard"):
            assert f"pixels on digits {ids['pixels']}" in out and "random-unet" in out
            assert f"unchanged {tmp_path / 'results' / 'leaderboard.md'}" in out
        elif command.startswith("bench compare"):
            assert "pixels/digits/image/16/linear vs random-unet/digits/mid/2/linear" in out
        else:
            assert "2 jobs, 2 cells, 2 already done" in out and "to run" not in out

    # Again: everything reused, nothing rewritten, and said so.
    code, out, _ = _bench(capsys, "bench demo --no-progress")
    assert code == 0 and "computed 0 results, reused 2" in out
    assert out.count("[reused: already logged]") == 2
    code, out, _ = _bench(capsys, "bench leaderboard --protocol all --no-log")
    assert code == 0 and (f"replaced {tmp_path / 'results' / 'leaderboard.md'} (previously: "
                          "bench leaderboard: bench (test_top1, linear protocol") in out

    # compare takes what `bench runs` prints: an id prefix and a run name
    code, out, _ = _bench(capsys, f"bench compare {ids['pixels']} "
                                  "random-unet/digits/mid/2/linear")
    assert code == 0 and "pixels/digits/image/16/linear vs random-unet" in out
    code, _, err = _bench(capsys, "bench compare 0 1")
    assert code == 2 and "bench runs" in err

    # an empty suite names the suite that holds results, and the flag; nothing is written
    before = (tmp_path / "results" / "leaderboard.md").read_text()
    for command in ("bench leaderboard --suite mine", "bench runs --suite mine"):
        code, out, err = _bench(capsys, command)
        assert code == 1 and "'bench' (2 results): add --suite bench" in err, (command, err)
    assert (tmp_path / "results" / "leaderboard.md").read_text() == before
    code, _, err = _bench(capsys, "bench compare pixels random-unet --task digits --suite mine")
    assert code == 2 and "add --suite bench" in err


def test_listing_imports_no_model_code():
    """What made listing take 6-8 s was importing torch and every model family; the time itself
    is printed (for the record), never asserted: this machine is shared and noisy."""
    code = textwrap.dedent("""
        import sys, time
        started = time.perf_counter()
        from bench.cli import main
        main(["list", "backbones"]); main(["list", "tasks", "dig*"])
        elapsed = time.perf_counter() - started
        heavy = [m for m in sys.modules if m.split(".")[0] == "torch"
                 or m.startswith(("bench.backbones", "bench.tasks"))]
        print("RESULT", round(elapsed, 3), sorted(heavy)[:5])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    result = done.stdout.rsplit("RESULT ", 1)[-1].split(" ", 1)
    assert done.returncode == 0 and result[1].strip() == "[]", (
        f"{done}: model code imported (a stale bench/preset_index.py? `python -m bench.registry`)")
    assert "diffusion " in done.stdout and "random-unet " in done.stdout
    assert "digits " in done.stdout and "cub " not in done.stdout
    print(f"bench list backbones + tasks: {result[0]} s")


def test_the_preset_index_is_current():
    """bench/preset_index.py must list what importing every module registers (else listing is
    slow for changed modules, or shows stale text): `python -m bench.registry` rewrites it."""
    code = ("import json; from bench.registry import backbones, tasks; "
            "print(json.dumps({r.package: r.index() for r in (backbones, tasks)}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    import json

    from bench.preset_index import INDEX

    assert json.loads(done.stdout.splitlines()[-1]) == INDEX, (
        "bench/preset_index.py is stale: run `python -m bench.registry` and commit it")


def test_a_module_changed_since_the_index_is_imported_and_registers_for_real(tmp_path,
                                                                             monkeypatch):
    from bench.registry import Presets

    package = tmp_path / "zoo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("cats", "dogs"):
        (package / f"{name}.py").write_text(
            f"from zoo_registry import REGISTRY\n\n"
            f"@REGISTRY.register('{name[:-1]}', description='a {name[:-1]} (imported)')\n"
            f"def make(size: int = 1):\n    return size\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Presets("backbone", "zoo")
    monkeypatch.setitem(sys.modules, "zoo_registry", types.SimpleNamespace(REGISTRY=registry))
    index = registry.index()  # full discovery: both modules imported
    assert [p["name"] for p in index["zoo.cats"]["presets"]] == ["cat"]
    for name in ("zoo", "zoo.cats", "zoo.dogs"):
        monkeypatch.delitem(sys.modules, name)

    index["zoo.cats"]["presets"][0]["description"] = "a cat (from the index)"
    index["zoo.dogs"]["sha256"] = "0" * 64  # dogs.py changed since the index was written
    fresh = Presets("backbone", "zoo", index=index)
    monkeypatch.setitem(sys.modules, "zoo_registry", types.SimpleNamespace(REGISTRY=fresh))
    shown = {p.name: p.description for p in fresh.presets()}
    assert shown == {"cat": "a cat (from the index)", "dog": "a dog (imported)"}
    assert "zoo.dogs" in sys.modules and "zoo.cats" not in sys.modules
    assert fresh.entry("cat").description == "a cat (imported)"
    assert "zoo.cats" in sys.modules


def test_a_run_is_named_and_described_at_a_glance():
    from bench.results.record import NOTE, RunRecord

    record = RunRecord(identity="x", name="pixels/digits/image/16/linear", backbone="pixels",
                       task="digits", layer="image", pool="16", head="linear", seed=0,
                       headline="top1", best={"lr": 0.003, "weight_decay": 0.0, "epochs": 40.0},
                       metrics={"test_top1": 94.7123, "test_top1_ci95_low": 92.6,
                                "test_top1_ci95_high": 96.78, "val_top1": 96.5})
    assert record.to_tags()[NOTE] == "94.71 ± 2.09 (val 96.50), linear, lr 0.003, wd 0, epochs 40"
    assert record.label == "pixels image/16 linear digits"
    assert record.to_tags()["bench.name"] == record.name
