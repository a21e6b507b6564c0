"""Training features read in minibatches from memory-mapped cache shards, within a memory budget.

Every head that trains by minibatches draws its epoch order here (``epoch_windows``), so the order
is the same whether a split sits in memory or is streamed from disk, whatever the budget, the
cache's shard size or the device: rows are cut into blocks of ``BLOCK_ROWS`` (a protocol constant),
the blocks are permuted with the run's seed, consecutive groups of ``WINDOW_BLOCKS`` permuted blocks
form a window, and the rows of each window are permuted. A streamed reader therefore holds one
window (a few contiguous block reads) at a time, and a minibatch mixes rows of up to 256 blocks
spread over the whole split (class-sorted files such as ImageNet's still give mixed minibatches).

``Rows`` is one or more splits' features (numpy arrays or the cache's ``ShardedArray``, duck-typed:
``len``, ``shape``, ``dtype``, ``take``) as one source; ``Batches`` serves an epoch's minibatches
from it in one of three ways, chosen by ``memory_budget`` (bytes of feature data held at once):
the whole split on the device in the probe-input dtype when it fits; else windows read ahead by a
thread (through pinned buffers and a copy stream on CUDA); else each minibatch's rows gathered
alone. A budget below one minibatch is a ``UsageError`` before anything trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.errors import UsageError
from bench.ranges import size_text

BLOCK_ROWS = 64  # rows per block of the shuffled order (a protocol constant: it changes numbers)
WINDOW_BLOCKS = 256  # blocks per window; their rows are permuted together
WINDOW_ROWS = BLOCK_ROWS * WINDOW_BLOCKS
CHUNK_ROWS = 256  # rows per scoring chunk and per float64 partial sum of the statistics
AUTO_FRACTION = 0.5  # --memory-budget auto: this fraction of free RAM (free GPU memory on CUDA)


def auto_budget(device: torch.device | str) -> int:
    """``AUTO_FRACTION`` of the memory free now: the GPU's on CUDA, else the host's
    (MemAvailable of /proc/meminfo, or free pages where there is none)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(AUTO_FRACTION * torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        import os

        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(AUTO_FRACTION * free)


@dataclass
class Window:
    """One window of an epoch: its rows (ascending) and the order they are served in
    (``rows[perm]``)."""

    rows: np.ndarray
    perm: np.ndarray

    def runs(self) -> list[tuple[int, int]]:
        """[start, stop) ranges of contiguous rows: what a reader reads."""
        cuts = np.flatnonzero(np.diff(self.rows) != 1) + 1
        return [(int(r[0]), int(r[-1]) + 1) for r in np.split(self.rows, cuts)]


def epoch_windows(n: int, gen: torch.Generator) -> list[Window]:
    """One epoch's order over ``n`` rows, drawn from ``gen`` (a CPU generator: the same order on
    any device)."""
    blocks = torch.randperm(math.ceil(n / BLOCK_ROWS), generator=gen).numpy()
    windows = []
    for w in range(0, len(blocks), WINDOW_BLOCKS):
        chosen = np.sort(blocks[w : w + WINDOW_BLOCKS])
        rows = (chosen[:, None] * BLOCK_ROWS + np.arange(BLOCK_ROWS)).ravel()
        rows = rows[rows < n]
        windows.append(Window(rows, torch.randperm(len(rows), generator=gen).numpy()))
    return windows


def epoch_order(n: int, gen: torch.Generator) -> np.ndarray:
    """The rows of one epoch in the order they are served (``epoch_windows`` concatenated)."""
    return np.concatenate([w.rows[w.perm] for w in epoch_windows(n, gen)])


class Rows:
    """The rows of one or more splits (train+val for a refit) as one (N, D) source, read in
    contiguous runs (``ShardedArray.take`` of a contiguous run reads its files without mapping)."""

    def __init__(self, parts: list[Any]):
        self.parts = parts
        self.bounds = np.cumsum([0] + [len(p) for p in parts])
        self.dim = int(np.prod(parts[0].shape[1:]))
        self.dtype = np.dtype(parts[0].dtype)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) as a (rows, D) array in the stored dtype."""
        out = np.empty((stop - start, self.dim), self.dtype) if out is None else out
        for part, lo, hi in zip(self.parts, self.bounds[:-1], self.bounds[1:]):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                _take(part, np.arange(a - lo, b - lo), out[a - start : b - start])
        return out

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (any order), gathered part by part."""
        out = np.empty((len(index), self.dim), self.dtype)
        part_of = np.searchsorted(self.bounds, index, side="right") - 1
        for p in np.unique(part_of).tolist():
            where = np.flatnonzero(part_of == p)
            out[where] = _take(self.parts[p], index[where] - self.bounds[p])
        return out

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(start, rows [start, start + rows)) in order."""
        for start in range(0, len(self), rows):
            yield start, self.read(start, min(start + rows, len(self)))


def _take(part: Any, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``index`` of ``part`` as (len(index), D), copied into ``out`` when given."""
    rows = part.take(index, axis=0) if hasattr(part, "take") else np.asarray(part)[index]
    rows = rows.reshape(len(index), -1)
    if out is None:
        return rows
    out[...] = rows
    return out


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


class Batches:
    """An epoch's minibatches of ``rows`` (and their ``labels``) on ``device`` in ``dtype``, in
    ``epoch_windows``' order, and the split in chunks for scoring, within ``budget`` bytes of
    feature data (None: no limit).

    ``mode``: ``memory`` (the whole split on the device in ``dtype``), ``windows`` (two windows of
    stored rows at a time: the one serving, the next read ahead) or ``rows`` (each minibatch
    gathered alone). The three give the same tensors. ``held``: the most feature bytes the mode
    holds.
    """

    def __init__(self, rows: Rows, labels: Any, batch_size: int, device: torch.device,
                 dtype: torch.dtype, budget: int | None, what: str = "probe", reserve: int = 0):
        """``reserve``: bytes of the budget left for another split (validation beside train)."""
        self.rows, self.batch_size, self.device, self.dtype = rows, batch_size, device, dtype
        self.n, self.dim = len(rows), rows.dim
        self.labels = None if labels is None else torch.as_tensor(
            np.asarray(labels), dtype=torch.long).to(device)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        whole = len(rows) * rows.dim * itemsize
        need = step_bytes(rows, batch_size, dtype)
        windows = (1 + math.ceil(batch_size / WINDOW_ROWS)) * WINDOW_ROWS * rows.row_bytes()
        if budget is not None and budget - reserve < need:
            step = min(max(batch_size, CHUNK_ROWS), len(rows))
            raise UsageError(
                f"memory budget {size_text(budget)} is below one {what} minibatch "
                f"({step} rows x {rows.dim} dims: {size_text(need + reserve)}): raise "
                "--memory-budget (e.g. 512MB or auto) or lower batch_size")
        usable = None if budget is None else budget - reserve
        self.mode = ("memory" if usable is None or whole <= usable else
                     "windows" if windows + need <= usable else "rows")
        self.held = {"memory": whole, "windows": windows + need, "rows": need}[self.mode]
        self.resident = self._load() if self.mode == "memory" else None

    @classmethod
    def holding(cls, x: torch.Tensor, labels: Any, batch_size: int) -> Batches:
        """Batches over a tensor already where it trains, as it is (tests, benchmarks)."""
        x = x.reshape(len(x), -1)
        self = cls(Rows([np.empty((0, x.shape[1]), np.float32)]), None, batch_size, x.device,
                   x.dtype, None)
        self.n, self.dim, self.resident = len(x), x.shape[1], x
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=x.device)
        return self

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device).to(self.dtype)

    def _load(self) -> torch.Tensor:
        """The whole split on the device in ``dtype``, filled a window at a time."""
        out = torch.empty((len(self.rows), self.rows.dim), dtype=self.dtype, device=self.device)
        for start, chunk in self.rows.chunks(WINDOW_ROWS):
            out[start : start + len(chunk)] = self._to_device(chunk)
        return out

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, the next CHUNK_ROWS rows) in order, on the device in ``dtype``: the same
        shapes in every mode, so scores and statistics are the same numbers."""
        if self.resident is not None:
            for start in range(0, self.n, CHUNK_ROWS):
                yield start, self.resident[start : start + CHUNK_ROWS]
            return
        for start, chunk in self.rows.chunks(CHUNK_ROWS):
            yield start, self._to_device(chunk)

    def epoch(self, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(rows, labels) per minibatch of one epoch."""
        windows = epoch_windows(self.n, gen)
        order = np.concatenate([w.rows[w.perm] for w in windows])
        starts = range(0, len(order), self.batch_size)
        if self.mode == "memory":
            for i in starts:
                index = torch.from_numpy(order[i : i + self.batch_size]).to(self.device)
                yield self.resident[index], self.labels[index]
            return
        batches = (((self._to_device(self.rows.take(order[i : i + self.batch_size]))
                     for i in starts)) if self.mode == "rows" else
                   self._windowed(windows, order, starts))
        for i, batch in zip(starts, batches):
            yield batch, self.labels[torch.from_numpy(order[i : i + self.batch_size]).to(
                self.device)]

    def _windowed(self, windows: list[Window], order: np.ndarray, starts: range):
        """Minibatches out of window buffers; the next window is read (and on CUDA copied, on a
        side stream from pinned memory) while the current one trains."""
        window_of = np.repeat(np.arange(len(windows)), [len(w.rows) for w in windows])
        local = np.concatenate([w.perm for w in windows])
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        loaded: dict[int, Any] = {}
        with ThreadPoolExecutor(1) as pool:
            def need(w: int) -> None:
                if w < len(windows) and w not in loaded:
                    loaded[w] = pool.submit(self._read_window, windows[w], stream)

            for i in starts:
                ws = np.unique(window_of[i : i + self.batch_size]).tolist()
                for w in [w for w in loaded if w < ws[0]]:
                    del loaded[w]
                # the next window is read ahead while one window serves: two live at most
                for w in ws + [ws[-1] + 1] * (len(ws) == 1):
                    need(w)
                parts = []
                for w in ws:
                    buffer, event = loaded[w].result()
                    if event is not None:  # copied on the side stream: used on this one
                        torch.cuda.current_stream(self.device).wait_event(event)
                        buffer.record_stream(torch.cuda.current_stream(self.device))
                    at = local[i : i + self.batch_size][window_of[i : i + self.batch_size] == w]
                    parts.append(buffer[torch.from_numpy(at).to(buffer.device)])
                batch = parts[0] if len(parts) == 1 else torch.cat(parts)
                yield batch.to(self.device).to(self.dtype)

    def _read_window(self, window: Window, stream: Any) -> tuple[torch.Tensor, Any]:
        shape = (len(window.rows), self.rows.dim)
        host = torch.empty(shape, dtype=torch_dtype(self.rows.dtype), pin_memory=stream is not None)
        view, at = host.numpy(), 0
        for a, b in window.runs():
            self.rows.read(a, b, out=view[at : at + b - a])
            at += b - a
        if stream is None:
            return host, None
        with torch.cuda.stream(stream):
            on_device = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return on_device, event


def step_bytes(rows: Rows, batch_size: int, dtype: torch.dtype) -> int:
    """What one step holds: a minibatch (or a scoring chunk) as read, in the input ``dtype``
    and standardised in float32."""
    step = min(max(batch_size, CHUNK_ROWS), len(rows))
    return step * rows.dim * (rows.dtype.itemsize + torch.empty(0, dtype=dtype).element_size() + 4)


def moments(batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and (biased) variance in one pass, float64 partial sums of CHUNK_ROWS
    rows each (the same sums in any mode), returned as float32."""
    total = torch.zeros(batches.dim, dtype=torch.float64, device=batches.device)
    sq = torch.zeros_like(total)
    for _, chunk in batches.chunks():
        block = chunk.double()
        total += block.sum(0)
        sq += (block * block).sum(0)
    mean = total / batches.n
    return mean.float(), (sq / batches.n - mean * mean).clamp_min(0).float()
