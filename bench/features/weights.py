"""Fetching and identifying weight files: one download path shared by every backbone family.

A URL is downloaded once into ``$BENCH_WEIGHTS`` (default ``~/.cache/bench/weights``) with a
progress bar, written to a temporary name and renamed only when complete and verified, and its
sha256 is recorded beside it (``NAME.sha256``, with the file's size, mtime_ns, ctime_ns and inode)
so later runs know the digest without rehashing.
A local path is used as it is. Offline (``HF_HUB_OFFLINE=1`` or ``BENCH_OFFLINE=1``) a missing
file is an error that says where to put it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.paths import offline, weights_dir


class WeightsError(BenchError, RuntimeError):
    """Weights that cannot be found, fetched or verified; the message says how to fix it.
    ``source`` (a URL or hub file) and ``target`` (where it goes) when a download is what is
    missing, so a dry run can list them without reading the message."""

    def __init__(self, message: str, source: str = "", target: Path | None = None):
        super().__init__(message)
        self.source, self.target = source, target


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file, cached in the JSON sidecar ``PATH.sha256``.

    The sidecar is trusted only while the file's size, mtime_ns, ctime_ns and inode all match
    what it records; otherwise rehash. ctime_ns is the one no user call can set back: bytes
    rewritten in place under a restored mtime (``cp --preserve=timestamps`` over the file,
    ``os.utime``) keep size, mtime and inode but change it.
    """
    path = Path(path)
    stamp = _stamp(path)
    sidecar = path.with_name(path.name + ".sha256")
    try:
        recorded = json.loads(sidecar.read_text())
        if {k: recorded[k] for k in stamp} == stamp:
            return recorded["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, old text format or damaged: rehash
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    _write_sidecar(path, digest)
    return digest


def _stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
            "inode": stat.st_ino}


def _write_sidecar(path: Path, digest: str) -> None:
    if not path.parent.stat().st_mode & 0o222:  # a folder marked read-only (root could write)
        return
    try:
        text = json.dumps({"sha256": digest, "file": path.name, **_stamp(path)})
        path.with_name(path.name + ".sha256").write_text(text + "\n")
    except OSError:
        pass  # read-only weights folder: the digest is still returned


def load_checkpoint(path: str | os.PathLike, kind: str) -> Any:
    """The object in a weights file (safetensors, or a torch pickle of tensors only); errors as in
    ``reading_checkpoint``."""
    import torch

    path = Path(path)
    with reading_checkpoint(path, kind):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def reading_checkpoint(path: str | os.PathLike, kind: str) -> Iterator[None]:
    """Wrap code that reads the weights file ``path`` (ours, or a library's own loader: timm,
    open_clip): a file that is truncated, not a checkpoint or a pickle holding code raises
    ``WeightsError`` naming the file and ``kind``; torch's own advice (loading with
    weights_only=False, which would run the file's code) is never relayed."""
    try:
        yield
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as e:  # torch and safetensors raise many types for damaged files
        message = str(e)
        if "weights_only" in message or "Unsupported global" in message:
            reason = "it holds Python objects besides tensors (a pickle that can run code)"
        else:
            reason = f"{type(e).__name__}: {message.splitlines()[0][:200] if message else 'unreadable'}"
        raise WeightsError(
            f"{path} is not a valid {kind} checkpoint ({reason}). Delete it and download it again, "
            "or pass a good file with --backbone-arg weights=PATH."
        ) from None


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
            f"Download the file elsewhere and put it at {target}, or pass its local path.",
            source=text, target=target)
    download(text, target, sha256)
    return target


def download(
    url: str, target: Path, sha256: str | None = None, md5: str | None = None
) -> None:
    """Fetch ``url`` to ``target``, resumably and atomically.

    Bytes go to ``TARGET.partial``, which survives an interrupted run; the next call asks the
    server only for the missing tail (HTTP Range) and starts over if the server ignores that.
    The file is renamed to ``target`` only once complete and matching every digest given.
    """
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    retry = f"Run the same command again to resume, or fetch {url} by hand to {target}."
    total = None
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if response.status != 206:  # a full response: the server ignored the Range
                start = 0
            elif not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
                partial.unlink()
                raise WeightsError(f"{url}: the server resumed at the wrong offset. {retry}")
            length = int(response.headers.get("Content-Length") or 0)
            total = start + length if length else None
            with open(partial, "ab" if start else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=target.name
            ) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        if not (e.code == 416 and start):  # 416 after a partial: nothing left to fetch
            raise WeightsError(f"download of {url} failed: {e}. {retry}") from e
    except (OSError, http.client.HTTPException) as e:
        raise WeightsError(f"download of {url} failed: {e}. {retry}") from e
    size = partial.stat().st_size
    if total is not None and size != total:
        raise WeightsError(f"download of {url} stopped at {size} of {total} bytes. {retry}")
    digests = file_digests(partial)
    for kind, expected in (("sha256", sha256), ("md5", md5)):
        if expected and digests[kind] != expected.lower():
            partial.unlink()
            raise WeightsError(
                f"{url}: {kind} {digests[kind]} does not match the expected {expected}; the "
                "corrupt download was deleted. Run again; if it persists the source has changed."
            )
    os.replace(partial, target)
    _write_sidecar(target, digests["sha256"])


def file_digests(path: str | os.PathLike, chunk: int = 1 << 22) -> dict[str, str]:
    """sha256 and md5 of a file in one read (datasets publish md5, we record sha256)."""
    hashes = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    with open(path, "rb") as f:
        while block := f.read(chunk):
            for h in hashes.values():
                h.update(block)
    return {kind: h.hexdigest() for kind, h in hashes.items()}


def random_weights_file(key: dict[str, Any], seed: int, build: Callable[[], Any]) -> Path:
    """Seeded random weights of a real architecture, saved once (safetensors) in the weights dir.

    Test-sized presets load this file through the same path as downloaded weights. safetensors is
    byte-deterministic (torch.save is not), so the digest is the same on every machine.
    """
    import tempfile

    import torch
    from safetensors.torch import save_file

    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = weights_dir() / f"random-{key['family']}-{tag}-seed{seed}.safetensors"
    if path.is_file():
        return path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as tmp:
        pass
    save_file(state, tmp.name, metadata={"format": "pt", "seed": str(seed)})
    os.replace(tmp.name, path)  # atomic: concurrent jobs may race to write the same bytes
    return path
