"""A run's files: written with it, read back (the per-image test predictions)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.results import record as names
from bench.results.store import reader


def log_files(mlflow_client: Any, run_id: str, artifacts: dict[str, bytes]) -> None:
    """Log ``artifacts`` (file name -> bytes) as the run's files, in one upload."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in artifacts.items():
            (Path(tmp) / name).write_bytes(content)
        if artifacts:
            mlflow_client.log_artifacts(run_id, tmp)


def load_predictions(run_id: str) -> Any:
    """The run's per-image test predictions (``bench.stats.Predictions``), from its artifact."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from bench.stats import Predictions

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = reader().download_artifacts(run_id, names.PREDICTIONS, tmp)
        except Exception as e:
            raise BenchError(f"run {run_id} has no {names.PREDICTIONS} artifact (logged before "
                             "bench stored predictions?); re-run it with --force") from e
        try:
            return Predictions.load(path)
        except BenchError as e:
            raise BenchError(f"the stored predictions of run {run_id} cannot be read: "
                             f"{str(e).replace(str(path), names.PREDICTIONS)}; re-run it with "
                             "--force") from e
