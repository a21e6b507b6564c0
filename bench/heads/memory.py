"""The one memory policy of every head: what a head holds of its features within
``--memory-budget``, the refusal when one step does not fit, the estimate ``bench.run.costs``
prints, and the host buffers its readers reuse.

A head declares, for each phase of its protocol (``search``: train and val; ``refit``: the
selected point retrained; ``test``), the feature sources it reads, in the order it takes them:
a ``Source`` says what it holds whole, in read-ahead windows, and for one step read from disk.
``Budget.take`` gives each source the largest mode that fits what the phase has left (beside the
least the sources still to come need, ``reserve``), and refuses in one line, with its arithmetic,
a budget below one step. A head's plan function (``HeadKind.memory``, e.g.
``bench.heads.probe.grid_memory``) is pure arithmetic on ``Inputs`` (rows per split, numbers per
row, bytes per number): the trainer runs it on its arrays to choose each reader's mode, and
``bench.run.costs`` runs it on the task's split sizes and the calibrated dimensions, so the
estimate and the refusal come before anything is extracted, and say what the run will do.

``HostBuffers`` are a reader's host arrays (read-ahead windows, scoring chunks, gathered
minibatches), allocated once and reused for every window and step: freed and reallocated at
every step, arrays of a few MB to tens of MB fragment glibc's heap (its mmap threshold rises to
the largest freed block), and a 250k x 2,048 probe's peak RSS grew by half
(``benchmarks/probe_memory.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import UsageError
from bench.ranges import size_text

MODES = ("memory", "windows", "rows")  # held whole; read-ahead windows; one step at a time
AUTO_FRACTION = 0.5  # --memory-budget auto: this fraction of free RAM (free GPU memory on CUDA)


class MemoryBudgetError(UsageError):
    """A budget below the least a head needs; raised before anything is read or trained."""


@dataclass(frozen=True)
class Inputs:
    """What a head's memory depends on, known before extraction (from the task's splits and
    the calibrated feature dimensions) and at run time (from the arrays)."""

    rows: Mapping[str, int]  # split -> rows
    dims: int  # numbers per row (all layers of a cell)
    stored: int  # bytes per number as cached
    compute: int  # bytes per number as the head reads them (the precision's probe inputs)
    classes: int
    shapes: tuple[tuple[int, ...], ...] = ()  # each layer's feature shape, where known

    def rows_of(self, splits: str) -> int:
        """Rows of "train" or of several splits read as one ("train+val")."""
        return sum(self.rows[s] for s in splits.split("+"))


@dataclass(frozen=True)
class Source:
    """One feature source a head reads in a phase, and what each mode holds (bytes)."""

    name: str  # the split(s) it is: "train", "train+val", ...
    whole: int  # held whole (in the type the head computes with)
    step: int  # one step read from disk: the least it needs when streamed
    step_text: str  # how ``step`` is counted, e.g. "256 rows x 192 dims x 12 B"
    windows: int | None = None  # read-ahead windows and one step; None: no windowed mode
    always: int = 0  # held in every mode beside the features (e.g. a similarity block)
    what: str = "step"  # what one step is, said in a refusal: "probe minibatch", "kNN step"
    fix: str = "lower batch_size"  # what else lowers ``step``, said in a refusal ("": nothing)

    @property
    def least(self) -> int:
        return self.step + self.always


@dataclass(frozen=True)
class Holding:
    """A source's mode and the bytes it holds in it."""

    source: Source
    mode: str  # MODES
    bytes: int


@dataclass
class Budget:
    """One phase's budget (bytes; None: no limit), given out source by source. ``least``: the
    least the whole protocol needs (its largest phase), advised in a refusal."""

    total: int | None
    least: int = 0
    taken: list[Holding] = field(default_factory=list)

    @property
    def held(self) -> int:
        return sum(h.bytes for h in self.taken)

    def take(self, source: Source, reserve: Sequence[Source] = ()) -> Holding:
        """``source`` in the largest mode that fits beside what is held and the least of the
        ``reserve`` sources (read later in the phase); a ``MemoryBudgetError`` below its least."""
        if self.total is None:
            holding = Holding(source, "memory", source.whole + source.always)
        else:
            left = self.total - self.held - sum(r.least for r in reserve)
            if left < source.least:
                raise MemoryBudgetError(self._refusal(source, reserve))
            if source.whole + source.always <= left:
                holding = Holding(source, "memory", source.whole + source.always)
            elif source.windows is not None and source.windows + source.always <= left:
                holding = Holding(source, "windows", source.windows + source.always)
            else:
                holding = Holding(source, "rows", source.least)
        self.taken.append(holding)
        return holding

    def _refusal(self, source: Source, reserve: Sequence[Source]) -> str:
        """One line: each term of what the phase needs at least, with its arithmetic, the sum,
        and the budget to give (the whole protocol's least, rounded up)."""
        parts = [f"{h.source.name} held ({h.mode}, {size_text(h.bytes)})" for h in self.taken]
        parts += [f"one {s.what} ({_least_text(s)}, {s.name})" for s in [source, *reserve]
                  if s.least]
        need = source.least + sum(r.least for r in reserve) + self.held
        more = (f"; another phase of the head needs {size_text(self.least)}"
                if self.least > need else "")
        fix = f", or {source.fix}" if source.fix else ""
        return (f"memory budget {size_text(self.total)} is below {' + '.join(parts)}"
                f" = {size_text(need)}{more}: give --memory-budget "
                f"{rounded_up(max(need, self.least))} or more (or auto){fix}")


def rounded_up(n: int) -> str:
    """``n`` bytes as a --memory-budget value, rounded up to ``size_text``'s precision (typed
    back, it is enough)."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{-(-n * 10 // scale) / 10:g}{unit}"
    return f"{n}B"


def _least_text(source: Source) -> str:
    return f"{source.step_text} = {size_text(source.least)}"


@dataclass
class MemoryPlan:
    """A head's holdings in each phase of its protocol (phase -> source -> holding)."""

    budget: int | None
    phases: dict[str, dict[str, Holding]] = field(default_factory=dict)

    @classmethod
    def of(cls, budget: int | None, phases: Mapping[str, Sequence[Source]]) -> MemoryPlan:
        """Each phase's sources taken in order, each with the least of those after it kept
        free; a budget below a phase's least is the ``MemoryBudgetError`` of the first such
        phase, advising the least every phase runs in."""
        least = max((sum(s.least for s in sources) for sources in phases.values()), default=0)
        plan = cls(budget)
        for name, sources in phases.items():
            budget_ = Budget(budget, least)
            plan.phases[name] = {s.name: budget_.take(s, sources[i + 1:])
                                 for i, s in enumerate(sources)}
        return plan

    def mode(self, phase: str, source: str) -> str:
        return self.phases[phase][source].mode

    @property
    def peak(self) -> int:
        """The most feature bytes held at once: the largest phase."""
        return max((sum(h.bytes for h in p.values()) for p in self.phases.values()), default=0)

    def describe(self) -> str:
        """'every split in memory', or which sources stream and how."""
        streamed = {name: h.mode for p in self.phases.values() for name, h in p.items()
                    if h.mode != "memory"}
        if not streamed:
            return "every split in memory"
        return "streamed: " + ", ".join(f"{name} ({mode})" for name, mode in streamed.items())


def rows_source(name: str, rows: int, dims: int, stored: int, compute: int, step_rows: int,
                work: int = 4, what: str = "step", window_rows: int | None = None,
                windows: int = 2) -> Source:
    """The ``Source`` of ``rows`` x ``dims`` numbers read ``step_rows`` at a time: held whole
    in the compute type; one step read (``stored`` bytes a number), converted (``compute``)
    and worked on (``work`` bytes a number, e.g. standardised in float32); with
    ``window_rows``, ``windows`` read-ahead windows of stored rows beside one step."""
    step = min(step_rows, rows)
    per = stored + compute + work
    text = (f"{step:,} rows x {dims:,} dims x {per} B [{stored} stored + {compute} input"
            + (f" + {work} working]" if work else "]"))
    step_bytes = step * dims * per
    windowed = None if window_rows is None else windows * window_rows * dims * stored + step_bytes
    return Source(name, rows * dims * compute, step_bytes, text, windowed, what=what)


def auto_budget(device: Any) -> int:
    """``AUTO_FRACTION`` of the memory free now: the GPU's on CUDA, else the host's
    (MemAvailable of /proc/meminfo, or free pages where there is none)."""
    import torch

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


def resolve_budget(budget: int | str | None, device: Any) -> int | None:
    """``RunOptions.memory_budget`` in bytes: ``auto`` is a fraction of the memory free now
    where the features will sit (``auto_budget``); None: no limit."""
    return auto_budget(device) if budget == "auto" else budget


def inputs_of(data: Any, compute: int) -> Inputs:
    """The ``Inputs`` of a ``bench.protocol.ProbeData``: (N, D) arrays, or {layer: (N, C, h, w)}
    maps."""
    first = data.features["train"]
    layers = list(first.values()) if isinstance(first, dict) else [first]
    shapes = tuple(tuple(int(n) for n in a.shape[1:]) for a in layers)
    return Inputs({s: len(data.labels[s]) for s in data.labels},
                  sum(math.prod(shape) for shape in shapes), np.dtype(layers[0].dtype).itemsize,
                  compute, data.num_classes, shapes)


class HostBuffers:
    """A reader's host arrays, allocated on first use and reused: ``get(key, rows)`` is the
    first ``rows`` rows of the buffer ``key`` ((capacity, *shape) of ``dtype``; pinned for
    asynchronous copies to a GPU when ``pin``). A buffer is reused when next asked for, so a
    reader hands out a buffer only until it asks for the same key again."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, pin: bool = False):
        self.shape, self.dtype, self.pin = tuple(shape), dtype, pin
        self._buffers: dict[Any, Any] = {}

    def get(self, key: Any, rows: int, capacity: int | None = None):
        """A (rows, *shape) torch tensor (its ``.numpy()`` a view of the same memory)."""
        import torch

        buffer = self._buffers.get(key)
        if buffer is None or len(buffer) < rows:
            self._buffers.pop(key, None)  # the old one goes before the larger one is made
            dtype = (self.dtype if isinstance(self.dtype, torch.dtype) else
                     torch.from_numpy(np.empty(0, self.dtype)).dtype)
            buffer = torch.empty((max(rows, capacity or 0), *self.shape), dtype=dtype,
                                 pin_memory=self.pin)
            self._buffers[key] = buffer
        return buffer[:rows]

    def clear(self) -> None:
        """Release every buffer (a reader between passes: scoring holds other memory)."""
        self._buffers.clear()
