"""Released weights and their files: what a preset loads, fetching it, and finding it offline.

``Weights`` describes a preset's released weights (timm's ``PretrainedCfg`` in spirit): the files
(a URL, or paths in a Hugging Face Hub repo at a pinned revision), each with its size and sha256
where the source publishes them (None otherwise: never a guess), the input size and
normalisation, the licence, where the weights are published and the paper whose numbers they
reproduce. Every family declares its presets' weights with it; ``locate`` says, without touching
the network, which files are already on this machine and what a full run would download.

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
from dataclasses import dataclass
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


# --- what a preset's released weights are --------------------------------------------------------
@dataclass(frozen=True)
class WeightsFile:
    """One file a full run fetches: a URL, or a path inside the Hub repo of its ``Weights``."""

    name: str
    size: int | None = None  # bytes, as the source publishes them; None: not published (or found)
    sha256: str | None = None  # as the source publishes it; a file that differs is refused
    local: str | None = None  # where it is kept under $BENCH_WEIGHTS (default: the URL's last part)
    alternatives: tuple[str, ...] = ()  # Hub names the loader takes instead when ``name`` is absent

    def target(self) -> Path | None:
        """Where a download of this URL file is kept ($BENCH_WEIGHTS); None for a Hub file (the
        Hugging Face cache keeps those)."""
        if self.local is None and not self.name.startswith(("http://", "https://")):
            return None
        return weights_dir() / (self.local or self.name.rstrip("/").rsplit("/", 1)[-1])


@dataclass(frozen=True)
class Weights:
    """A preset's released weights: its files and what a user should know about them."""

    files: tuple[WeightsFile, ...]
    hub_id: str | None = None  # the Hugging Face Hub repo the files are in (None: URLs)
    revision: str | None = None  # the Hub commit pinned (None: the repo's main branch)
    input_size: int | None = None  # the image side the weights were trained at
    mean: tuple[float, ...] | None = None  # normalisation of the inputs, per channel
    std: tuple[float, ...] | None = None
    licence: str = ""
    origin: str = ""  # where they are published (repository, model card)
    paper: str = ""  # the source of the published numbers these weights reproduce
    arguments: tuple[str, ...] = ("weights",)  # factory arguments that load other weights

    def __post_init__(self) -> None:
        if self.hub_id is None:
            for file in self.files:  # ``resolve`` checks a download of it against these
                _PUBLISHED[file.name] = file

    @property
    def url(self) -> str | None:
        """The URL of a single-file release (None for a Hub repo)."""
        return self.files[0].name if self.hub_id is None and len(self.files) == 1 else None

    @property
    def size(self) -> int | None:
        """Bytes of every file, when the source publishes each size."""
        sizes = [file.size for file in self.files]
        return None if None in sizes else sum(sizes)

    def applies(self, arguments: dict[str, Any]) -> bool:
        """Whether a preset given ``arguments`` loads these weights (none of ``arguments``
        chooses others)."""
        return not set(arguments) & set(self.arguments)


_PUBLISHED: dict[str, WeightsFile] = {}  # URL -> the file a release declares there


@dataclass(frozen=True)
class LocalFile:
    """A file of a release on this machine: where it is, or None where a run downloads it."""

    file: WeightsFile
    path: Path | None


@dataclass(frozen=True)
class Availability:
    """What ``locate`` found of a release: each file and where it is."""

    weights: Weights
    files: tuple[LocalFile, ...]

    @property
    def missing(self) -> list[WeightsFile]:
        return [found.file for found in self.files if found.path is None]

    @property
    def download_bytes(self) -> int | None:
        """Bytes a full run would download (0: all here); None when a missing file's size is
        not published."""
        sizes = [file.size for file in self.missing]
        return None if None in sizes else sum(sizes)

    def describe(self) -> str:
        """One line: here, or what a full run would download and its size."""
        missing = self.missing
        if not missing:
            return "weights present"
        where = f" from {self.weights.hub_id}" if self.weights.hub_id else ""
        known = sum(file.size for file in missing if file.size is not None)
        unknown = sum(file.size is None for file in missing)
        size = f"{known / 1e9:.2f} GB" if known else ""
        if unknown:
            size += f"{' + ' if known else ''}{unknown} size{'s' * (unknown > 1)} not published"
        return f"would download{where}: {', '.join(f.name for f in missing)} ({size})"


def locate(weights: Weights) -> Availability:
    """Which files of ``weights`` are already on this machine and where, without touching the
    network (a dry run's question): URL files in $BENCH_WEIGHTS (or torch hub's checkpoints, as
    torchvision keeps them), Hub files in the Hugging Face cache at the pinned revision."""
    return Availability(weights, tuple(LocalFile(f, _local_path(weights, f))
                                       for f in weights.files))


def _local_path(weights: Weights, file: WeightsFile) -> Path | None:
    if weights.hub_id is not None:
        from huggingface_hub import try_to_load_from_cache

        for name in (file.name, *file.alternatives):
            found = try_to_load_from_cache(weights.hub_id, name, revision=weights.revision)
            if isinstance(found, str):
                return Path(found)
        return None
    candidates = [file.target()]
    if file.local is None:
        import torch.hub

        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / candidates[0].name)
    return next((path for path in candidates if path.exists()), None)


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
    """A local weights file for ``source`` (a path or an http(s) URL), downloading if needed.

    A URL that a release declares (``Weights``) is checked against its published sha256 and
    size, when downloaded and when found in the cache."""
    text = str(source)
    if not text.startswith(("http://", "https://")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path
    published = _PUBLISHED.get(text, WeightsFile(text))
    target = published.target()
    sha256 = sha256 or published.sha256
    if target.is_file():
        if sha256 and file_sha256(target) != sha256.lower():
            raise WeightsError(f"{target} has sha256 {file_sha256(target)}, not the published "
                               f"{sha256} of {text}: delete it and run again to download it")
        return target
    if offline():
        raise WeightsError(
            f"weights {text} are not in the cache and downloads are off (offline mode). "
            f"Download the file elsewhere and put it at {target}, or pass its local path.",
            source=text, target=target)
    download(text, target, sha256, size=published.size)
    return target


def download(
    url: str, target: Path, sha256: str | None = None, md5: str | None = None,
    size: int | None = None,
) -> None:
    """Fetch ``url`` to ``target``, resumably and atomically.

    Bytes go to ``TARGET.partial``, which survives an interrupted run; the next call asks the
    server only for the missing tail (HTTP Range) and starts over if the server ignores that.
    The file is renamed to ``target`` only once complete and matching every digest given (and
    ``size``, the published bytes, when given).
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
    got = partial.stat().st_size
    if total is not None and got != total:
        raise WeightsError(f"download of {url} stopped at {got} of {total} bytes. {retry}")
    if size is not None and got != size:
        partial.unlink()
        raise WeightsError(f"{url}: {got} bytes, not the published {size}; the download was "
                           "deleted. Run again; if it persists the source has changed.")
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
