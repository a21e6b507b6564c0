"""Few-shot linear probes: k labelled images per class, several draws per k, mean and spread.

Draws are chosen from file names alone, so every machine and every run picks the same images:
within each class, train items are sorted by sha256(f"bench-fewshot/{k}/{draw}/{item}") and the
first k are the support set (all of them, with a warning, when a class has fewer than k). The
rest of train validates the probe's hyperparameter grid (the batched grid of ``bench.heads.probe``);
features are L2-normalised (``normalisation``, see ``NORMALISATIONS``) and the grid trains with SGD
(``optimizer``); the selected head is retrained on the k shots alone (``GridProbeTrainer(refit_on="train")``) and
scored on test once, through ``bench.protocol.evaluate`` like every head. As a head
(``few-shot``), one result is one (k, draw): the draw is the run's seed, so ``--seeds`` (or
``--draws N``: seeds 0..N-1) gives the draws and their mean and spread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.errors import UsageError
from bench.precision import FP32, PrecisionPolicy
from bench.heads.memory import Inputs, MemoryPlan, Source, inputs_of
from bench.heads.probe import OPTIMIZERS, GridProbeTrainer, ProbeConfig, grid_sources, grid_state
from bench.heads.streaming import CHUNK_ROWS, chunk_moments, multiplier, unit_rows
from bench.protocol import ProbeData, ProbeResult, evaluate
from bench.ranges import COUNT, NON_NEGATIVE, POSITIVE, check_settings, setting
from bench.stats import aggregate_seeds

SHOTS = (1, 2, 4, 8, 16)
DRAWS = 5
# "l2": unit-length rows (CLIP_benchmark's convention; the default); "pool": standardised with
# the mean and variance of the whole train pool (no labels used), far better on anisotropic,
# off-centre features, 2-3 points worse on isotropic ones and digit pixels
# (docs/concepts/protocols.md);
# "support": standardised on the k shots alone (bench's old rule: k images per class cannot
# estimate a variance per dimension), kept to compare.
NORMALISATIONS = ("l2", "pool", "support")
LRS = (0.01, 0.03, 0.1, 0.3, 1.0)  # SGD's grid: on unit-length rows
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)  # SGD's decoupled decay, lr x decay < 1


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


@dataclass
class FewShotConfig:
    """Settings of the ``few-shot`` head: k shots per class, and the linear grid probe's grid."""

    head: str = "few-shot"
    shots: int = setting(5, COUNT)
    lrs: tuple[float, ...] = setting(LRS, POSITIVE)
    weight_decays: tuple[float, ...] = setting(WEIGHT_DECAYS, NON_NEGATIVE)
    epochs: int = setting(ProbeConfig.epochs, COUNT)
    eval_every: int = setting(ProbeConfig.eval_every, COUNT)
    batch_size: int = setting(ProbeConfig.batch_size, COUNT)
    normalisation: str = "l2"  # NORMALISATIONS; part of the identity like every setting
    optimizer: str = "sgd"  # bench.heads.probe.OPTIMIZERS: SGD with momentum (why: bench.heads.probe._AdamW)
    seed: int = 0  # the draw: which k images per class, and the probe's minibatch order

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise UsageError(f"few-shot needs at least 1 shot per class, got shots={self.shots}")
        if self.normalisation not in NORMALISATIONS:
            raise UsageError(f"few-shot normalisation {self.normalisation!r}: use one of "
                             f"{', '.join(NORMALISATIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"few-shot optimizer {self.optimizer!r}: use one of "
                             f"{', '.join(OPTIMIZERS)}")
        check_settings(self)
        self.probe_config()  # the grid's own checks

    def probe_config(self) -> ProbeConfig:
        return ProbeConfig(head="linear", lrs=self.lrs, weight_decays=self.weight_decays,
                           epochs=self.epochs, eval_every=self.eval_every,
                           batch_size=self.batch_size, seed=self.seed, halving=False)


class FewShotTrainer:
    """A ``bench.protocol`` trainer: the linear grid on draw ``seed``'s k-shot support of train,
    validated on the rest of train, retrained on the support alone."""

    def __init__(self, cfg: FewShotConfig, device: torch.device | str, precision: PrecisionPolicy,
                 progress: bool = False, groups=None):
        self.cfg = cfg
        self.grid = GridProbeTrainer(cfg.probe_config(), device, precision, progress,
                                     refit_on="train", standardise=cfg.normalisation == "support",
                                     optimizer=cfg.optimizer)
        self._split: tuple[int, ProbeData, FewShotDraw] | None = None  # (id of source, ...)

    def draw(self, data: ProbeData) -> FewShotDraw:
        return self._support(data)[1]

    def _support(self, data: ProbeData) -> tuple[ProbeData, FewShotDraw]:
        if self._split is None or self._split[0] != id(data):
            compute = torch.empty(0, dtype=self.grid.store).element_size()
            fewshot_memory(self.cfg, inputs_of(data, compute), data.memory_budget)  # refusals
            self._split = (id(data), *_support_data(data, self.cfg.shots, self.cfg.seed,
                                                    self.cfg.normalisation))
        return self._split[1], self._split[2]

    def search(self, data: ProbeData) -> list[dict[str, float]]:
        return self.grid.search(self._support(data)[0])

    def refit_predict(self, data: ProbeData, point: dict[str, float]) -> torch.Tensor:
        return self.grid.refit_predict(self._support(data)[0], point)


def fewshot_memory(cfg: FewShotConfig, inputs: Inputs, budget: int | None) -> MemoryPlan:
    """Few-shot's memory (``bench.heads.memory``): the train pool and test normalised in
    float32, held throughout, then the linear grid's plan (``grid_memory``) over the k-shot
    support and the rest of train, within what is left."""
    rows, dims = inputs.rows["train"] + inputs.rows["test"], inputs.dims
    copy = 4 * rows * dims
    normalised = Source("train+test normalised", copy, copy, f"{rows:,} rows x {dims:,} dims x 4 B",
                        what="normalised copy", fix="")
    support = min(cfg.shots * inputs.classes, inputs.rows["train"])
    shots = Inputs({"train": support, "val": inputs.rows["train"] - support,
                    "test": inputs.rows["test"]}, dims, 4, inputs.compute, inputs.classes)
    return MemoryPlan.of(budget, {name: [normalised, *sources] for name, sources
                                  in grid_sources(cfg.probe_config(), shots, "train").items()})


def fewshot_state(cfg: FewShotConfig, inputs: Inputs) -> tuple[int, str]:
    return grid_state(cfg.probe_config(), inputs)


def normalise(features: dict[str, Any], pool: str, how: str) -> dict[str, np.ndarray]:
    """Every split of ``features`` normalised as ``how`` says (``NORMALISATIONS``), float32:
    ``pool`` with the per-dimension mean and variance of split ``pool`` (all of its rows, labels
    unused), ``l2`` to unit rows, ``support`` left as is (the probe standardises on its train)."""
    flat = {s: np.asarray(x, dtype=np.float32).reshape(len(x), -1) for s, x in features.items()}
    if how == "pool":  # no epsilon: any scale; a dimension constant on the pool becomes 0
        reference = torch.from_numpy(flat[pool])
        mean, var = chunk_moments(reference[i : i + CHUNK_ROWS]
                                  for i in range(0, len(reference), CHUNK_ROWS))
        scale = multiplier(var)
        return {s: ((torch.from_numpy(x).double() - mean) * scale).float().numpy()
                for s, x in flat.items()}
    if how == "l2":
        return {s: unit_rows(torch.from_numpy(x)).numpy() for s, x in flat.items()}
    return flat


def _support_data(data: ProbeData, shots: int, draw: int,
                  normalisation: str = "pool") -> tuple[ProbeData, FewShotDraw]:
    """Train = the draw's support, val = the rest of train, test unchanged; all normalised."""
    features = normalise({"train": data.features["train"], "test": data.features["test"]},
                         "train", normalisation)
    x, y = features["train"], np.asarray(data.labels["train"])
    if data.train_items is None or len(data.train_items) != len(x):
        raise ValueError(f"few-shot draws need the names of the {len(x)} train rows "
                         f"(ProbeData.train_items), got "
                         f"{None if data.train_items is None else len(data.train_items)}")
    split = fewshot_draw(data.train_items, y, shots, draw)
    if len(split.rest) == 0:
        raise UsageError(f"{shots}-shot leaves no train images to validate on: every class has "
                         f"at most {shots} images. Use fewer shots.")
    if split.short_classes:
        short = split.short_classes
        warnings.warn(f"{shots}-shot: {len(short)} classes have fewer than {shots} train images "
                      f"and use all they have (class: count {short})", stacklevel=3)
    copies = sum(a.nbytes for a in features.values())  # held beside the grid (fewshot_memory)
    support = ProbeData(
        {"train": x[split.support], "val": x[split.rest], "test": features["test"]},
        {"train": y[split.support], "val": y[split.rest], "test": data.labels["test"]},
        data.num_classes,
        memory_budget=None if data.memory_budget is None else data.memory_budget - copies)
    return support, split


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



def fit_fewshot(features: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                train_items: Sequence[Any], num_classes: int, cfg: FewShotConfig | None = None,
                shots: Sequence[int] = SHOTS, draws: int = DRAWS, headline: str = "top1",
                device: torch.device | str = "cpu", progress: bool = False,
                precision: PrecisionPolicy = FP32) -> FewShotResult:
    """Probe every (k, draw) on its k-shot support, validated on the rest of train; test once each.

    ``features``/``labels`` need "train" (the pool the shots come from; ``train_items`` names its
    rows) and "test"; a "val" entry is not used. ``cfg``: the settings of every (k, draw) but
    its shots and seed (default ``FewShotConfig()``).
    """
    cfg = cfg or FewShotConfig()
    if len(train_items) != len(features["train"]):
        raise ValueError(f"train_items names {len(train_items)} items but the train features "
                         f"have {len(features['train'])} rows; pass the train split's items")
    if draws < 1:
        raise ValueError(f"few-shot needs at least one draw, got {draws}")
    summaries = {}
    data = ProbeData(features, labels, num_classes, list(train_items))
    for k in shots:
        results, short = [], {}
        for d in range(draws):
            trainer = FewShotTrainer(dataclasses.replace(cfg, shots=k, seed=d), device,
                                     precision, progress=progress)
            results.append(evaluate(trainer, data, headline))
            short = trainer.draw(data).short_classes
        spread = aggregate_seeds([r.test for r in results])
        summaries[k] = FewShotSummary(k, spread.mean, spread.std, results, short)
    return FewShotResult(summaries)
