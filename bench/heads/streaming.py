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
from it in one of three modes, chosen by the one memory policy (``bench.heads.memory``; the
source's bytes: ``batches_source``): the whole split on the device in the probe-input dtype
when it fits; else windows read ahead by a thread (through pinned buffers and a copy stream on
CUDA); else each minibatch's rows gathered alone. Its host buffers (windows, scoring chunks,
minibatches) are allocated once and reused. A budget below one minibatch is a ``UsageError``
before anything trains.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from bench.heads.memory import Budget, HostBuffers, Source, rows_source

BLOCK_ROWS = 64  # rows per block of the shuffled order (a protocol constant: it changes numbers)
WINDOW_BLOCKS = 256  # blocks per window; their rows are permuted together
WINDOW_ROWS = BLOCK_ROWS * WINDOW_BLOCKS
CHUNK_ROWS = 256  # rows per scoring chunk and per float64 partial sum of the statistics
Held = TypeVar("Held")  # what a ViewCycle serves (Batches, the attention head's maps)


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
        """Rows [start, stop) as a (rows, D) array in the stored dtype (into ``out`` if given)."""
        out = np.empty((stop - start, self.dim), self.dtype) if out is None else out
        for part, lo, hi in zip(self.parts, self.bounds[:-1], self.bounds[1:]):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                _take(part, np.arange(a - lo, b - lo), out[a - start : b - start])
        return out

    def take(self, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``index`` (any order), gathered part by part (into ``out`` if given)."""
        out = np.empty((len(index), self.dim), self.dtype) if out is None else out
        part_of = np.searchsorted(self.bounds, index, side="right") - 1
        if len(self.parts) == 1:
            return _take(self.parts[0], index, out)
        for p in np.unique(part_of).tolist():
            where = np.flatnonzero(part_of == p)
            out[where] = _take(self.parts[p], index[where] - self.bounds[p])
        return out

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(start, rows [start, start + rows)) in order, each a new array."""
        for start in range(0, len(self), rows):
            yield start, self.read(start, min(start + rows, len(self)))


def _take(part: Any, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``index`` of ``part`` as (len(index), D), written straight into ``out`` when given
    and ``part.take`` writes into one (numpy arrays and the cache's ``ShardedArray``: no
    intermediate array)."""
    if out is not None and _writes_out(part):
        part.take(index, axis=0, out=out.reshape(len(index), *part.shape[1:]), mode="clip")
        return out
    rows = part.take(index, axis=0) if hasattr(part, "take") else np.asarray(part)[index]
    rows = rows.reshape(len(index), -1)
    if out is None:
        return rows
    out[...] = rows
    return out


def _writes_out(part: Any) -> bool:
    """Whether ``part.take`` takes ``out`` and ``mode`` (numpy's signature)."""
    if isinstance(part, np.ndarray):
        return True
    code = getattr(getattr(part, "take", None), "__code__", None)
    return code is not None and {"out", "mode"} <= set(code.co_varnames)


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def batches_source(name: str, rows: int, dim: int, stored: int, compute: int, batch_size: int,
                   what: str = "probe") -> Source:
    """What ``Batches`` holds of ``rows`` x ``dim`` numbers in each mode (the memory policy's
    ``Source``): the split in the compute type; read-ahead windows (one per window a minibatch
    can span, and the next) beside one step; one step: a minibatch or scoring chunk as read,
    in the compute type and standardised in float32."""
    return rows_source(name, rows, dim, stored, compute, max(batch_size, CHUNK_ROWS),
                       what=f"{what} minibatch", window_rows=WINDOW_ROWS,
                       windows=1 + math.ceil(batch_size / WINDOW_ROWS))


class Batches:
    """An epoch's minibatches of ``rows`` (and their ``labels``) on ``device`` in ``dtype``, in
    ``epoch_windows``' order, and the split in chunks for scoring.

    ``mode``: ``memory`` (the whole split on the device in ``dtype``), ``windows`` (read-ahead
    windows of stored rows: the one serving, the next read ahead) or ``rows`` (each minibatch
    gathered alone); the three give the same tensors. Given by the head's memory plan, or chosen
    here within ``budget`` bytes (None: no limit) beside ``reserve`` bytes kept for another
    split. ``held``: the most feature bytes the mode holds. Host buffers are allocated once per
    reader and reused: a tensor it serves is valid until the next one is asked for.
    """

    def __init__(self, rows: Rows, labels: Any, batch_size: int, device: torch.device,
                 dtype: torch.dtype, budget: int | None = None, what: str = "probe",
                 reserve: int = 0, mode: str | None = None):
        self.rows, self.batch_size, self.device, self.dtype = rows, batch_size, device, dtype
        self.n, self.dim = len(rows), rows.dim
        self.labels = None if labels is None else torch.as_tensor(
            np.asarray(labels), dtype=torch.long).to(device)
        compute = torch.empty(0, dtype=dtype).element_size()
        source = batches_source("rows", len(rows), rows.dim, rows.dtype.itemsize, compute,
                                batch_size, what)
        if mode is None:
            kept = [Source("another split", 0, reserve, f"{reserve:,} B")] if reserve else []
            mode = Budget(budget).take(source, kept).mode
        self.mode = mode
        self.held = {"memory": source.whole, "windows": source.windows, "rows": source.step}[mode]
        cuda = device.type == "cuda"
        self.windows = HostBuffers((rows.dim,), rows.dtype, pin=cuda)  # read ahead, copied async
        self.host = HostBuffers((rows.dim,), rows.dtype)  # scoring chunks and gathered minibatches
        self.converted = HostBuffers((rows.dim,), dtype)  # the same in ``dtype`` (CPU)
        self.copied: dict[int, Any] = {}  # window slot -> its last copy's event (CUDA)
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

    def _to_device(self, host: torch.Tensor, key: str) -> torch.Tensor:
        """Host rows on the device in ``dtype``; on the CPU converted into a reused buffer (or
        served as they are when already in ``dtype``)."""
        if self.device.type != "cpu":
            return host.to(self.device).to(self.dtype)
        if host.dtype == self.dtype:
            return host
        return self.converted.get(key, len(host)).copy_(host)

    def _load(self) -> torch.Tensor:
        """The whole split on the device in ``dtype``, filled a window at a time through one
        host buffer."""
        out = torch.empty((len(self.rows), self.rows.dim), dtype=self.dtype, device=self.device)
        host = np.empty((min(WINDOW_ROWS, len(self.rows)), self.rows.dim), self.rows.dtype)
        for start in range(0, len(self.rows), WINDOW_ROWS):
            stop = min(start + WINDOW_ROWS, len(self.rows))
            view = self.rows.read(start, stop, out=host[: stop - start])
            out[start:stop] = torch.from_numpy(view).to(self.device)
        return out

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, the next CHUNK_ROWS rows) in order, on the device in ``dtype``: the same
        shapes in every mode, so scores and statistics are the same numbers."""
        if self.resident is not None:
            for start in range(0, self.n, CHUNK_ROWS):
                yield start, self.resident[start : start + CHUNK_ROWS]
            return
        for start in range(0, self.n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, self.n)
            host = self.host.get("chunk", stop - start)
            self.rows.read(start, stop, out=host.numpy())
            yield start, self._to_device(host, "chunk")

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
        batches = (self._gathered(order[i : i + self.batch_size]) for i in starts) if (
            self.mode == "rows") else self._windowed(windows, order, starts)
        for i, batch in zip(starts, batches):
            yield batch, self.labels[torch.from_numpy(order[i : i + self.batch_size]).to(
                self.device)]

    def _gathered(self, index: np.ndarray) -> torch.Tensor:
        host = self.host.get("batch", len(index))
        self.rows.take(index, out=host.numpy())
        return self._to_device(host, "batch")

    def _windowed(self, windows: list[Window], order: np.ndarray, starts: range):
        """Minibatches out of window buffers; the next window is read (and on CUDA copied, on a
        side stream from pinned memory) while the current one trains. Window w is read into
        slot w mod ``slots``: those a minibatch spans and the one read ahead are never the same."""
        window_of = np.repeat(np.arange(len(windows)), [len(w.rows) for w in windows])
        local = np.concatenate([w.perm for w in windows])
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        slots = 1 + math.ceil(self.batch_size / WINDOW_ROWS)
        loaded: dict[int, Any] = {}
        with _released(self), ThreadPoolExecutor(1) as pool:
            def need(w: int) -> None:
                if w < len(windows) and w not in loaded:
                    loaded[w] = pool.submit(self._read_window, windows[w], w % slots, stream)

            for i in starts:
                ws = np.unique(window_of[i : i + self.batch_size]).tolist()
                for w in [w for w in loaded if w < ws[0]]:
                    del loaded[w]
                # the next window is read ahead while one window serves
                for w in ws + [ws[-1] + 1] * (len(ws) == 1):
                    need(w)
                size = min(self.batch_size, len(order) - i)
                batch = (self.host.get("batch", size) if not cuda else None)
                parts, at_row = [], 0
                for w in ws:
                    buffer, event = loaded[w].result()
                    if event is not None:  # copied on the side stream: used on this one
                        torch.cuda.current_stream(self.device).wait_event(event)
                        buffer.record_stream(torch.cuda.current_stream(self.device))
                    at = local[i : i + self.batch_size][window_of[i : i + self.batch_size] == w]
                    index = torch.from_numpy(at).to(buffer.device)
                    if batch is None:
                        parts.append(buffer[index])
                    else:
                        torch.index_select(buffer, 0, index, out=batch[at_row : at_row + len(at)])
                    at_row += len(at)
                if batch is None:
                    yield (parts[0] if len(parts) == 1 else torch.cat(parts)).to(self.dtype)
                else:
                    yield self._to_device(batch, "batch")

    def _read_window(self, window: Window, slot: int, stream: Any) -> tuple[torch.Tensor, Any]:
        host = self.windows.get(slot, len(window.rows), capacity=WINDOW_ROWS)
        if slot in self.copied:  # its last window's copy to the device must have finished
            self.copied.pop(slot).synchronize()
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
        self.copied[slot] = event
        return on_device, event


@contextlib.contextmanager
def _released(batches: Batches) -> Iterator[None]:
    """The window slots for one epoch: released at its end (validation, between epochs, holds
    other memory), so an epoch allocates them once."""
    try:
        yield
    finally:
        for event in batches.copied.values():
            event.synchronize()
        batches.copied.clear()
        batches.windows.clear()


class ViewCycle(Generic[Held]):
    """A training source per augmented view of train (``--views``: same rows, same labels),
    made when its epoch comes: epoch e (0-based) reads view e mod ``views``. One view is held
    at a time (the memory plan counts one), released before the next is made; one view is made
    once and kept, as a plain source is."""

    def __init__(self, make: Callable[[int], Held], views: int = 1):
        self.make, self.views = make, views
        self._held: tuple[int, Held] | None = None

    def __call__(self, epoch: int) -> Held:
        view = epoch % self.views
        if self._held is None or self._held[0] != view:
            self._held = None  # the view held is released before the next is read
            self._held = (view, self.make(view))
        return self._held[1]

    def chunks(self) -> Iterator[tuple[int, Any]]:
        """The scoring chunks (``Batches.chunks``) of every view in turn: statistics over all
        the rows training reads."""
        for view in range(self.views):
            yield from self(view).chunks()


def step_bytes(rows: Rows, batch_size: int, dtype: torch.dtype) -> int:
    """What one step holds: a minibatch (or a scoring chunk) as read, in the input ``dtype``
    and standardised in float32 (``batches_source``' step)."""
    compute = torch.empty(0, dtype=dtype).element_size()
    return batches_source("rows", len(rows), rows.dim, rows.dtype.itemsize, compute,
                          batch_size).step


def chunk_moments(chunks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and (biased) variance of the rows of ``chunks`` (2-D tensors), in
    one pass: float64 partial sums, chunk by chunk, of the rows minus the first row. Shifted,
    the sums lose nothing to a large common offset; a dimension within float64 rounding of
    constant (scikit-learn's test, ``sklearn.utils.extmath._is_constant_feature``) gets a
    variance of exactly 0, and nothing is added to the others, so the statistics scale with the
    features (scale-free standardisation: ``standardisation``). Returned in float64."""
    shift = total = sq = None
    n = 0
    for chunk in chunks:
        block = chunk.double()
        if shift is None:
            shift = block[0].clone()
            total, sq = torch.zeros_like(shift), torch.zeros_like(shift)
        block -= shift
        total += block.sum(0)
        sq += (block * block).sum(0)
        n += len(block)
    centred = total / n
    var = (sq / n - centred * centred).clamp_min(0)
    eps = torch.finfo(torch.float64).eps
    var[var <= n * eps * var + (n * centred * eps) ** 2] = 0.0
    return shift + centred, var


def moments(batches: Batches | ViewCycle[Batches]) -> tuple[torch.Tensor, torch.Tensor]:
    """``chunk_moments`` of ``batches``' scoring chunks (of every view: ``ViewCycle.chunks``):
    the same chunks in any reading mode, so the same sums."""
    return chunk_moments(chunk for _, chunk in batches.chunks())


def standardisation(batches: Batches | ViewCycle[Batches]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, multiplier), float32 on the rows' device: ``(x - mean) * multiplier`` has unit
    variance in every dimension that varies on these rows and is exactly 0 in every constant
    one (no epsilon: the same numbers at any overall scale of the features)."""
    mean, var = moments(batches)
    return mean.float(), multiplier(var).float()


def multiplier(var: torch.Tensor) -> torch.Tensor:
    """1 / standard deviation, 0 for a constant dimension (variance exactly 0)."""
    return torch.where(var > 0, var.rsqrt(), torch.zeros_like(var))


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm; a zero row stays zero (no epsilon: any scale)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))
