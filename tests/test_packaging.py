"""The wheel users install: one import namespace (``bench``, with the plugin folders as
``bench.backbones`` and ``bench.tasks``) under a distribution name that is free on PyPI, every
package folder of the repository inside it, and its package data (paper files) readable from an
installed copy."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

FOLDERS = {"bench": "bench", "backbones": "bench.backbones", "tasks": "bench.tasks"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(REPO)], check=True, capture_output=True)
    [built] = out.glob("*.whl")
    return built


def test_the_wheel_installs_one_top_level_name(wheel):
    """``bench``, ``backbones`` and ``tasks`` are all existing PyPI projects: the wheel must not
    put the last two at the top of site-packages, nor be named ``bench``."""
    assert wheel.name.startswith("frozen_bench-")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"bench", next(t for t in top if t.endswith(".dist-info"))}, sorted(top)
    assert next(t for t in top if t.endswith(".dist-info")).startswith("frozen_bench-")
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "bench = bench.cli:main" in entry_points  # the command stays `bench`
    # the built-in heads and executors, found like any plugin's (core names no heads module)
    assert "builtin = bench.heads.kinds:KINDS" in entry_points.split("[bench.heads]")[1]
    assert "builtin = bench.run.executors" in entry_points.split("[bench.executors]")[1]


def test_every_package_folder_is_in_the_wheel(wheel):
    """A package folder added to the repository but not to pyproject's ``packages`` list would
    be missing from every install but an editable one."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.relative_to(REPO / folder).as_posix()
            assert f"{package.replace('.', '/')}/{relative}" in names, f"{init} is not packaged"


def test_an_installed_wheel_still_has_the_papers_rows(wheel, tmp_path):
    """The published reference rows are package data (the paper files): an installed (not
    editable) copy reads them, and ``bench.backbones`` is imported from the install, not from
    the checkout."""
    assert "bench/papers/mukhopadhyay2023.yaml" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    code = ("import bench.backbones as backbones, pandas as pd; "
            "from bench.results.leaderboard import with_references; "
            "from bench.study.references import reference_rows; "
            "t = with_references(pd.DataFrame({'cub': [1.0]}, index=['x']), reference_rows); "
            "print(backbones.__file__); "
            "print(t.loc['seed paper, fine-grained table: GD linear', 'cub']); "
            "from bench.protocol import head_names; print(head_names()[0])")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                          f"{str(site)!r}); {code}"], capture_output=True, text=True, cwd=tmp_path)
    lines = out.stdout.split()
    assert lines and lines[0].startswith(str(site)), out.stderr[-2000:]
    assert lines[1] == "31.57"
    assert lines[2] == "linear"  # the built-in heads, from the installed copy's entry points
