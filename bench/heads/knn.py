"""Weighted k-nearest-neighbour classification on cached features (DINOv2's kNN protocol).

Features are L2-normalised, so a matrix product gives cosine similarities; each query's k most
similar memory-bank features vote for their class with weight exp(similarity / T), T = 0.07, and
a class's score is the sum of its votes. k is selected on validation with the train split as the
memory bank; train+val then becomes the bank and test is scored once, as for the probes.

Queries go through in chunks sized so that a chunk's similarity matrix stays under
``MAX_SIMILARITIES`` entries: the N x N matrix never exists, and one neighbour search at the
largest k serves every smaller k. On a CUDA device the bank lives in GPU memory in float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.metrics import Predictions
from bench.protocol import top_classes

KS = (10, 20, 50, 100, 200)
TEMPERATURE = 0.07
WEIGHTINGS = ("exponential", "uniform")
MAX_SIMILARITIES = 1 << 26  # entries of one chunk's (queries x bank) matrix: 256 MB in float32


@dataclass
class KnnConfig:
    head: str = "knn"
    ks: tuple[int, ...] = KS  # candidates, selected on validation
    temperature: float = TEMPERATURE
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


def _normalised(x: Any, device: torch.device) -> torch.Tensor:
    """(N, D) float32 unit rows on ``device``; zero rows stay zero."""
    t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    t = t.reshape(len(t), -1).to(device=device, dtype=torch.float32)
    return torch.nn.functional.normalize(t, dim=1)


def _neighbours(bank: torch.Tensor, queries: torch.Tensor, k: int,
                progress: bool) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Per chunk of queries: (its rows, similarities (q, k) descending, bank indices (q, k))."""
    from tqdm.auto import tqdm

    chunk = max(1, min(len(queries), MAX_SIMILARITIES // max(len(bank), 1)))
    starts = range(0, len(queries), chunk)
    for start in tqdm(starts, desc=f"kNN k<={k}", unit="chunk", disable=not progress, leave=False):
        rows = slice(start, start + chunk)
        similarity = queries[rows] @ bank.T
        sims, index = similarity.topk(k, dim=1)
        yield rows, sims, index


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
             progress: bool = False) -> dict[int, np.ndarray]:
    """Top-5 class ids (N, 5) of every query for each k, from one neighbour search; ties to the
    lower class id (``bench.metrics``' rule, as scikit-learn's argmax).

    Each k is capped by the bank size; the returned keys are the capped values.
    """
    cfg = cfg or KnnConfig()
    labels = torch.as_tensor(_check_bank(bank, bank_labels, num_classes))
    dev = torch.device(device)
    bank_t, labels = _normalised(bank, dev), labels.to(dev)
    capped = sorted({min(k, len(bank_t)) for k in ks})
    out = {k: np.empty((len(queries), min(5, num_classes)), dtype=np.int64) for k in capped}
    with torch.no_grad():
        for rows, sims, index in _neighbours(bank_t, _normalised(queries, dev), capped[-1],
                                             progress):
            neighbour_labels = labels[index]
            for k in capped:
                out[k][rows] = top_classes(_vote(sims, neighbour_labels, k, num_classes, cfg)).cpu()
    return out


def knn_scores(bank: Any, bank_labels: Any, queries: Any, num_classes: int, k: int,
               cfg: KnnConfig | None = None, device: torch.device | str = "cpu") -> np.ndarray:
    """(N, C) class scores of every query (sum of its neighbours' weights per class)."""
    cfg = cfg or KnnConfig()
    labels = torch.as_tensor(_check_bank(bank, bank_labels, num_classes))
    dev = torch.device(device)
    bank_t, labels = _normalised(bank, dev), labels.to(dev)
    k = min(k, len(bank_t))
    out = np.empty((len(queries), num_classes), dtype=np.float32)
    with torch.no_grad():
        for rows, sims, index in _neighbours(bank_t, _normalised(queries, dev), k, False):
            out[rows] = _vote(sims, labels[index], k, num_classes, cfg).cpu().numpy()
    return out


class KnnTrainer:
    """kNN as a ``bench.protocol`` trainer: each k is a grid point scored on val with train as the
    bank; the selected k scores test with train+val as the bank."""

    def __init__(self, cfg: KnnConfig, device: torch.device | str = "cpu", precision=None,
                 progress: bool = False, groups=None):
        self.cfg, self.device, self.progress = cfg, torch.device(device), progress

    def search(self, data: Any) -> list[dict[str, float]]:
        val_top5 = knn_top5(data.features["train"], data.labels["train"], data.features["val"],
                            data.num_classes, self.cfg.ks, self.cfg, self.device, self.progress)
        return [{"k": k, **Predictions(top5, data.labels["val"], data.num_classes).metrics()}
                for k, top5 in val_top5.items()]

    def refit_predict(self, data: Any, point: dict[str, float]) -> torch.Tensor:
        bank = np.concatenate([np.asarray(data.features["train"]), np.asarray(data.features["val"])])
        bank_labels = np.concatenate([data.labels["train"], data.labels["val"]])
        return torch.from_numpy(knn_scores(bank, bank_labels, data.features["test"],
                                           data.num_classes, int(point["k"]), self.cfg,
                                           self.device))

