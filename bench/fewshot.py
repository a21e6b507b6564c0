"""Few-shot linear probes: k labelled images per class, several draws per k, mean and spread.

Draws are chosen from file names alone, so every machine and every run picks the same images:
within each class, train items are sorted by sha256(f"bench-fewshot/{k}/{draw}/{item}") and the
first k are the support set (all of them, with a warning, when a class has fewer than k). The
rest of train validates the probe's hyperparameter grid (the batched grid of ``bench.probe``);
the selected head is trained on the k shots alone and scored on test once. Test metrics are then
averaged over draws (mean and sample std per k).

The probe's own ``fit_probe`` retrains its winner on train+val, which here would train on the
whole train set; ``fit_support_probe`` runs the same selection but retrains on the support only.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.probe import ProbeConfig, ProbeResult, _logits, _train_grid, metrics, test_result
from bench.stats import aggregate_seeds

SHOTS = (1, 2, 4, 8, 16)
DRAWS = 5


@dataclass
class FewShotDraw:
    shots: int
    draw: int
    support: np.ndarray  # train indices: the k shots of every class (sorted)
    rest: np.ndarray  # the other train indices: validation for the probe's grid (sorted)
    short_classes: dict[int, int]  # class -> images available, where fewer than ``shots``


def fewshot_draw(items: Sequence[Any], labels: Sequence[int], shots: int, draw: int) -> FewShotDraw:
    """The support set of draw ``draw`` at ``shots`` per class, fixed by the item names alone.

    Items must be unique names (e.g. paths relative to the dataset root); their order in the
    input does not matter.
    """
    if shots < 1:
        raise ValueError(f"few-shot needs at least 1 shot per class, got {shots}")
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} items but {len(labels)} labels")
    by_class: dict[int, list[tuple[str, int]]] = {}
    for index, (item, label) in enumerate(zip(items, labels)):
        key = hashlib.sha256(f"bench-fewshot/{shots}/{draw}/{item}".encode()).hexdigest()
        by_class.setdefault(int(label), []).append((key, index))
    support: list[int] = []
    short: dict[int, int] = {}
    for label, members in sorted(by_class.items()):
        members.sort()
        support += [index for _, index in members[:shots]]
        if len(members) < shots:
            short[label] = len(members)
    chosen = np.zeros(len(items), dtype=bool)
    chosen[support] = True
    return FewShotDraw(shots, draw, np.flatnonzero(chosen), np.flatnonzero(~chosen), short)


def fit_support_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                      num_classes: int, cfg: ProbeConfig, headline: str = "top1",
                      device: torch.device | str = "cpu", progress: bool = False) -> ProbeResult:
    """``fit_probe``'s grid selected on val, but the winner is retrained on train alone.

    Linear heads of the grid train independently, so the retrained head is the selected one.
    """
    dev = torch.device(device)
    store = torch.float16 if dev.type == "cuda" else torch.float32
    x = {s: torch.as_tensor(np.ascontiguousarray(features[s].reshape(len(features[s]), -1)))
         .to(dev, store) for s in ("train", "val", "test")}
    y = {s: torch.as_tensor(labels[s], dtype=torch.long, device=dev) for s in x}
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    records: list[dict[str, float]] = []

    def record(epoch: int):
        def at(heads, norm):
            logits = _logits(heads, norm, x["val"])
            for g, (lr, wd) in enumerate(grid):
                m = metrics(logits[g], y["val"], num_classes)
                records.append({"lr": lr, "weight_decay": wd, "epochs": epoch, **m})
        return at

    torch.manual_seed(cfg.seed)
    _train_grid(x["train"], y["train"], num_classes, torch.tensor([g[0] for g in grid]),
                torch.tensor([g[1] for g in grid]), cfg, {e: record(e) for e in cfg.checkpoints()},
                progress=progress)
    best = records[int(np.argmax([r[headline] for r in records]))]
    heads, norm = _train_grid(x["train"], y["train"], num_classes, torch.tensor([best["lr"]]),
                              torch.tensor([best["weight_decay"]]), cfg, {},
                              stop_at=int(best["epochs"]), progress=progress)
    test_logits = _logits(heads, norm, x["test"])[0]
    return test_result(best, test_logits.cpu(), y["test"].cpu(), num_classes, records)


@dataclass
class FewShotSummary:
    shots: int
    mean: dict[str, float]  # test metrics averaged over draws
    std: dict[str, float]  # sample std over draws (NaN with one draw)
    draws: list[ProbeResult]
    short_classes: dict[int, int]  # class -> images available, where fewer than ``shots``


@dataclass
class FewShotResult:
    summaries: dict[int, FewShotSummary]  # by shots

    def mlflow_metrics(self) -> dict[str, float]:
        """``fewshot{k}_test_top1_mean``, ``fewshot{k}_test_top1_std``, ... for every k."""
        out = {}
        for shots, summary in self.summaries.items():
            for name in summary.mean:
                out[f"fewshot{shots}_test_{name}_mean"] = summary.mean[name]
                out[f"fewshot{shots}_test_{name}_std"] = summary.std[name]
        return out


def fit_fewshot(features: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                train_items: Sequence[Any], num_classes: int, cfg: ProbeConfig,
                shots: Sequence[int] = SHOTS, draws: int = DRAWS, headline: str = "top1",
                device: torch.device | str = "cpu", progress: bool = False) -> FewShotResult:
    """Probe every (k, draw) on its k-shot support, validated on the rest of train; test once each.

    ``features``/``labels`` need "train" (the pool the shots come from; ``train_items`` names its
    rows) and "test"; a "val" entry is not used.
    """
    if len(train_items) != len(features["train"]):
        raise ValueError(f"train_items names {len(train_items)} items but the train features "
                         f"have {len(features['train'])} rows; pass the train split's items")
    if draws < 1:
        raise ValueError(f"few-shot needs at least one draw, got {draws}")
    summaries = {}
    for k in shots:
        results, short = [], {}
        for d in range(draws):
            split = fewshot_draw(train_items, labels["train"], k, d)
            if len(split.rest) == 0:
                raise ValueError(f"{k}-shot leaves no train images to validate on: every class "
                                 f"has at most {k} images. Use fewer shots.")
            short = split.short_classes
            results.append(fit_support_probe(
                {"train": features["train"][split.support], "val": features["train"][split.rest],
                 "test": features["test"]},
                {"train": labels["train"][split.support], "val": labels["train"][split.rest],
                 "test": labels["test"]},
                num_classes, cfg, headline, device, progress))
        if short:
            warnings.warn(f"{k}-shot: {len(short)} classes have fewer than {k} train images and "
                          f"use all they have (class: count {short})", stacklevel=2)
        spread = aggregate_seeds([r.test for r in results])
        summaries[k] = FewShotSummary(k, spread.mean, spread.std, results, short)
    return FewShotResult(summaries)
