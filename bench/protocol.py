"""The one evaluation protocol every head follows: select on validation, retrain, test once.

1. ``trainer.search(data)`` trains every point of the head's hyperparameter grid on train and
   scores each on val (at several epoch checkpoints where the head trains by epochs);
2. the point with the best validation score (the task's headline metric; the first maximum, so
   the choice is deterministic) is selected;
3. ``trainer.refit_predict(data, point)`` retrains that point on train+val, identically, and
   returns its test logits: test is touched exactly once.

A head is a ``HeadKind`` in ``HEADS``: its settings dataclass, its trainer, what it reads (pooled
vectors or lightly pooled maps) and whether it fuses all layers of a pool into one result. Adding
a protocol is one trainer class and one entry here.

``PROTOCOL_VERSION`` is part of every result's identity (``bench.spec``): bump it whenever a
change to this module or to a trainer changes the numbers a given configuration produces.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bench.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

PROTOCOL_VERSION = "3"


@dataclass
class ProbeData:
    """Features and labels of train, val and test. Features are (N, D) arrays for vector heads,
    or {layer: (N, C, h, w) array} for map heads (memory-mapped cache shards stay on disk)."""

    features: dict[str, Any]
    labels: dict[str, np.ndarray]
    num_classes: int
    train_items: list[Any] | None = None  # names of the train rows (few-shot draws need them)
    headline: str = "top1"  # the selection metric (successive halving ranks by it too)


class Trainer(Protocol):
    def search(self, data: ProbeData) -> list[dict[str, float]]:
        """Every grid point's hyperparameters and its validation metrics (one dict each)."""

    def refit_predict(self, data: ProbeData, point: dict[str, float]) -> torch.Tensor:
        """Test logits (N_test, C) of ``point`` retrained on train+val."""


@dataclass
class ProbeResult:
    best: dict[str, float]  # the selected grid point's hyperparameters
    val: dict[str, float]  # its validation metrics
    test: dict[str, float]  # the retrained head's test metrics
    per_class: np.ndarray  # test accuracy per class
    confusion: np.ndarray  # test confusion matrix (true x predicted)
    test_top5: np.ndarray  # (N_test, k<=5) predicted class ids, best first
    test_labels: np.ndarray  # (N_test,) true labels
    grid: list[dict[str, float]] = field(default_factory=list)  # every point's val metrics


METRICS = ("top1", "top5", "mean_per_class")


def metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """top1, top5, mean per-class accuracy, in percent."""
    import torch

    k = min(5, logits.shape[-1])
    topk = logits.topk(k, dim=-1).indices
    hit1 = topk[:, 0] == labels
    hit5 = (topk == labels[:, None]).any(-1)
    counts = torch.bincount(labels, minlength=num_classes).float()
    correct = torch.bincount(labels[hit1], minlength=num_classes).float()
    present = counts > 0
    return {
        "top1": 100.0 * hit1.float().mean().item(),
        "top5": 100.0 * hit5.float().mean().item(),
        "mean_per_class": 100.0 * (correct[present] / counts[present]).mean().item(),
    }


def checkpoints(epochs: int, eval_every: int) -> list[int]:
    """Epochs at which validation is scored: every ``eval_every``, and the last."""
    return sorted(set(range(eval_every, epochs + 1, eval_every)) | {epochs})


def evaluate(trainer: Trainer, data: ProbeData, headline: str = "top1") -> ProbeResult:
    """Select on val, retrain the winner on train+val, test once."""
    import numpy as np
    import torch

    data = dataclasses.replace(data, headline=headline)
    records = trainer.search(data)
    if not records:
        raise RuntimeError("the trainer's search returned no grid point")
    best = records[int(np.argmax([r[headline] for r in records]))]  # first maximum
    point = {k: v for k, v in best.items() if k not in METRICS}
    logits = trainer.refit_predict(data, point).float().cpu()
    labels = torch.as_tensor(np.asarray(data.labels["test"]), dtype=torch.long)
    num_classes = data.num_classes
    predicted = logits.argmax(-1).numpy()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), predicted), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = 100.0 * np.diag(confusion) / confusion.sum(1)
    return ProbeResult(
        best=point,
        val={k: best[k] for k in METRICS},
        test=metrics(logits, labels, num_classes),
        per_class=per_class,
        confusion=confusion,
        test_top5=logits.topk(min(5, logits.shape[-1]), dim=-1).indices.numpy().astype(np.int32),
        test_labels=labels.numpy(),
        grid=records,
    )


@dataclass(frozen=True)
class HeadKind:
    """One protocol: its settings (a dataclass), its trainer, and what features it reads."""

    name: str
    description: str
    config: str  # "module:Class" of the settings dataclass (imported when used)
    trainer: str  # "module:Class" taking (config, device, precision, progress, groups)
    inputs: str  # "vectors" (pooled features) or "maps" (pool mapN, read from disk per batch)
    default_pool: str | None = None  # None: the backbone's default pool
    fuses_layers: bool = False  # one result over all layers of a pool (DifFormer)
    flags: dict[str, str] = field(default_factory=dict)  # CLI flag -> settings field it sets

    def config_class(self) -> type:
        return _load(self.config)

    def make_config(self, settings: dict[str, Any], seed: int) -> Any:
        """The head's settings with defaults filled in; unknown names are a UsageError."""
        cls = self.config_class()
        names = {f.name for f in dataclasses.fields(cls)} - {"head", "seed"}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise UsageError(f"head {self.name!r} has no setting {', '.join(unknown)}; its settings:"
                             f" {', '.join(sorted(names))}")
        try:
            return cls(head=self.name, seed=seed, **settings)
        except (TypeError, ValueError) as e:
            raise UsageError(f"head {self.name!r}: {e}") from e

    def make_trainer(self, config: Any, device: Any, precision: Any, progress: bool,
                     groups: list[list[str]] | None = None) -> Trainer:
        return _load(self.trainer)(config, device, precision, progress, groups)


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


_GRID = {"--epochs": "epochs", "--lrs": "lrs", "--wds": "weight_decays"}
_NET = {"--epochs": "epochs", "--lrs": "lrs"}
HEADS: dict[str, HeadKind] = {h.name: h for h in (
    HeadKind("linear", "standardised features, Linear; AdamW lr x wd x epochs grid, batched",
             "bench.probe:ProbeConfig", "bench.probe:GridProbeTrainer", "vectors", flags=_GRID),
    HeadKind("bn-linear", "MAE's protocol: BatchNorm without affine, then Linear; batched grid",
             "bench.probe:ProbeConfig", "bench.probe:GridProbeTrainer", "vectors", flags=_GRID),
    HeadKind("mlp", "standardised features, ReLU hidden layers; batched grid",
             "bench.probe:ProbeConfig", "bench.probe:GridProbeTrainer", "vectors", flags=_GRID),
    HeadKind("attention", "the paper's attention head on lightly pooled maps (map16)",
             "bench.heads:HeadConfig", "bench.heads:AttentionTrainer", "maps", "map16",
             flags=_NET),
    HeadKind("difformer", "DifFormer: one attention head shared across timesteps, fused",
             "bench.heads:HeadConfig", "bench.heads:AttentionTrainer", "maps", "map16",
             fuses_layers=True, flags=_NET),
    HeadKind("knn", "DINOv2's weighted kNN (cosine, exp(sim/T)); k selected on val, no training",
             "bench.knn:KnnConfig", "bench.knn:KnnTrainer", "vectors"),
    HeadKind("few-shot", "linear probe on k shots per class (drawn by hash; the seed is the "
             "draw), validated on the rest of train", "bench.fewshot:FewShotConfig",
             "bench.fewshot:FewShotTrainer", "vectors", flags=_GRID),
)}


PROTOCOLS = {  # leaderboard families (--protocol) -> the heads each ranks
    "linear": ("linear", "bn-linear"),  # the linear probe, standardised or batch-normalised
    "mlp": ("mlp",),
    "attention": ("attention", "difformer"),
    "knn": ("knn",),
    "few-shot": ("few-shot",),
    "all": None,  # every head
}

def head_kind(name: str) -> HeadKind:
    if name not in HEADS:
        raise UsageError(f"unknown head {name!r}; heads: {', '.join(HEADS)}")
    return HEADS[name]
