"""Every directory and environment variable bench reads, in one place.

| what | variable | default |
| --- | --- | --- |
| results (runs, leaderboards, jobs) | ``BENCH_RESULTS`` | ``./results`` |
| records waiting for the tracking server | | ``RESULTS/pending`` |
| artifacts of a local (sqlite) store | | ``RESULTS/artifacts`` |
| leaderboard figures | | ``RESULTS/figures`` |
| similarity matrices (``bench similarity``) | | ``RESULTS/similarity`` |
| paper reports (``bench report``) | | ``RESULTS/reports`` |
| feature cache | ``BENCH_CACHE`` | ``RESULTS/cache`` |
| datasets | ``BENCH_DATA`` (or ``--data-root``) | ``~/.cache/bench/data`` |
| weights | ``BENCH_WEIGHTS`` | ``~/.cache/bench/weights`` |
| tracking store | ``MLFLOW_TRACKING_URI`` | ``sqlite:///RESULTS/mlflow.db`` |
| tracking server access | MLflow's ``MLFLOW_TRACKING_TOKEN``, ``_USERNAME``, ``_PASSWORD``, TLS and timeout variables | none |
| submitit job folders | ``--job-dir`` | ``RESULTS/jobs`` |
| executor profiles | ``BENCH_PROFILES`` (or ``--profiles``) | ``~/.config/bench/profiles.yaml`` |
| compiled kernels (``--compile``) | ``TORCHINDUCTOR_CACHE_DIR`` | ``WEIGHTS/torch-compile`` |

| switch | variable | default |
| --- | --- | --- |
| no downloads | ``BENCH_OFFLINE`` or ``HF_HUB_OFFLINE`` (not ``0``) | downloads on |
| largest image decoded (pixels, 0: no limit) | ``BENCH_MAX_IMAGE_PIXELS`` | Pillow's limit |
| tracebacks for user errors too | ``BENCH_DEBUG`` | one line, exit 2 |

``~/.cache`` honours ``XDG_CACHE_HOME``. Paths are resolved when asked for, so a job on another node
reads its own environment (the driver passes the values that must agree, such as the tracking
URI and the cache folder, explicitly).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.errors import UsageError

# Read at import: bench sets TORCHINDUCTOR_CACHE_DIR itself once it compiles (bench.features.compile), so
# only a value present before that is the user's.
_USER_INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


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


def pending_dir() -> Path:
    """Records logged while the tracking server was unreachable, sent by ``bench sync``."""
    return results_dir() / "pending"


def artifacts_dir() -> Path:
    return results_dir() / "artifacts"


def figures_dir() -> Path:
    return results_dir() / "figures"


def similarity_dir() -> Path:
    """Similarity matrices' files, one folder per matrix identity."""
    return results_dir() / "similarity"


def reports_dir() -> Path:
    """Paper reports (``bench report PAPER``), one folder per paper."""
    return results_dir() / "reports"


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


def compile_cache_dir() -> Path:
    """Where compiled kernels persist between runs: the user's TORCHINDUCTOR_CACHE_DIR, else
    ``torch-compile`` in the weights folder (shared by every run and SLURM task that shares it)."""
    return Path(_USER_INDUCTOR_CACHE) if _USER_INDUCTOR_CACHE else weights_dir() / "torch-compile"


def offline() -> bool:
    """Whether downloads are off (``BENCH_OFFLINE`` or ``HF_HUB_OFFLINE`` set, not to 0)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "BENCH_OFFLINE"))


@contextlib.contextmanager
def downloads_off() -> Iterator[None]:
    """Inside, nothing is downloaded (a dry run reads local files only): ``offline()`` is true,
    and so is the Hugging Face hub's own switch, which the hub reads once when it is imported
    (set here directly when it was, and put back after)."""
    names = ("BENCH_OFFLINE", "HF_HUB_OFFLINE")
    saved = {name: os.environ.get(name) for name in names}
    hub = sys.modules.get("huggingface_hub.constants")
    hub_was = getattr(hub, "HF_HUB_OFFLINE", None)
    os.environ.update(dict.fromkeys(names, "1"))
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        hub = sys.modules.get("huggingface_hub.constants")  # perhaps imported inside
        if hub is not None:
            hub.HF_HUB_OFFLINE = hub_was if hub_was is not None else saved["HF_HUB_OFFLINE"] not in (
                None, "", "0")


TRACKING_HTTP = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
                 "MLFLOW_TRACKING_CLIENT_CERT_PATH", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def tracking_http() -> dict[str, str]:
    """MLflow's settings for reaching a tracking server that are set (``TRACKING_HTTP``): bench's
    own reads of a server honour them as MLflow's client does (``bench.results.reader``)."""
    return {name: os.environ[name] for name in TRACKING_HTTP if os.environ.get(name)}


def debug() -> bool:
    """Whether user errors keep their traceback (``BENCH_DEBUG``)."""
    return bool(os.environ.get("BENCH_DEBUG"))


def max_image_pixels() -> int | None:
    """``BENCH_MAX_IMAGE_PIXELS`` (0: no limit), None when unset."""
    value = os.environ.get("BENCH_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"BENCH_MAX_IMAGE_PIXELS={value!r} is out of range: it must be an "
                         "integer >= 0 (0: no limit)") from None
