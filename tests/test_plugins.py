"""Plugins from outside the package: classes registered through an installed package's entry
points (a dist-info folder on sys.path, as pip leaves it), checked against their base class."""

from __future__ import annotations

import warnings

import pytest

from bench.registry import FactoryError, Plugins, UnknownNameError


class Base:
    pass


def install(tmp_path, monkeypatch, module: str, source: str, entry_points: str) -> None:
    """A package as pip installs it: the module and a dist-info naming its entry points."""
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_plugins_from_entry_points_are_checked_against_the_base(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "plugin_things", (
        "from tests.test_plugins import Base\n"
        "class Good(Base):\n    pass\n"
        "class NotOne:\n    pass\n"),
        "[bench.things]\ngood = plugin_things:Good\nwrong = plugin_things:NotOne\n"
        "broken = plugin_things:Missing\n")
    things = Plugins("thing", Base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert things.names() == ["good"] and "good" in things
    skipped = " ".join(str(w.message) for w in caught)
    assert "'wrong'" in skipped and "not a subclass" in skipped and "'broken'" in skipped
    assert things.get("good").__name__ == "Good"
    with pytest.raises(UnknownNameError, match="Did you mean good"):
        things.get("goood")
    with pytest.raises(FactoryError, match="not a subclass"):
        things.register("bad")(int)
