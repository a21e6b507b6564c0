"""Content-addressed feature cache on disk, written in shards that survive preemption.

An entry's key is the sha256 of everything that changes its features: the cache format version,
the backbone's config and weights digest, the layer, the pooling, the numeric precision, the
task's config, the split's name and file manifest. Nothing else can reach a cached feature, so a
stale cache is never silently reused.

Layout of one entry (``ROOT/ab/abcdef.../``)::

    manifest.json           the key's fields, item count, shard size, dtype, feature shape
    labels.npy              int64 labels of the split, so probes need no dataset (its blake2b
                            is in manifest.json; checked on every read, compared with the task's
                            labels on every extraction)
    shard-00000.npy         features of items [0, shard_size), memory-mappable numpy
    shard-00000.json        the shard's rows, shard size, skipped items, .npy size and blake2b

A shard appears only once complete (written to a temporary name, then renamed), so an
interrupted extraction resumes at the first missing shard and never reads half a file. A shard
is used only when its sidecar agrees with the manifest (shard size, row count) and, when read,
its bytes hash to the recorded blake2b and hold finite values: a shard that fails is never used
(extraction recomputes shards whose sidecar disagrees; a read that finds bad bytes raises
``CorruptShardError`` naming the file and ``bench cache verify --fix``). A memory-mapped entry
(``open``, what probes stream) checks each shard in full before its first rows are returned and
takes a CRC-32 of every block of rows (about 8 kB) in that same pass; every later read verifies
the blocks it reads against them, so bytes that change afterwards (a shard rewritten in place
with its size and mtime put back, as ``rsync --inplace -t`` does) are never returned.

A run reading an entry (extracting into it, or probing from it) holds it (``reading``: a shared
lock on the entry's ``.readers`` file); removing an entry (``FeatureCache.remove``: ``bench cache
rm``, ``--no-keep-features``) skips one that another run holds, so no run loses its features
mid-way; the entry is left for the last reader (or a later ``bench cache rm``).

Features are stored in the entry's ``storage`` type (its key field): float32, float16, or
bfloat16, which numpy lacks: those shards hold the raw 16 bits (uint16) and every read
(``load``, ``open``) returns them as float32 (exact: bfloat16 is float32's upper half).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bench.errors import BenchError
from bench.locks import (STALE_TEMP_SECONDS, exclusive_if_free, shared_lock,
                         stale_temp, temp_name)
from bench.paths import cache_dir
from bench.precision import BF16

CACHE_FORMAT = 2  # 2: shard sidecars carry rows, shard size and a blake2b of the .npy bytes
_READ_CHUNK = 1 << 24
# bytes of rows a block checksum covers, at least: zlib's CRC-32 releases the GIL above 5 kB,
# so a reader thread verifies a window's runs beside training (scattered rows have their own)
BLOCK_BYTES = 8192
LABELS = "labels.npy"
READERS = ".readers"  # in an entry's folder: every run reading the entry holds a shared lock on it


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values stored as their uint16 bits, as float32 (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def _all_finite(values: np.ndarray, bf16: bool) -> bool:
    """No NaN or infinity; for bfloat16 bits, no all-ones exponent."""
    if bf16:
        return bool(((values & 0x7F80) != 0x7F80).all())
    return bool(np.isfinite(values).all())


class CacheError(BenchError, RuntimeError):
    """A cache entry or shard that cannot be used or written; the message says how to fix it."""


class CorruptShardError(CacheError):
    """A shard whose bytes, values or row count disagree with what was recorded at write."""

    def __init__(self, path: Path, reason: str):
        super().__init__(
            f"cache {'file' if path.name == LABELS else 'shard'} {path} is corrupt ({reason}); it is not used. Run `bench cache verify "
            f"--fix` (or `rm {path}`) and rerun: the next extraction recomputes it."
        )
        self.path = path


class CacheFullError(CacheError):
    """No space left for a cache write (the temporary file has been removed)."""

    def __init__(self, path: Path, needed_bytes: int):
        super().__init__(
            f"no space left on device for the cache at {path}: {needed_bytes / 1e6:.1f} MB "
            "needed. Free space, or point $BENCH_CACHE at a larger disk, then rerun (finished "
            "shards are kept).",
        )


def cache_key(fields: dict[str, Any]) -> str:
    from bench.digest import json_digest

    return json_digest({"cache_format": CACHE_FORMAT, **fields})


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, file: BinaryIO):
        self.file, self.hash, self.written = file, hashlib.blake2b(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.file.write(view)
        self.hash.update(view)
        self.written += len(view)
        return len(view)


def _atomic_write(path: Path, write: Callable[[Any], None], size_hint: int = 0,
                  before_rename: Callable[[str, int], None] | None = None) -> str:
    """Write through a temporary file renamed into place; returns the blake2b of the bytes.

    ``before_rename(blake2b, size)`` runs once the bytes are on disk, before they appear under
    ``path`` (a shard's sidecar, so a shard never exists without one). On any failure the
    temporary file is removed; a full disk raises ``CacheFullError``.
    """
    tmp = temp_name(path)
    written = 0
    try:
        with open(tmp, "wb") as f:
            out = _HashingWriter(f)
            try:
                write(out)
            finally:
                written = out.written
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(out.hash.hexdigest(), out.written)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFullError(path.parent, max(size_hint, written)) from e
        raise
    return out.hash.hexdigest()


class _Crcs:
    """The CRC-32 of each ``size``-byte piece of a byte stream fed in parts of any length."""

    def __init__(self, size: int):
        self.size, self.crcs, self.crc, self.filled = size, [], 0, 0

    def update(self, data: memoryview) -> None:
        at = 0
        while at < len(data):
            part = data[at : at + self.size - self.filled]
            self.crc = zlib.crc32(part, self.crc)
            self.filled += len(part)
            at += len(part)
            if self.filled == self.size:
                self.crcs.append(self.crc)
                self.crc, self.filled = 0, 0

    def digests(self) -> array:
        return array("I", self.crcs + [self.crc] * (self.filled > 0))


@dataclass(frozen=True)
class BlockDigests:
    """The CRC-32 of a shard's blocks of ``rows`` rows (``crcs``: what a run of rows is
    verified against) and of each row (``row_crcs``: scattered rows; the blocks' own when a
    block is one row)."""

    rows: int
    crcs: array  # unsigned 32-bit: compact, and each read gives a plain int
    row_crcs: array


def block_rows(row_bytes: int) -> int:
    """Rows per checksummed block: the fewest (a power of two) holding ``BLOCK_BYTES``."""
    rows = 1
    while rows * max(1, row_bytes) < BLOCK_BYTES:
        rows *= 2
    return rows


def _row_bytes(array: np.ndarray) -> int:
    return array.itemsize * int(np.prod(array.shape[1:]))


def _read_npy(path: Path, digest: str, keep: bool, bf16: bool = False,
              crcs: Iterable[_Crcs] = ()) -> np.ndarray | None:
    """Read a .npy file once, hashing its bytes and checking values are finite as they pass
    (``bf16``: the file holds bfloat16 bits); ``crcs``: also takes the CRC-32 of each block
    (and row) of its values, in the same pass (trusted once the whole file's digest matched).

    Returns the array when ``keep``, else only checks (for memory-mapped reads). Raises
    ``CorruptShardError`` on a short file, a checksum mismatch or a non-finite value.
    """
    from numpy.lib import format as npy

    h = hashlib.blake2b()
    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
            if version not in readers:
                raise CorruptShardError(path, f".npy format version {version} is not one bench writes")
            shape, fortran, dtype = readers[version](f)
            header = f.tell()
            f.seek(0)
            h.update(f.read(header))
            count = int(np.prod(shape))
            data = np.empty(count, dtype) if keep else np.empty(
                max(1, min(count, _READ_CHUNK // dtype.itemsize)), dtype)
            done = 0
            while done < count:
                part = data[done:] if keep else data[: count - done]
                n = f.readinto(memoryview(part).cast("B")) // dtype.itemsize
                if n == 0:
                    raise CorruptShardError(path, f"truncated: {done} of {count} values")
                h.update(memoryview(part[:n]).cast("B"))
                for crc in crcs:
                    crc.update(memoryview(part[:n]).cast("B"))
                if not _all_finite(part[:n], bf16):
                    raise CorruptShardError(path, "holds NaN or infinite values")
                done += n
            h.update(f.read())  # trailing bytes change the digest
    except (ValueError, EOFError) as e:
        raise CorruptShardError(path, f"not a readable .npy file: {e}") from e
    if h.hexdigest() != digest:
        raise CorruptShardError(path, "checksum mismatch: its bytes changed since it was written")
    if not keep:
        return None
    return data.reshape(shape, order="F" if fortran else "C")


@dataclass
class ShardInfo:
    """What a shard's sidecar records, and what the entry expects of it."""

    index: int
    rows: int
    shard_size: int
    skipped: list[int]
    shape: list[int]
    blake2b: str
    nbytes: int  # size of the .npy file


@dataclass
class CacheEntry:
    path: Path
    key: str

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    def exists(self) -> bool:
        return (self.path / "manifest.json").exists()

    @property
    def bf16(self) -> bool:
        """Whether shards hold bfloat16 bits (read back as float32)."""
        return self.manifest["fields"].get("storage") == BF16

    def create(self, fields: dict[str, Any], labels: np.ndarray, shard_size: int) -> None:
        """Write manifest and labels once; a second extraction of the same key reuses them after
        checking its stored labels are the split's (``labels`` is what the key was made from, so
        a labels.npy removed by ``bench cache verify --fix`` is written again from it)."""
        labels = np.asarray(labels, np.int64)
        if self.exists():
            manifest = self.manifest
            if manifest["num_items"] != len(labels):
                raise CacheError(
                    f"cache entry {self.path} holds {manifest['num_items']} items but the split "
                    f"has {len(labels)}; remove it with `bench cache rm {self.key[:12]}` and rerun")
            if not (self.path / LABELS).exists():
                self._write_manifest(manifest | {"labels_blake2b": self._write_labels(labels)})
            elif not np.array_equal(self.labels(), labels):
                raise CorruptShardError(self.path / LABELS, "its labels differ from the task's")
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_manifest({
            "key": self.key,
            "cache_format": CACHE_FORMAT,
            "fields": fields,
            "num_items": len(labels),
            "shard_size": int(shard_size),
            "num_shards": max(1, -(-len(labels) // shard_size)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "labels_blake2b": self._write_labels(labels),
        })

    def _write_labels(self, labels: np.ndarray) -> str:
        return _atomic_write(self.path / LABELS, lambda f: np.save(f, labels))

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
        _atomic_write(self.path / "manifest.json", lambda f: f.write(text))

    def labels(self) -> np.ndarray:
        """The stored labels, their bytes checked against the manifest's blake2b (entries written
        before bench recorded it are read unchecked); ``CorruptShardError`` if they changed."""
        digest = self.manifest.get("labels_blake2b")
        if digest is None:
            return np.load(self.path / LABELS)
        labels = _read_npy(self.path / LABELS, digest, keep=True)
        if labels.ndim != 1 or labels.dtype != np.int64:
            raise CorruptShardError(self.path / LABELS,
                                    f"{labels.dtype} {labels.shape}, not int64 (N,)")
        return labels

    def shard_path(self, index: int) -> Path:
        return self.path / f"shard-{index:05d}.npy"

    def sidecar_path(self, index: int) -> Path:
        return self.path / f"shard-{index:05d}.json"

    def expected_rows(self, index: int) -> int:
        m = self.manifest
        return min(m["shard_size"], m["num_items"] - index * m["shard_size"])

    def shard_info(self, index: int) -> ShardInfo:
        """The shard's sidecar if the shard agrees with the manifest, else ``CorruptShardError``.

        Cheap (no data read): file present, sidecar readable, same shard size and row count as the
        manifest expects, .npy size consistent. The bytes are checked when read.
        """
        path, sidecar = self.shard_path(index), self.sidecar_path(index)
        if not path.exists():
            raise FileNotFoundError(path)
        try:
            meta = json.loads(sidecar.read_text())
            info = ShardInfo(index, meta["rows"], meta["shard_size"], meta["skipped"],
                             meta["shape"], meta["blake2b"], meta["nbytes"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptShardError(path, f"its sidecar {sidecar.name} is missing or unreadable "
                                          f"(written by an older bench?): {e}") from e
        if info.shard_size != self.manifest["shard_size"]:
            raise CorruptShardError(path, f"written with shard size {info.shard_size}, the entry "
                                          f"uses {self.manifest['shard_size']}")
        if info.rows != self.expected_rows(index) or info.shape[:1] != [info.rows]:
            raise CorruptShardError(path, f"{info.rows} rows, the entry expects "
                                          f"{self.expected_rows(index)} in shard {index}")
        if path.stat().st_size != info.nbytes:
            raise CorruptShardError(path, f"truncated or grown: {path.stat().st_size} bytes, "
                                          f"{info.nbytes} written")
        return info

    def usable_shards(self, allow_skipped: bool = True) -> dict[int, ShardInfo]:
        """Shards present and consistent with the manifest (and without skips unless allowed)."""
        usable = {}
        for i in range(self.manifest["num_shards"]):
            try:
                info = self.shard_info(i)
            except (FileNotFoundError, CorruptShardError):
                continue
            if allow_skipped or not info.skipped:
                usable[i] = info
        return usable

    def missing_shards(self, allow_skipped: bool = True) -> list[int]:
        """Shards to (re)compute: absent, inconsistent, or (unless allowed) with skipped items."""
        if not self.exists():
            raise FileNotFoundError(self.path)
        usable = self.usable_shards(allow_skipped)
        return [i for i in range(self.manifest["num_shards"]) if i not in usable]

    def complete(self) -> bool:
        return self.exists() and not self.missing_shards()

    def write_shard(self, index: int, features: np.ndarray, skipped: list[int]) -> None:
        """Write the .npy (hashing its bytes as they are written); its sidecar, naming the hash,
        is in place before the .npy is renamed into place."""
        shard_size = self.manifest["shard_size"]

        def write_sidecar(digest: str, nbytes: int) -> None:
            meta = json.dumps({"shard": index, "rows": len(features), "shard_size": shard_size,
                               "skipped": skipped, "shape": list(features.shape),
                               "blake2b": digest, "nbytes": nbytes})
            _atomic_write(self.sidecar_path(index), lambda f: f.write(meta.encode()))

        _atomic_write(self.shard_path(index), lambda f: np.save(f, features),
                      size_hint=features.nbytes, before_rename=write_sidecar)

    def _infos(self) -> list[ShardInfo]:
        """Every shard's sidecar; ``CorruptShardError`` names the first invalid shard."""
        infos, missing = [], []
        for i in range(self.manifest["num_shards"]):
            try:
                infos.append(self.shard_info(i))
            except FileNotFoundError:
                missing.append(i)
        if missing:
            raise CacheError(f"cache entry {self.key[:12]} is incomplete: shards {missing} "
                             "missing; rerun the extraction to compute them")
        return infos

    def skipped(self) -> list[int]:
        """Global indices of items left out as corrupt."""
        size = self.manifest["shard_size"]
        return [info.index * size + j for info in self._infos() for j in info.skipped]

    def feature_shape(self) -> list[int]:
        """Shape of one item's features (from the first shard's metadata)."""
        return self.shard_info(0).shape[1:]

    def _labels_and_keep(self, infos: list[ShardInfo]) -> tuple[np.ndarray, np.ndarray]:
        labels = self.labels()
        rows = sum(info.rows for info in infos)
        if rows != len(labels) or rows != self.manifest["num_items"]:
            raise CacheError(f"cache entry {self.path} has {rows} feature rows for {len(labels)} "
                             f"labels; remove it with `bench cache rm {self.key[:12]}` and rerun")
        keep = np.ones(len(labels), dtype=bool)
        size = self.manifest["shard_size"]
        keep[[info.index * size + j for info in infos for j in info.skipped]] = False
        return labels, keep

    def open(self) -> tuple[ShardedArray, np.ndarray, np.ndarray]:
        """Like ``load`` but memory-mapped: rows are read from disk only when taken, so caches
        larger than RAM (attention-head maps of ImageNet) can be trained on. Each shard's bytes
        are checked (checksum, finite values) the first time a row of it is taken, its blocks'
        CRC-32s taken in that pass; every read then verifies the blocks it reads."""
        infos = self._infos()
        labels, keep = self._labels_and_keep(infos)
        shards = [np.load(self.shard_path(i.index), mmap_mode="r") for i in infos]
        bf16 = self.bf16

        def check(index: int) -> BlockDigests:
            width = _row_bytes(shards[index])
            rows = block_rows(width)
            crcs = [_Crcs(rows * width)] + [_Crcs(width)] * (rows > 1)
            _read_npy(self.shard_path(index), infos[index].blake2b, keep=False, bf16=bf16,
                      crcs=crcs)
            return BlockDigests(rows, crcs[0].digests(), crcs[-1].digests())

        return (ShardedArray(shards, self.manifest["shard_size"], check=check, bf16=bf16), labels,
                keep)

    def load(self, dtype: str | None = "float32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, labels, keep mask): corrupt items are in the mask as False.

        Each shard is hashed and checked for finite values as its bytes are read.
        ``dtype=None`` keeps the stored precision (half the memory of float32 for fp16 caches;
        bfloat16 entries are read as float32, numpy having no bfloat16).
        """
        infos = self._infos()
        labels, keep = self._labels_and_keep(infos)
        bf16 = self.bf16
        shards = [_read_npy(self.shard_path(i.index), i.blake2b, keep=True, bf16=bf16)
                  for i in infos]
        features = np.concatenate(shards)
        if bf16:
            features = bf16_to_float32(features)
        if dtype is not None:
            features = features.astype(dtype, copy=False)
        return features, labels, keep

    def verify(self) -> list[CorruptShardError]:
        """labels.npy and every shard fully checked (sidecar, bytes, values); the problems found."""
        problems = []
        try:
            if (self.path / LABELS).exists():
                self.labels()
        except CorruptShardError as e:
            problems.append(e)
        bf16 = self.bf16
        for i in range(self.manifest["num_shards"]):
            try:
                info = self.shard_info(i)
                _read_npy(self.shard_path(i), info.blake2b, keep=False, bf16=bf16)
            except FileNotFoundError:
                continue  # not yet extracted: nothing wrong
            except CorruptShardError as e:
                problems.append(e)
        return problems

    def remove_shard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


class ShardedArray:
    """The rows of an entry's memory-mapped shards as one (N, ...) array for reading.

    Supports what probes need: ``len``, ``shape``, ``dtype``, boolean-mask selection (a view)
    and ``np.take`` / integer-array indexing (reads just those rows from the shard files, so
    streaming a split leaves no mapped pages behind in the process's memory). ``check(i)``, the
    entry's integrity check, runs before a shard's first rows are returned and gives the CRC-32
    of each block and row of it (``BlockDigests``); every read then verifies what it read, so
    bytes that changed since (even under the same size, mtime and inode)
    raise ``CorruptShardError`` instead of being returned. Without ``check`` (arrays given
    directly) rows are taken as they are. ``bf16``: the shards hold bfloat16 bits, taken as
    float32.
    """

    def __init__(self, shards: list[np.ndarray], shard_size: int, rows: np.ndarray | None = None,
                 check: Callable[[int], BlockDigests] | None = None,
                 checked: dict[int, BlockDigests] | None = None, bf16: bool = False):
        self.shards, self.shard_size, self.bf16 = shards, shard_size, bf16
        self.rows = rows  # logical row -> global row, after a selection
        self.check = check
        self.checked = checked if checked is not None else {}  # shard -> digests; shared by selections

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else sum(len(s) for s in self.shards)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.shards[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.bf16 else self.shards[0].dtype

    def __getitem__(self, key: np.ndarray) -> ShardedArray | np.ndarray:
        key = np.asarray(key)
        if key.dtype == bool:
            rows = np.flatnonzero(key)
            return ShardedArray(self.shards, self.shard_size,
                                rows if self.rows is None else self.rows[rows],
                                self.check, self.checked, self.bf16)
        return self.take(key)

    def take(self, indices, axis: int = 0, out: np.ndarray | None = None, mode: str = "raise"):
        """``np.take`` along rows: ``mode`` "raise" refuses out-of-range indices, "clip" and
        "wrap" map them into range, as numpy does."""
        if axis != 0:
            raise ValueError("ShardedArray takes rows only (axis=0)")
        index = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if mode == "clip":
            index = np.clip(index, 0, n - 1)
        elif mode == "wrap":
            index = np.mod(index, n)
        elif mode == "raise":
            if index.size and (index.min() < -n or index.max() >= n):
                raise IndexError(f"row index out of range for {n} rows")
            index = np.where(index < 0, index + n, index)
        else:
            raise ValueError(f"mode {mode!r}: use 'raise', 'clip' or 'wrap'")
        rows = self.rows[index] if self.rows is not None else index
        if out is None:
            out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        shard_of = rows // self.shard_size
        for shard in np.unique(shard_of).tolist():
            where = np.flatnonzero(shard_of == shard)
            local = rows[where] - shard * self.shard_size
            if self.check is None:
                values = self.shards[shard][local]
                out[where] = bf16_to_float32(values) if self.bf16 else values
                continue
            if shard not in self.checked:
                self.checked[shard] = self.check(shard)
            _VerifiedReader(self.shards[shard], self.checked[shard], self.bf16).read(
                local, out, where)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self.take(np.arange(len(self)))
        return data if dtype is None else data.astype(dtype)


class _VerifiedReader:
    """Rows of one memory-mapped shard, their bytes verified against the shard's CRC-32s
    before any is returned: a run of rows in whole blocks read from the file, scattered rows
    one by one."""

    def __init__(self, array: np.memmap, digests: BlockDigests, bf16: bool):
        self.array, self.digests, self.bf16 = array, digests, bf16
        self.path = Path(array.filename)
        self.width = _row_bytes(array)

    def read(self, local: np.ndarray, out: np.ndarray, where: np.ndarray) -> None:
        """Rows ``local`` of the shard into ``out[where]``. The whole blocks of one ascending
        run into a run of ``out`` of the shard's dtype are read from the file in place (no page
        of it stays mapped); the rest row by row through the map."""
        per, n = self.digests.rows, len(self.array)
        if not self.bf16 and out.dtype == self.array.dtype and _run(local) and _run(where):
            a, b = int(local[0]), int(local[-1]) + 1
            lo, hi = -(-a // per) * per, (b if b == n else b // per * per)
            target = out[where[0] + lo - a : where[0] + hi - a]
            if lo < hi and target.flags.c_contiguous:
                self._blocks(lo // per, target)
                edge = (local < lo) | (local >= hi)
                local, where = local[edge], where[edge]
        if len(local):
            values = self.array[local]
            self._verify(memoryview(values).cast("B"), self.width, self.digests.row_crcs, local)
            out[where] = bf16_to_float32(values) if self.bf16 else values

    def _blocks(self, first: int, target: np.ndarray) -> None:
        """Blocks ``first``.. of the shard read from its file into ``target``, verified."""
        view = memoryview(target).cast("B")
        with open(self.path, "rb", buffering=0) as file:
            file.seek(self.array.offset + first * self.digests.rows * self.width)
            if file.readinto(view) != len(view):
                raise CorruptShardError(self.path, "truncated while being read")
        size = self.digests.rows * self.width
        self._verify(view, size, self.digests.crcs, range(first, first + -(-len(view) // size)))

    def _verify(self, view: memoryview, size: int, crcs: array, pieces: Iterable[int]) -> None:
        """``view`` holds ``pieces`` (blocks or rows) of ``size`` bytes one after another (the
        shard's last block may be short), each checked against its CRC-32."""
        for at, piece in zip(range(0, len(view), size), pieces):
            if zlib.crc32(view[at : at + size]) != crcs[piece]:
                first = int(piece) * (size // self.width)
                raise CorruptShardError(self.path, "checksum mismatch: its bytes changed since "
                                                   f"it was checked (at row {first})")


def _run(index: np.ndarray) -> bool:
    """Whether ``index`` is one ascending run of consecutive integers."""
    return len(index) > 0 and int(index[-1]) - int(index[0]) == len(index) - 1 and (
        len(index) == 1 or bool((np.diff(index) == 1).all()))


@contextlib.contextmanager
def reading(entries: Iterable[CacheEntry]) -> Iterator[None]:
    """Hold ``entries`` for the ``with`` block (a run extracting into or probing from them):
    ``FeatureCache.remove`` keeps an entry while any run holds it. Waits while one is being
    removed (a moment), then holds the entry as it is now (recreated by the extraction)."""
    with contextlib.ExitStack() as stack:
        for path in sorted({entry.path for entry in entries}):
            stack.enter_context(shared_lock(path / READERS))
        yield


@dataclass
class VerifyReport:
    """What ``bench cache verify`` found: entries checked and the corrupt shards."""

    entries: int
    shards_checked: int
    bad: list[CorruptShardError]


class FeatureCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = cache_dir(root)

    def entry(self, fields: dict[str, Any]) -> CacheEntry:
        key = cache_key(fields)
        return CacheEntry(self.root / key[:2] / key, key)

    def entries(self) -> Iterator[CacheEntry]:
        if not self.root.exists():
            return
        for manifest in sorted(self.root.glob("??/*/manifest.json")):
            yield CacheEntry(manifest.parent, manifest.parent.name)

    def find(self, prefix: str) -> list[CacheEntry]:
        return [e for e in self.entries() if e.key.startswith(prefix)]

    def remove(self, entry: CacheEntry) -> bool:
        """Remove ``entry`` unless another run holds it (``reading``): then keep it, False."""
        with exclusive_if_free(entry.path / READERS) as free:
            if free:
                shutil.rmtree(entry.path)
        return free

    def verify(self, fix: bool = False, progress: bool = True) -> VerifyReport:
        """Check every shard of every entry; with ``fix``, remove the bad ones (recomputed next run)."""
        from tqdm.auto import tqdm

        entries = list(self.entries())
        bad: list[CorruptShardError] = []
        shards = 0
        for entry in tqdm(entries, desc="verify cache", unit="entry", disable=not progress):
            problems = entry.verify()
            shards += entry.manifest["num_shards"]
            bad += problems
            if fix:
                for problem in problems:
                    entry.remove_shard(problem.path)
        return VerifyReport(len(entries), shards, bad)

    def stale_temp_files(self, max_age_s: float = STALE_TEMP_SECONDS) -> list[Path]:
        """Temporary files left by writers that died: older than ``max_age_s`` or, when written
        on this host, whose writer process is gone."""
        if not self.root.exists():
            return []
        return [path for path in self.root.glob("??/*/.*.tmp") if stale_temp(path, max_age_s)]

    def clean(self, max_age_s: float = STALE_TEMP_SECONDS) -> list[Path]:
        """Remove stale temporary files (see ``stale_temp_files``); the paths removed."""
        removed = self.stale_temp_files(max_age_s)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed
