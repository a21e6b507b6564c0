"""Content-addressed feature cache on disk, written in shards that survive preemption.

An entry's key is the sha256 of everything that changes its features: the cache format version,
the backbone's config and weights digest, the layer, the pooling, the numeric precision, the
task's config, the split's name and file manifest. Nothing else can reach a cached feature, so a
stale cache is never silently reused (anchors.md, complaint 7).

Layout of one entry (``ROOT/ab/abcdef.../``)::

    manifest.json           the key's fields, item count, shard size, dtype, feature shape
    labels.npy              int64 labels of the split, so probes need no dataset
    shard-00000.npy         features of items [0, shard_size), memory-mappable numpy
    shard-00000.json        which items of the shard were skipped as corrupt (written first)

A shard appears only once complete (written to a temporary name, then renamed), so an
interrupted extraction resumes at the first missing shard and never reads half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.paths import cache_dir

CACHE_FORMAT = 1


def cache_key(fields: dict[str, Any]) -> str:
    from bench.task import json_digest

    return json_digest({"cache_format": CACHE_FORMAT, **fields})


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class CacheEntry:
    path: Path
    key: str

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    def exists(self) -> bool:
        return (self.path / "manifest.json").exists()

    def create(self, fields: dict[str, Any], labels: np.ndarray, shard_size: int) -> None:
        """Write manifest and labels once; a second extraction of the same key reuses them."""
        if self.exists():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path / "labels.npy", lambda f: np.save(f, np.asarray(labels, np.int64)))
        manifest = {
            "key": self.key,
            "cache_format": CACHE_FORMAT,
            "fields": fields,
            "num_items": len(labels),
            "shard_size": int(shard_size),
            "num_shards": max(1, -(-len(labels) // shard_size)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        text = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
        _atomic_write(self.path / "manifest.json", lambda f: f.write(text))

    def shard_path(self, index: int) -> Path:
        return self.path / f"shard-{index:05d}.npy"

    def missing_shards(self) -> list[int]:
        if not self.exists():
            raise FileNotFoundError(self.path)
        return [i for i in range(self.manifest["num_shards"]) if not self.shard_path(i).exists()]

    def complete(self) -> bool:
        return self.exists() and not self.missing_shards()

    def write_shard(self, index: int, features: np.ndarray, skipped: list[int]) -> None:
        meta = json.dumps({"shard": index, "skipped": skipped, "shape": list(features.shape)})
        _atomic_write(self.path / f"shard-{index:05d}.json", lambda f: f.write(meta.encode()))
        _atomic_write(self.shard_path(index), lambda f: np.save(f, features))

    def skipped(self) -> list[int]:
        """Global indices of items left out as corrupt."""
        size, out = self.manifest["shard_size"], []
        for i in range(self.manifest["num_shards"]):
            meta = json.loads((self.path / f"shard-{i:05d}.json").read_text())
            out += [i * size + j for j in meta["skipped"]]
        return out

    def feature_shape(self) -> list[int]:
        """Shape of one item's features (from the first shard's metadata)."""
        return json.loads((self.path / "shard-00000.json").read_text())["shape"][1:]

    def open(self) -> tuple[ShardedArray, np.ndarray, np.ndarray]:
        """Like ``load`` but memory-mapped: rows are read from disk only when taken, so caches
        larger than RAM (attention-head maps of ImageNet) can be trained on."""
        missing = self.missing_shards()
        if missing:
            raise RuntimeError(f"cache entry {self.key[:12]} is incomplete: shards {missing} missing")
        shards = [np.load(self.shard_path(i), mmap_mode="r") for i in range(self.manifest["num_shards"])]
        labels = np.load(self.path / "labels.npy")
        keep = np.ones(len(labels), dtype=bool)
        keep[self.skipped()] = False
        return ShardedArray(shards, self.manifest["shard_size"]), labels, keep

    def load(self, dtype: str | None = "float32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, labels, keep mask): corrupt items are in the mask as False.

        ``dtype=None`` keeps the stored precision (half the memory of float32 for fp16 caches).
        """
        missing = self.missing_shards()
        if missing:
            raise RuntimeError(f"cache entry {self.key[:12]} is incomplete: shards {missing} missing")
        shards = [np.load(self.shard_path(i), mmap_mode="r") for i in range(self.manifest["num_shards"])]
        features = np.concatenate(shards)
        if dtype is not None:
            features = features.astype(dtype, copy=False)
        labels = np.load(self.path / "labels.npy")
        keep = np.ones(len(labels), dtype=bool)
        keep[self.skipped()] = False
        return features, labels, keep

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


class ShardedArray:
    """The rows of an entry's memory-mapped shards as one (N, ...) array for reading.

    Supports what probes need: ``len``, ``shape``, ``dtype``, boolean-mask selection (a view)
    and ``np.take`` / integer-array indexing (reads just those rows).
    """

    def __init__(self, shards: list[np.ndarray], shard_size: int, rows: np.ndarray | None = None):
        self.shards, self.shard_size = shards, shard_size
        self.rows = rows  # logical row -> global row, after a selection

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else sum(len(s) for s in self.shards)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.shards[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.shards[0].dtype

    def __getitem__(self, key: np.ndarray) -> ShardedArray | np.ndarray:
        key = np.asarray(key)
        if key.dtype == bool:
            rows = np.flatnonzero(key)
            return ShardedArray(self.shards, self.shard_size,
                                rows if self.rows is None else self.rows[rows])
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
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            out[where] = self.shards[shard][rows[where] - shard * self.shard_size]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self.take(np.arange(len(self)))
        return data if dtype is None else data.astype(dtype)


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

    def remove(self, entry: CacheEntry) -> None:
        shutil.rmtree(entry.path)
