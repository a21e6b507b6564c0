"""Plugins from outside the package: classes registered through an installed package's entry
points (a dist-info folder on sys.path, as pip leaves it), checked against their base class."""

from __future__ import annotations

import functools
import warnings

import pytest

from bench.registry import FactoryError, Registry, UnknownNameError


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
    things = Registry("thing", Base, classes=True)
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


# --- executors ---------------------------------------------------------------------------------------
@pytest.fixture
def fresh_executors(monkeypatch):
    """The executor registry discovered again (entry points installed by the test included), and
    submitit's plugin cache cleared before and after."""
    from submitit.core import plugins

    from bench.run.scheduler import executors

    executors.names()  # the built-ins are registered
    monkeypatch.setattr(executors, "_entries", dict(executors._entries))
    monkeypatch.setattr(executors, "_discovered", False)
    plugins._get_plugins.cache_clear()
    plugins.get_executors.cache_clear()
    yield executors
    plugins._get_plugins.cache_clear()
    plugins.get_executors.cache_clear()


RECORDING = '''
from bench.run.scheduler import Executor, JobOutcome


class Recording(Executor):
    """Runs each job in this process, as a remote executor would (the job resolves itself)."""

    ran = []

    def run(self, jobs, retries, extract_array, poll, on_states, on_retry):
        Recording.ran += [type(job).__name__ for job in jobs]
        return [JobOutcome(job, result=job()) for job in jobs]
'''


def test_an_executor_from_an_installed_package_runs_bench_run(tmp_path, monkeypatch, capsys,
                                                              fresh_executors):
    """A bench.executors entry point is a --executor choice; `bench run` hands it the job."""
    from bench.cli import main

    install(tmp_path, monkeypatch, "plugin_executor", RECORDING,
            "[bench.executors]\nrecording = plugin_executor:Recording\n")
    assert "recording" in fresh_executors
    assert main(["run", "--backbone", "pixels", "--backbone-arg", "size=4", "--task", "digits",
                 "--task-arg", "limit=30", "--executor", "recording", "--workers", "0",
                 "--epochs", "2", "--lrs", "1e-2", "--wds", "0", "--no-progress"]) == 0
    assert "pixels/digits/image/4/linear: test_top1" in capsys.readouterr().out
    import plugin_executor

    assert plugin_executor.Recording.ran == ["BenchJob"]


def test_a_submitit_executor_plugin_is_an_executor_kind(tmp_path, monkeypatch, fresh_executors):
    """An executor submitit loads from its own entry-point group passes through AutoExecutor by
    its submitit name: bench needs no code for it."""
    from bench.run.scheduler import ExecutorConfig, run_jobs

    install(tmp_path, monkeypatch, "plugin_cluster", (
        "from submitit.local.debug import DebugExecutor\n"
        "class InlineExecutor(DebugExecutor):\n"
        "    submitted = 0\n"
        "    def _internal_process_submissions(self, delayed):\n"
        "        InlineExecutor.submitted += len(delayed)\n"
        "        return super()._internal_process_submissions(delayed)\n"),
        "[submitit]\nexecutor = plugin_cluster:InlineExecutor\n")
    assert "inline" in fresh_executors
    config = ExecutorConfig("inline", folder=str(tmp_path / "jobs"))
    outcomes = run_jobs([functools.partial(pow, 2, 5), functools.partial(pow, 3, 2)], config,
                        poll=0.01)
    assert [o.result for o in outcomes] == [32, 9]
    import plugin_cluster

    assert plugin_cluster.InlineExecutor.submitted == 2
    with pytest.raises(UnknownNameError, match="unknown executor 'inlin'.*Did you mean inline"):
        ExecutorConfig("inlin")


# --- the one registry -------------------------------------------------------------------------------
class Named:
    def __init__(self, name: str):
        self.name = name


def test_one_registry_checks_names_suggests_and_loads_lazily(tmp_path, monkeypatch):
    """Instances that carry their name (head kinds, metrics), a tuple of them from one entry
    point (a package's built-ins, as this project declares its heads), and a lazy registry that
    lists its entry points without importing them (paper files) and loads one when asked."""
    import sys

    from bench.errors import UsageError
    from bench.registry import DuplicateNameError, RegistrationError

    install(tmp_path, monkeypatch, "plugin_named", (
        "from tests.test_plugins import Named\n"
        "BUILTINS = (Named('alpha'), Named('beta'))\n"
        "GAMMA = Named('gamma')\n"),
        "[bench.nameds]\nbuiltins = plugin_named:BUILTINS\nother = plugin_named:GAMMA\n"
        "[bench.papers]\nlate = plugin_named:GAMMA\n")
    named = Registry("named", Named, key=lambda entry: entry.name)
    named.add(Named("zeta"))
    assert named.names() == ["zeta", "alpha", "beta", "gamma"]
    assert named.names("*ta") == ["zeta", "beta"]
    assert named.get("beta").name == "beta" and "gamma" in named
    with pytest.raises(UnknownNameError, match=r"unknown named 'btea'"):
        named.get("btea")
    with pytest.raises(UsageError, match=r"Did you mean beta.*nameds: zeta, alpha, beta, gamma"):
        named.get("btea")
    with pytest.raises(DuplicateNameError, match="'beta' is registered twice"):
        named.add(Named("beta"))
    with pytest.raises(RegistrationError, match="a named must be a tests.test_plugins.Named"):
        named.add("beta")
    assert issubclass(RegistrationError, TypeError) and issubclass(RegistrationError, FactoryError)

    sys.modules.pop("plugin_named", None)
    lazy = Registry("paper", Named, lazy=True)
    assert lazy.names() == ["late"] and "plugin_named" not in sys.modules  # listed, not loaded
    assert lazy.get("late").name == "gamma" and "plugin_named" in sys.modules
    lazy.add_lazy("file", lambda: Named("from a file"))
    assert lazy.names() == ["late", "file"] and lazy.get("file").name == "from a file"
    with pytest.raises(DuplicateNameError, match="paper 'late' is registered twice"):
        lazy.add_lazy("late", lambda: Named("another file of the same name"))


def test_the_built_in_heads_and_executors_are_this_projects_entry_points():
    """Core names no heads module and the scheduler no executors module (no import circle):
    both come from pyproject's entry points, the built-ins first."""
    from importlib.metadata import entry_points

    from bench.protocol import head_names
    from bench.run.scheduler import executors

    assert "bench.heads.kinds:KINDS" in {p.value for p in entry_points(group="bench.heads")}
    assert "bench.run.executors" in {p.value for p in entry_points(group="bench.executors")}
    assert head_names()[:3] == ["linear", "bn-linear", "mlp"]
    assert {"local", "submitit-local", "slurm"} <= set(executors.names())
