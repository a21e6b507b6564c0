"""Shared test setup: offline, and every run's results, caches and weights in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
