"""Weighted k-nearest-neighbour classification on cached features (DINOv2's kNN protocol).

Features are L2-normalised, so a matrix product gives cosine similarities; each query's k most
similar memory-bank features vote for their class with weight exp(similarity / T), T = 0.07, and
a class's score is the sum of its votes. k is selected on validation with the train split as the
memory bank; train+val then becomes the bank and test is scored once, as for the probes.

The bank is read in chunks of ``BANK_ROWS`` and the queries in chunks of ``QUERY_ROWS`` (fixed
sizes: the same products whether streamed or in memory), so the N x N matrix never
exists, each query keeps its running k best, and one neighbour search at the largest k serves
every smaller k. Bank and queries live on the device (GPU memory in float32 on CUDA) when they fit
the run's memory budget and are streamed from the cache otherwise, with the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.heads.memory import HostBuffers, Inputs, MemoryPlan, Source
from bench.heads.streaming import Rows, unit_rows
from bench.metrics import Predictions
from bench.protocol import top_classes
from bench.ranges import COUNT, POSITIVE, check_settings, setting

KS = (10, 20, 50, 100, 200)
TEMPERATURE = 0.07
WEIGHTINGS = ("exponential", "uniform")


@dataclass
class KnnConfig:
    head: str = "knn"
    ks: tuple[int, ...] = setting(KS, COUNT)  # candidates, selected on validation
    temperature: float = setting(TEMPERATURE, POSITIVE)
    weighting: str = "exponential"  # exp(similarity / temperature); "uniform": one vote each
    seed: int = 0  # kNN draws nothing at random; kept because every result has a seed

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown kNN weighting {self.weighting!r}; "
                             f"choose one of {', '.join(WEIGHTINGS)}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"kNN needs at least one k >= 1, got {self.ks}")
        if self.temperature <= 0:
            raise ValueError(f"kNN temperature must be positive, got {self.temperature}")
        check_settings(self)


BANK_ROWS = 16384  # bank rows per similarity chunk: fixed, so streamed and in-memory agree
QUERY_ROWS = 1024  # queries per chunk: a (QUERY_ROWS, BANK_ROWS) similarity matrix is 64 MB


def _normalised(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, D) float32 unit rows on ``device``; zero rows stay zero."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    return unit_rows(t.reshape(len(t), -1).to(device=device, dtype=torch.float32))


def _rows(x: Any) -> Rows:
    return x if isinstance(x, Rows) else Rows([x])


class _Chunks:
    """Normalised rows of a bank or of the queries, chunk by chunk: kept on the device when
    ``resident``, else read again from their source at each pass (through one reused host
    buffer: ``_normalised`` makes the chunk it serves)."""

    def __init__(self, rows: Rows, size: int, device: torch.device, resident: bool):
        self.rows, self.size, self.device = rows, size, device
        self.host = HostBuffers((rows.dim,), rows.dtype)
        self.kept = list(self._read()) if resident else None

    def _read(self) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(self.rows), self.size):
            stop = min(start + self.size, len(self.rows))
            chunk = self.rows.read(start, stop, out=self.host.get("chunk", stop - start).numpy())
            yield start, _normalised(chunk, self.device)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        return iter(self.kept) if self.kept is not None else self._read()


def knn_sources(bank_rows: int, query_rows: int, dims: int, stored: int,
                bank: str = "train", queries: str = "val") -> list[Source]:
    """The bank and the queries as the memory policy's sources: held whole as normalised
    float32 rows; one step, held in every mode, is a bank chunk and a query chunk as read and
    normalised, and their (QUERY_ROWS, BANK_ROWS) float32 similarities."""
    chunk, queries_chunk = min(BANK_ROWS, bank_rows), min(QUERY_ROWS, query_rows)
    step = (chunk * dims * (stored + 4)
            + queries_chunk * (dims * (stored + 4) + 4 * chunk))
    text = (f"{chunk:,} bank rows and {queries_chunk:,} queries of {dims:,} dims x {stored + 4} B "
            f"[{stored} stored + 4 normalised] and {queries_chunk:,} x {chunk:,} similarities "
            "x 4 B")
    return [Source(bank, 4 * dims * bank_rows, 0, text, always=step, what="kNN minibatch",
                   fix=""),
            Source(queries, 4 * dims * query_rows, 0, "", what="kNN query chunk", fix="")]


def knn_memory(bank: Rows, queries: Rows, budget: int | None) -> tuple[bool, bool]:
    """Whether the normalised bank, and then the queries, stay on the device within ``budget``
    bytes beside one step's chunks (else they stream); a ``UsageError`` below one step."""
    plan = MemoryPlan.of(budget, {"knn": knn_sources(len(bank), len(queries), bank.dim,
                                                     bank.dtype.itemsize)})
    return tuple(h.mode == "memory" for h in plan.phases["knn"].values())


def knn_plan(cfg: KnnConfig, inputs: Inputs, budget: int | None) -> MemoryPlan:
    """kNN's reads within ``budget``: train as the bank for the val queries, then train+val as
    the bank for the test queries."""
    return MemoryPlan.of(budget, {
        phase: knn_sources(inputs.rows_of(bank), inputs.rows_of(queries), inputs.dims,
                           inputs.stored, bank, queries)
        for phase, bank, queries in (("search", "train", "val"), ("test", "train+val", "test"))})


def knn_state(cfg: KnnConfig, inputs: Inputs) -> tuple[int, str]:
    """Bytes of every query's running best k: similarities (float32) and bank indices (int64)."""
    queries, k = max(inputs.rows["val"], inputs.rows["test"]), max(cfg.ks)
    return queries * k * 12, f"{queries:,} queries x k {k} x (4 + 8) B"


def _neighbours(bank: Rows, queries: Rows, k: int, device: torch.device, progress: bool,
                budget: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities (Nq, k) descending, bank indices (Nq, k)) of every query's k nearest.

    The bank is read once, ``BANK_ROWS`` at a time (the outer loop), and each chunk's best k
    are merged into every query's running best k; bank and queries stay on the device when
    they fit ``budget``, else they stream. The N x N matrix never exists.
    """
    from tqdm.auto import tqdm

    bank_kept, queries_kept = knn_memory(bank, queries, budget)
    query_chunks = _Chunks(queries, QUERY_ROWS, device, queries_kept)
    sims = torch.full((len(queries), k), -torch.inf, device=device)
    index = torch.zeros((len(queries), k), dtype=torch.long, device=device)
    bank_chunks = _Chunks(bank, BANK_ROWS, device, bank_kept)
    for start, chunk in tqdm(bank_chunks, desc=f"kNN k<={k}", unit="bank chunk",
                             total=math.ceil(len(bank) / BANK_ROWS), disable=not progress,
                             leave=False):
        for q, query in query_chunks:
            rows = slice(q, q + len(query))
            top, at = (query @ chunk.T).topk(min(k, len(chunk)), dim=1)
            merged = torch.cat([sims[rows], top], dim=1)
            sims[rows], best = merged.topk(k, dim=1)
            index[rows] = torch.cat([index[rows], at + start], dim=1).gather(1, best)
    return sims, index


def _vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, k: int, num_classes: int,
          cfg: KnnConfig) -> torch.Tensor:
    """(q, C) class scores from the k most similar neighbours of each query."""
    sims, neighbour_labels = sims[:, :k], neighbour_labels[:, :k]
    weights = (sims / cfg.temperature).exp() if cfg.weighting == "exponential" else (
        torch.ones_like(sims))
    scores = torch.zeros(len(sims), num_classes, dtype=sims.dtype, device=sims.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def _check_bank(bank: Any, bank_labels: Any, num_classes: int) -> np.ndarray:
    labels = np.asarray(bank_labels, dtype=np.int64)
    if len(bank) != len(labels):
        raise ValueError(f"kNN memory bank has {len(bank)} features but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("kNN memory bank is empty: the train split has no features")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"kNN bank labels must lie in [0, {num_classes}); got "
                         f"[{labels.min()}, {labels.max()}]")
    return labels


def knn_top5(bank: Any, bank_labels: Any, queries: Any, num_classes: int, ks: Sequence[int],
             cfg: KnnConfig | None = None, device: torch.device | str = "cpu",
             progress: bool = False, budget: int | None = None) -> dict[int, np.ndarray]:
    """Top-5 class ids (N, 5) of every query for each k, from one neighbour search; ties to the
    lower class id (``bench.metrics``' rule, as scikit-learn's argmax). ``bank`` and ``queries``:
    arrays or ``bench.heads.streaming.Rows``, streamed beyond ``budget`` bytes.

    Each k is capped by the bank size; the returned keys are the capped values.
    """
    cfg = cfg or KnnConfig()
    bank, queries, dev = _rows(bank), _rows(queries), torch.device(device)
    labels = torch.as_tensor(_check_bank(bank, bank_labels, num_classes)).to(dev)
    capped = sorted({min(k, len(bank)) for k in ks})
    with torch.no_grad():
        sims, index = _neighbours(bank, queries, capped[-1], dev, progress, budget)
        neighbour_labels = labels[index]
        out = {}
        for k in capped:
            top = [top_classes(_vote(sims[i : i + QUERY_ROWS], neighbour_labels[i : i + QUERY_ROWS],
                                     k, num_classes, cfg)).cpu()
                   for i in range(0, len(queries), QUERY_ROWS)]
            out[k] = torch.cat(top).numpy()
    return out


def knn_scores(bank: Any, bank_labels: Any, queries: Any, num_classes: int, k: int,
               cfg: KnnConfig | None = None, device: torch.device | str = "cpu",
               budget: int | None = None) -> np.ndarray:
    """(N, C) class scores of every query (sum of its neighbours' weights per class)."""
    cfg = cfg or KnnConfig()
    bank, queries, dev = _rows(bank), _rows(queries), torch.device(device)
    labels = torch.as_tensor(_check_bank(bank, bank_labels, num_classes)).to(dev)
    k = min(k, len(bank))
    with torch.no_grad():
        sims, index = _neighbours(bank, queries, k, dev, False, budget)
        return _vote(sims, labels[index], k, num_classes, cfg).cpu().numpy()


class KnnTrainer:
    """kNN as a ``bench.protocol`` trainer: each k is a grid point scored on val with train as the
    bank; the selected k scores test with train+val as the bank."""

    def __init__(self, cfg: KnnConfig, device: torch.device | str = "cpu", precision=None,
                 progress: bool = False, groups=None):
        self.cfg, self.device, self.progress = cfg, torch.device(device), progress

    def search(self, data: Any) -> list[dict[str, float]]:
        val_top5 = knn_top5(data.features["train"], data.labels["train"], data.features["val"],
                            data.num_classes, self.cfg.ks, self.cfg, self.device, self.progress,
                            data.memory_budget)
        return [{"k": k, **Predictions(top5, data.labels["val"], data.num_classes).metrics()}
                for k, top5 in val_top5.items()]

    def refit_predict(self, data: Any, point: dict[str, float]) -> torch.Tensor:
        bank = Rows([data.features["train"], data.features["val"]])
        bank_labels = np.concatenate([data.labels["train"], data.labels["val"]])
        return torch.from_numpy(knn_scores(bank, bank_labels, data.features["test"],
                                           data.num_classes, int(point["k"]), self.cfg,
                                           self.device, data.memory_budget))

