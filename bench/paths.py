"""Every directory and environment variable bench reads, in one place.

| what | variable | default |
| --- | --- | --- |
| results (runs, leaderboards, jobs) | ``BENCH_RESULTS`` | ``./results`` |
| feature cache | ``BENCH_CACHE`` | ``RESULTS/cache`` |
| datasets | ``BENCH_DATA`` (or ``--data-root``) | ``~/.cache/bench/data`` |
| weights | ``BENCH_WEIGHTS`` | ``~/.cache/bench/weights`` |
| tracking store | ``MLFLOW_TRACKING_URI`` | ``sqlite:///RESULTS/mlflow.db`` |
| submitit job folders | ``--job-dir`` | ``RESULTS/jobs`` |
| executor profiles | ``BENCH_PROFILES`` (or ``--profiles``) | ``~/.config/bench/profiles.yaml`` |

``~/.cache`` honours ``XDG_CACHE_HOME``. Paths are resolved when asked for, so a job on another node
reads its own environment (the driver passes the values that must agree, such as the tracking
URI and the cache folder, explicitly).
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.errors import UsageError


def _folder(path: Path, source: str) -> Path:
    """``path`` unless it exists as something other than a folder: then one line naming it."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{source} {path} is a file, not a folder: move the file away or "
                         "choose another folder")
    return path


def check_writable(path: Path, source: str) -> Path:
    """``path`` if it (or, while it does not exist yet, its nearest existing parent) can be
    written: a read-only mount is named before any work, not after the probe."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise UsageError(f"{source} {path} cannot be written ({existing} is read-only): make it "
                         "writable or choose another folder")
    return path


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def results_dir() -> Path:
    return _folder(Path(os.environ.get("BENCH_RESULTS", "results")).expanduser().resolve(),
                   "BENCH_RESULTS")


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return _folder(Path(explicit).expanduser().resolve(), "--cache-dir")
    if os.environ.get("BENCH_CACHE"):
        return _folder(Path(os.environ["BENCH_CACHE"]).expanduser().resolve(), "BENCH_CACHE")
    return _folder(results_dir() / "cache", "the cache folder")


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("BENCH_DATA"):
        return Path(os.environ["BENCH_DATA"]).expanduser()
    return _user_cache() / "bench" / "data"


def weights_dir() -> Path:
    if os.environ.get("BENCH_WEIGHTS"):
        return Path(os.environ["BENCH_WEIGHTS"]).expanduser()
    return _user_cache() / "bench" / "weights"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{results_dir() / 'mlflow.db'}"


def jobs_dir(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit).expanduser().resolve() if explicit else results_dir() / "jobs"


def profiles_file(explicit: str | os.PathLike | None = None) -> Path:
    chosen = explicit or os.environ.get("BENCH_PROFILES")
    return Path(chosen or Path.home() / ".config" / "bench" / "profiles.yaml").expanduser()
