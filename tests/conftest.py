"""Shared test setup: offline, and every run's results, caches and weights in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import urllib.request

import pytest

from tests.services import MLFLOW_ENV, PARTITION, SLURM_ENV, _require, _sh
from tests.services import hide_slurm  # noqa: F401  (autouse: no SLURM unless marked)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(autouse=True)
def isolated_results(tmp_path, monkeypatch):
    """Each test writes MLflow runs, feature caches and weights under its own tmp_path."""
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("BENCH_CACHE", raising=False)
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "weights"))
    if not os.environ.get("BENCH_TEST_KEEP_TRACKING_URI"):
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def one_thread():
    """Thousands of tiny steps: one torch thread (several spin against each other on a shared
    CPU)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def records(suite: str = "bench", include_superseded: bool = False):
    """The finished result records of a suite, as leaderboards read them."""
    from bench.results.runs import find_records
    from bench.results.store import experiment_ids

    return find_records(experiment_ids([suite]), include_superseded=include_superseded)


# --- real services (see tests/services.py) ------------------------------------------------
@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    value = _require(SLURM_ENV, "`sudo scripts/slurm-up.sh`", "1")
    if value != "1":
        pytest.fail(f"{SLURM_ENV} must be 1 (or 0 to skip), got {value!r}")
    state = _sh("sinfo", "-h", "-p", PARTITION, "-o", "%T")
    if not {"idle", "mixed", "allocated"} & set(state.split()):
        pytest.fail(
            f"{SLURM_ENV}=1 but partition {PARTITION!r} is not usable (sinfo: {state!r}); "
            "run `sudo scripts/slurm-up.sh`"
        )
    return PARTITION


@pytest.fixture(scope="session")
def mlflow_server_uri() -> str:
    uri = _require(MLFLOW_ENV, "`scripts/mlflow-up.sh DIR PORT`", "http://127.0.0.1:PORT").rstrip(
        "/"
    )
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as resp:
            assert resp.status == 200
    except OSError as e:
        pytest.fail(f"{MLFLOW_ENV}={uri} but GET /health fails ({e}); run scripts/mlflow-up.sh")
    return uri
