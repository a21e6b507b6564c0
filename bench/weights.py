"""Fetching and identifying weight files: one download path shared by every backbone family.

A URL is downloaded once into ``$BENCH_WEIGHTS`` (default ``~/.cache/bench/weights``) with a
progress bar, written to a temporary name and renamed only when complete and verified, and its
sha256 is recorded beside it (``NAME.sha256``) so later runs know the digest without rehashing.
A local path is used as it is. Offline (``HF_HUB_OFFLINE=1`` or ``BENCH_OFFLINE=1``) a missing
file is an error that says where to put it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path


class WeightsError(RuntimeError):
    """Weights that cannot be found, fetched or verified; the message says how to fix it."""


def weights_dir() -> Path:
    if os.environ.get("BENCH_WEIGHTS"):
        return Path(os.environ["BENCH_WEIGHTS"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bench" / "weights"


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "BENCH_OFFLINE"))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file, cached in ``PATH.sha256`` when that is newer than the file."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists() and sidecar.stat().st_mtime >= path.stat().st_mtime:
        return sidecar.read_text().split()[0]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    try:
        sidecar.write_text(f"{digest}  {path.name}\n")
    except OSError:
        pass  # read-only weights folder: the digest is still returned
    return digest


def resolve(source: str | os.PathLike, sha256: str | None = None) -> Path:
    """A local weights file for ``source`` (a path or an http(s) URL), downloading if needed."""
    text = str(source)
    if not text.startswith(("http://", "https://")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path
    target = weights_dir() / text.rstrip("/").rsplit("/", 1)[-1]
    if target.is_file():
        return target
    if offline():
        raise WeightsError(
            f"weights {text} are not in the cache and downloads are off (offline mode). "
            f"Download the file elsewhere and put it at {target}, or pass its local path."
        )
    download(text, target, sha256)
    return target


def download(url: str, target: Path, sha256: str | None = None) -> None:
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise WeightsError(f"download of {url} failed: {e}. Retry, or fetch it by hand to {target}.")
    digest = h.hexdigest()
    if sha256 and digest != sha256:
        partial.unlink(missing_ok=True)
        raise WeightsError(f"{url}: sha256 {digest} does not match the expected {sha256}")
    os.replace(partial, target)
    target.with_name(target.name + ".sha256").write_text(f"{digest}  {target.name}\n")
