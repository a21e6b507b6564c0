"""The scheduler without a cluster: how often the queue is asked (a clock of our own), and the
one-line refusals where SLURM is not installed, has no controller, or refuses a submission.

Every real SLURM command is off PATH (conftest's ``hide_slurm``) and the ones a test needs are
scripts of its own, so these tests behave the same on a machine without SLURM, with SLURM's tools but no controller, and on
the CI cluster (``tests/test_sweep_slurm.py`` runs the real thing there).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from tests.services import SLURM_COMMANDS

FAST = ["--epochs", "2", "--lrs", "1e-2", "--wds", "0", "--workers", "0", "--no-progress"]


@pytest.fixture
def no_slurm() -> None:
    """Not one SLURM command on PATH (conftest's ``hide_slurm`` took them off), as on a laptop."""
    assert not any(shutil.which(command) for command in SLURM_COMMANDS), os.environ["PATH"]


@pytest.fixture
def fake_slurm(no_slurm, tmp_path, monkeypatch) -> Path:
    """A folder first on PATH for fake SLURM commands; without them SLURM is not installed."""
    folder = tmp_path / "fake-slurm"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def _fake(folder: Path, name: str, script: str) -> None:
    (folder / name).write_text(f"#!/bin/sh\n{script}\n")
    (folder / name).chmod(0o755)


def _commands(tmp_path) -> dict[str, list[str]]:
    from tests.test_reproduce import tiny_paper

    return {
        "run": ["run", "--backbone", "pixels", "--task", "digits", *FAST],
        "sweep": ["sweep", "--backbones", "pixels", "--tasks", "digits", *FAST],
        "reproduce": ["reproduce", tiny_paper(tmp_path), "--table", "main", "--workers", "0",
                      "--no-progress"],
    }


def _error_lines(err: str) -> list[str]:
    """stderr without MLflow's INFO lines (printed when a store is first created)."""
    return [line for line in err.splitlines() if line.strip() and " INFO mlflow." not in line]


def _nothing_done(tmp_path) -> None:
    """No tracking store, cache or job folder was made: the refusal came before any work."""
    results = tmp_path / "results"
    made = sorted(str(p.relative_to(results)) for p in results.rglob("*")) \
        if results.exists() else []
    assert made == [], made


@pytest.mark.parametrize("command", ["run", "sweep", "reproduce"])
def test_slurm_not_installed_is_one_line_before_any_work(command, no_slurm, tmp_path,
                                                         capsys):
    """No SLURM tools at all (a laptop): one line naming the missing tools and what to do."""
    assert main([*_commands(tmp_path)[command], "--executor", "slurm"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "bench: error: the slurm executor needs SLURM's client tools and sbatch, srun, squeue, "
        "scontrol are not on PATH: run bench on a machine that submits to your cluster (a login "
        "node), or install them with the cluster's slurm.conf (Debian/Ubuntu: apt-get install "
        "slurm-client); or run with --executor local or submitit-local"]
    _nothing_done(tmp_path)


def test_the_library_refuses_as_the_command_does(no_slurm, tmp_path):
    """``run_jobs`` called directly (no bench.api in between): the same refusal, nothing
    submitted or written."""
    from bench.run.scheduler import ExecutorConfig, ExecutorUnavailable, run_jobs

    config = ExecutorConfig("slurm", folder=str(tmp_path / "jobs"))
    with pytest.raises(ExecutorUnavailable, match="sbatch, srun, squeue, scontrol are not on PATH"):
        run_jobs([print], config)
    assert not (tmp_path / "jobs").exists()


def test_a_missing_slurm_tool_is_named(fake_slurm, tmp_path, capsys):
    for tool in ("sbatch", "srun", "scontrol"):  # squeue is missing
        _fake(fake_slurm, tool, "exit 0")
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST,
                 "--executor", "slurm"]) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert "needs SLURM's client tools and squeue is not on PATH" in line, line
    _nothing_done(tmp_path)


# What scontrol prints where no slurm.conf names a controller (a fresh `apt-get install
# slurm-client`), and its exit status 1: SLURM's own signal that no controller answered.
NO_CONFIG = ("echo 'scontrol: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host' "
             ">&2\necho 'scontrol: fatal: Could not establish a configuration source' >&2\nexit 1")


@pytest.mark.parametrize("command", ["run", "sweep", "reproduce"])
def test_slurm_without_a_controller_is_one_line(command, fake_slurm, tmp_path, capsys):
    """SLURM's tools are there but no controller answers `scontrol ping`: one line, before any
    work (and before sbatch, which would wait for the controller)."""
    for tool in SLURM_COMMANDS:
        _fake(fake_slurm, tool, "echo \"$0 $*\" >> \"$(dirname \"$0\")/calls\"\n" + NO_CONFIG)
    assert main([*_commands(tmp_path)[command], "--executor", "slurm"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "bench: error: no SLURM controller answers from here (`scontrol ping`: scontrol: error: "
        "resolve_ctls_from_dns_srv: res_nsearch error: Unknown host): check that slurmctld runs "
        "and that this machine has the cluster's slurm.conf (or SLURM_CONF names it); or run "
        "with --executor local or submitit-local"]
    assert (fake_slurm / "calls").read_text() == f"{fake_slurm / 'scontrol'} ping\n"
    _nothing_done(tmp_path)


def test_a_controller_that_is_down_is_one_line(fake_slurm, capsys):
    """What `scontrol ping` prints (to root) where slurm.conf names a controller that is down."""
    for tool in SLURM_COMMANDS:
        _fake(fake_slurm, tool, "exit 0")
    _fake(fake_slurm, "scontrol", "echo 'Slurmctld(primary) at head is DOWN'\n"
          "echo '*****************************************'\n"
          "echo '** RESTORE SLURMCTLD DAEMON TO SERVICE **'\nexit 1")
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST,
                 "--executor", "slurm"]) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert line.startswith("bench: error: no SLURM controller answers from here (`scontrol ping`: "
                           "Slurmctld(primary) at head is DOWN): "), line


def test_slurm_refusing_the_submission_is_one_line(fake_slurm, capsys):
    """A controller answers, but a real `sbatch` process fails (here as it does without a
    configuration; a refused partition or account reads the same): its last line, one line."""
    for tool in ("sbatch", "squeue", "sacct", "scancel"):
        _fake(fake_slurm, tool,
              "echo 'sbatch: error: fetch_config: DNS SRV lookup failed' >&2\n"
              "echo 'sbatch: fatal: Could not establish a configuration source' >&2\nexit 1")
    _fake(fake_slurm, "srun", "exit 0")
    _fake(fake_slurm, "scontrol", "echo 'Slurmctld(primary) at head is UP'")
    assert main(["run", "--backbone", "pixels", "--task", "digits", *FAST,
                 "--executor", "slurm"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "bench: error: SLURM refused the submission (sbatch: fatal: Could not establish a "
        "configuration source): is a controller reachable from here (`sinfo`)? Or run with "
        "--executor local"]


def test_the_queue_is_listed_once_a_poll_for_all_jobs_then_once_a_minute(monkeypatch):
    """200 jobs polled every 5 s for 30 minutes (a clock of our own): the queue is listed in one
    call for all of them at 0, 5, 10, 20, 40, 80 s after the submission, then once a minute
    (old: one listing per running job per poll, 72,000 here); a new submission lists often
    again."""
    from bench.run import scheduler

    clock = [0.0]
    monkeypatch.setattr(scheduler.time, "monotonic", lambda: clock[0])
    jobs = [f"7_{i}" for i in range(200)]

    class Listing:
        calls: list[float] = []

        def queue_states(self):
            self.calls.append(clock[0])
            return dict.fromkeys(jobs, "RUNNING")

    kind = Listing()
    queue = scheduler._Queue(kind, poll=5.0)
    while clock[0] <= 1800:
        queue.refresh(jobs)
        clock[0] += 5.0
    gaps = [b - a for a, b in zip(kind.calls, kind.calls[1:])]
    assert kind.calls[:6] == [0, 5, 10, 20, 40, 80] and set(gaps[5:]) == {60.0}, kind.calls
    assert len(kind.calls) == 34

    kind.calls.clear()
    queue.submitted_now()  # a retry: its start is watched closely again
    for _ in range(3):
        queue.refresh(jobs)
        clock[0] += 5.0
    assert len(kind.calls) == 3


def test_a_job_is_gone_only_after_the_listings_lack_it_for_a_while(monkeypatch):
    """Missing from every listing for GONE_AFTER_S (15 s): gone. Listed again: not gone. A queue
    that does not answer (squeue failing) makes no job gone, however long it lasts."""
    from bench.run import scheduler

    clock = [0.0]
    monkeypatch.setattr(scheduler.time, "monotonic", lambda: clock[0])
    answer: list[dict[str, str] | None] = [{"1": "RUNNING"}]

    class Listing:
        def queue_states(self):
            return answer[0]

    queue = scheduler._Queue(Listing(), poll=5.0)
    seen = []
    for _ in range(6):  # listings at 0, 5, 10, 20 s
        queue.refresh(["1", "2"])
        seen.append((clock[0], queue.gone("1"), queue.gone("2")))
        clock[0] += 5.0
    assert seen == [(0, False, False), (5, False, False), (10, False, False),
                    (15, False, False), (20, False, True), (25, False, True)]

    queue = scheduler._Queue(Listing(), poll=5.0)
    queue.refresh(["2"])  # missing from the first listing ...
    answer[0] = None  # ... then the queue stops answering for ten minutes
    for _ in range(120):
        clock[0] += 5.0
        queue.refresh(["2"])
    assert not queue.gone("2")
    answer[0] = {"2": "PENDING"}  # back (requeued): listed again
    clock[0] += 60.0
    queue.refresh(["2"])
    assert not queue.gone("2") and queue.states == {"2": "PENDING"}
