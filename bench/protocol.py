"""The one evaluation protocol every head follows: select on validation, retrain, test once.

1. ``trainer.search(data)`` trains every point of the head's hyperparameter grid on train and
   scores each on val (at several epoch checkpoints where the head trains by epochs);
2. the point with the best validation score (the task's headline metric; the first maximum, so
   the choice is deterministic) is selected;
3. ``trainer.refit_predict(data, point)`` retrains that point on train+val, identically, and
   returns its test logits: test is touched exactly once.

A head is a registered ``HeadKind`` (``register_head``; built-ins in ``bench.heads.kinds``, others from
the entry-point group ``bench.heads``): its settings dataclass (each field with its range), its
trainer, what it reads (pooled vectors or lightly pooled maps, ``accepts``), whether it fuses all
layers of a pool into one result, its command-line options, its memory plan and its cost
(``bench.heads.memory``). Adding a protocol is one file: a trainer, its settings and one
registered kind; no engine module changes.

Every metric and prediction comes from one ``bench.metrics.Predictions`` per evaluation (one tie
rule: the lower class id wins); selections at an end of the grid are reported (``grid_edges``).

``PROTOCOL_VERSION`` is part of every result's identity (``bench.run.spec``): bump it whenever a
change to this module or to a trainer changes the numbers a given configuration produces.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bench.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

from bench.metrics import TOP, Predictions
from bench.registry import Registry

# 2: the one protocol (select on val, refit on train+val, test once); 1 was never written
# 3: the linear grid's AdamW in place, bf16 GEMMs under the bf16 policy, checkpoints every 5 epochs
# 4: one tie rule, halving never cuts ties nor before epochs/4, few-shot L2 + SGD
# 5: halving never drops a point within one binomial standard error of the best on val
# 6: successive halving is the linear grid's default; AdamW's weight update by torch's fused kernel
# 7: minibatches in bench.heads.streaming's block-and-window order; statistics in float64 chunks
# 8: scale-free standardisation (no epsilon; constant dimensions 0; shifted float64 sums), the
#    BatchNorm and attention-LayerNorm epsilons relative to the features' scale, and the linear
#    and mlp grids centred where standardised features select (lr 3e-4..3 x wd 0..10, decades)
PROTOCOL_VERSION = "8"


@dataclass
class ProbeData:
    """Features and labels of train, val and test. Features are (N, D) arrays for vector heads,
    or {layer: (N, C, h, w) array} for map heads (memory-mapped cache shards stay on disk).
    ``memory_budget``: the bytes of features a head may hold at once (None: no limit); beyond
    it a head streams them from the cache (``bench.heads.streaming``)."""

    features: dict[str, Any]
    labels: dict[str, np.ndarray]
    num_classes: int
    train_items: list[Any] | None = None  # names of the train rows (few-shot draws need them)
    headline: str = "top1"  # the selection metric (successive halving ranks by it too)
    memory_budget: int | None = None
    # ``--views`` V >= 2: the train features of each augmented view, in the order and with the
    # labels of ``features["train"]`` (view 0); epoch e reads view e mod V. Empty: one view.
    views: list[Any] = field(default_factory=list)

    @property
    def view_count(self) -> int:
        return max(1, len(self.views))

    def split_features(self, split: str, view: int = 0) -> Any:
        """The features of ``split``; of train, those of view ``view`` (mod the views)."""
        if split == "train" and self.views:
            return self.views[view % len(self.views)]
        return self.features[split]


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
    predictions: Predictions  # per test image: top-5 class ids and label; every test number's source
    grid: list[dict[str, float]] = field(default_factory=list)  # every point's val metrics
    edge: list[str] = field(default_factory=list)  # grid axes whose selected value is at an end

    @functools.cached_property
    def confusion(self) -> np.ndarray:
        """Test confusion matrix (true x predicted)."""
        return self.predictions.confusion()

    @functools.cached_property
    def per_class(self) -> np.ndarray:
        """Test accuracy per class, in percent."""
        return self.predictions.per_class()


def top_classes(scores: torch.Tensor, k: int = TOP) -> torch.Tensor:
    """(..., min(k, C)) the best classes of (..., C) scores, best first; among equal scores the
    lower class id first (``bench.metrics``' tie rule). ``topk`` where no scores tie near the top,
    a stable sort for the rows where they do."""
    import torch

    k = min(k, scores.shape[-1])
    m = min(k + 1, scores.shape[-1])
    values, index = scores.topk(m, dim=-1)
    tied = (values[..., 1:] == values[..., :-1]).any(-1)
    if bool(tied.any()):
        index[tied] = torch.sort(scores[tied], dim=-1, descending=True, stable=True).indices[:, :m]
    return index[..., :k]


def grid_predictions(logits: torch.Tensor, labels: Any, num_classes: int) -> list[Predictions]:
    """The ``Predictions`` of each head's scores in (G, N, C): one tie rule for selection, test
    and artifacts; the best classes of all heads are found together (one ``top_classes`` call:
    a grid's validation pass scores G heads)."""
    return top_predictions(top_classes(logits.float()), labels, num_classes)


def top_predictions(top: torch.Tensor, labels: Any, num_classes: int) -> list[Predictions]:
    """The ``Predictions`` of each head's best classes in (G, N, k) (``top_classes``' output,
    gathered chunk by chunk where a split's (G, N, C) scores would not fit in memory)."""
    import numpy as np

    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64)
    return [Predictions(head, y, num_classes) for head in top.cpu().numpy()]


def predictions(logits: torch.Tensor, labels: Any, num_classes: int) -> Predictions:
    """The ``Predictions`` of (N, C) scores."""
    return grid_predictions(logits.unsqueeze(0), labels, num_classes)[0]


def metrics(logits: torch.Tensor, labels: Any, num_classes: int) -> dict[str, float]:
    """Every registered metric (``bench.metrics``) of (N, C) scores, in percent."""
    return predictions(logits, labels, num_classes).metrics()


def grid_metrics(logits: torch.Tensor, labels: Any, num_classes: int) -> list[dict[str, float]]:
    """``metrics`` of each head's scores in (G, N, C)."""
    return [p.metrics() for p in grid_predictions(logits, labels, num_classes)]


def checkpoints(epochs: int, eval_every: int) -> list[int]:
    """Epochs at which validation is scored: every ``eval_every``, and the last."""
    return sorted(set(range(eval_every, epochs + 1, eval_every)) | {epochs})


def evaluate(trainer: Trainer, data: ProbeData, headline: str = "top1",
             widen: Callable[[str], str] | None = None) -> ProbeResult:
    """Select on val, retrain the winner on train+val, test once. ``widen``: the flag that
    widens each grid axis (``HeadKind.widen``), named in the grid-edge hints."""
    import numpy as np

    from bench.metrics import names

    check_classes(data)
    data = dataclasses.replace(data, headline=headline)
    records = trainer.search(data)
    if not records:
        raise RuntimeError("the trainer's search returned no grid point")
    best = records[int(np.argmax([r[headline] for r in records]))]  # first maximum
    metric_names = set(names())
    point = {k: v for k, v in best.items() if k not in metric_names}
    logits = trainer.refit_predict(data, point).float().cpu()
    test = predictions(logits, data.labels["test"], data.num_classes)
    return ProbeResult(best=point, val={k: v for k, v in best.items() if k in metric_names},
                       test=test.metrics(), predictions=test, grid=records,
                       edge=grid_edges(records, point, metric_names, widen))


def check_classes(data: ProbeData) -> None:
    """Refuse, before any training, labels whose scores would say nothing: fewer than two
    classes, or a split holding fewer than two of them (every score on it would be perfect)."""
    import numpy as np

    if data.num_classes < 2:
        raise UsageError(f"{data.num_classes} class{'' if data.num_classes == 1 else 'es'}: "
                         "a classification task needs at least 2 (every score would be perfect)")
    for split, labels in data.labels.items():
        present = np.unique(np.asarray(labels))
        if len(present) < 2:
            raise UsageError(f"the {split} split holds images of {len(present)} class "
                             f"({', '.join(map(str, present.tolist()))}) only: every score on it "
                             "would be perfect; each split needs at least two classes")


def grid_edges(records: list[dict[str, float]], point: dict[str, float],
               metric_names: set[str], widen: Callable[[str], str] | None = None) -> list[str]:
    """The axes whose selected value is the smallest or largest the grid tried, each with the
    wider range to try (and, with ``widen``, the flag that widens it). A lower end with nothing
    below it (0, or 1 for a count) is no edge; ``epochs`` (the training length, scored at
    checkpoints) is not a searched axis here."""
    out = []
    for axis, value in point.items():
        if axis == "epochs" or axis in metric_names:
            continue
        values = sorted({r[axis] for r in records})
        if len(values) < 2 or value not in (values[0], values[-1]):
            continue
        integer = all(float(v).is_integer() for v in values)
        if value == values[0] and (value <= 0 or (integer and value <= 1)):
            continue
        positive = [v for v in values if v > 0]
        step = (positive[-1] / positive[0]) ** (1 / max(len(positive) - 1, 1)) if len(
            positive) > 1 else 2.0
        wider = value / step if value == values[0] else value * step
        wider = round(wider) if integer else float(f"{wider:.2g}")
        end = "smallest" if value == values[0] else "largest"
        flag = widen(axis) if widen else ""
        out.append(f"{axis} {value:g} is the {end} of {values[0]:g}..{values[-1]:g}: "
                   f"try a grid reaching {wider:g}" + (f" with {flag}" if flag else ""))
    return out


@dataclass(frozen=True)
class HeadOption:
    """A command-line option of a head (``bench run``, ``bench sweep``): ``flag`` sets the
    head's setting ``setting``, ``parse`` reads its text (a ValueError names what is wrong)."""

    flag: str  # "--lrs"
    setting: str  # "lrs"
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None


@dataclass(frozen=True)
class HeadCost:
    """What a head holds while it runs, known before extraction: its features within the
    memory budget (``plan``, a ``bench.heads.memory.MemoryPlan``; None where the head declares
    none) and its own state (bytes and how they were counted; None: not estimated)."""

    plan: Any
    state: int | None
    formula: str = ""


@dataclass(frozen=True)
class HeadKind:
    """One protocol: its settings (a dataclass whose fields declare their ranges,
    ``bench.ranges.setting``), its trainer, what features it reads, its command-line options,
    its memory plan and its cost. The engine asks the kind; adding a head edits no engine file.

    Subclass to change what the engine asks of a head: ``accepts`` (which pooled features it
    reads, checked before anything is extracted), ``variant`` (a result's name suffix and
    leaderboard column, e.g. ``5-shot``), ``expand`` (one run per value of a list-valued
    setting) and ``default_seeds``.
    """

    name: str
    description: str
    config: Any  # the settings dataclass, or "module:Class" (imported when used)
    trainer: Any  # class taking (config, device, precision, progress, groups), or "module:Class"
    inputs: str  # "vectors" (pooled features) or "maps" (pool mapN, read from disk per batch)
    family: str = ""  # the leaderboard's --protocol it ranks under (default: its name)
    default_pool: str | None = None  # None: the backbone's default pool
    fuses_layers: bool = False  # one result over all layers of a pool (DifFormer)
    options: tuple[HeadOption, ...] = ()  # its command-line options (``bench run --help``)
    # grid axis of its records (e.g. "lr") -> the setting listing its values ("lrs"): what a
    # grid-edge hint tells the user to widen
    axes: dict[str, str] = field(default_factory=dict)
    # (config, bench.heads.memory.Inputs, budget) -> MemoryPlan, or "module:function": how it
    # reads its features within --memory-budget (None: not declared, nothing estimated)
    memory: Any = None
    # (config, Inputs) -> (bytes, how counted), or "module:function": its own state (weights,
    # optimizer moments...) in the cost estimate (None: not estimated)
    state: Any = None
    cell_settings: tuple[str, ...] = ()  # settings that name the cell (its variant): not a choice
    default_seeds: int = 1  # runs (seeds 0..n-1) when none are asked for
    # whether it trains by epochs on augmented train views (``--views``: ``ProbeData.views``);
    # a head fitting one fixed set of features refuses more than one view
    views: bool = False
    # whether it can train through the frozen backbone (``--online``: ``bench.run.online``,
    # the grid probe's trainer); a head needing cached features refuses it
    online: bool = False
    # whether it trains only through the frozen backbone (refused without ``--online``); its
    # trainer then takes the run's source and task (``attach``, ``bench.run.online``)
    online_only: bool = False
    # recipe name -> the settings it fixes for this head (``RECIPES``; ``bench`` fixes none): a
    # recipe this head does not list is refused (``recipe_settings``)
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def flags(self) -> dict[str, str]:
        """CLI flag -> the setting it sets."""
        return {option.flag: option.setting for option in self.options}

    def config_class(self) -> type:
        return _load(self.config)

    def make_config(self, settings: dict[str, Any], seed: int) -> Any:
        """The head's settings with defaults filled in; unknown names, and numbers outside the
        ranges its settings declare (``bench.ranges.setting``), are a UsageError naming the
        setting and the flag that sets it."""
        from bench.ranges import check_ranges, settings_ranges

        cls = self.config_class()
        names = {f.name for f in dataclasses.fields(cls)} - {"head", "seed"}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise UsageError(f"head {self.name!r} has no setting {', '.join(unknown)}; its settings:"
                             f" {', '.join(sorted(names))}")
        ranges, what = settings_ranges(cls), f"head {self.name!r}:"
        flags = {setting: flag for flag, setting in self.flags.items()}
        check_ranges(settings, ranges, what, flags)
        try:
            config = cls(head=self.name, seed=seed, **settings)
        except (TypeError, ValueError) as e:
            raise UsageError(f"head {self.name!r}: {e}") from e
        check_ranges({f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                     ranges, what, flags)
        return config

    def make_trainer(self, config: Any, device: Any, precision: Any, progress: bool,
                     groups: list[list[str]] | None = None) -> Trainer:
        return _load(self.trainer)(config, device, precision, progress, groups)

    def cost(self, config: Any, inputs: Any, budget: int | None) -> HeadCost:
        """Its memory plan for ``inputs`` (``bench.heads.memory.Inputs``) within ``budget``
        bytes (None: no limit) and its state; a budget below one step of its plan is the plan's
        ``MemoryBudgetError``, raised here: before anything is extracted."""
        plan = _load(self.memory)(config, inputs, budget) if self.memory else None
        state, formula = _load(self.state)(config, inputs) if self.state else (None, "")
        return HeadCost(plan, state, formula)

    def widen(self, axis: str) -> str:
        """How a user widens the grid axis ``axis``: its flag, or ``--probe-arg SETTING=[...]``
        ("" for an axis the kind does not name)."""
        setting = self.axes.get(axis)
        if setting is None:
            return ""
        flag = next((o.flag for o in self.options if o.setting == setting), None)
        return flag or f"--probe-arg {setting}=[...]"

    def accepts(self, point: Any, pool: str) -> bool:
        """Whether ``pool`` of feature point ``point`` (``bench.backbone.FeaturePoint``) gives
        what this head reads: (C, h, w) maps (``mapN`` of a map) or one vector per image."""
        from bench.points import Pool

        parsed = Pool.parse(pool)
        maps = point.kind == "map" and parsed.keeps_map
        if self.inputs == "maps":
            return maps
        return not maps and parsed.form != "tokens"

    def requirement(self) -> str:
        """What ``accepts`` asks for, said to a user."""
        return ("(C, h, w) maps: a map layer with pool mapN (e.g. map16)" if self.inputs == "maps"
                else "one vector per image: a pool such as 1, 2, cls, mean or none (not mapN or "
                "tokens)")

    def check_backbone(self, backbone: Any, layers: list[str]) -> None:
        """Refuse (a UsageError), before any extraction, a backbone this head cannot use."""

    def variant(self, config: Any) -> str:
        """The name of this configuration's variant ("" for none): appended to the run name
        and to the task in the leaderboard's column, and part of the record's slot."""
        return ""

    def expand(self, settings: dict[str, Any]) -> list[dict[str, Any]]:
        """The settings of each run one request stands for (a list-valued setting: one each)."""
        return [settings]

    def leaderboard_family(self) -> str:
        return self.family or self.name


def _load(path: Any) -> Any:
    if not isinstance(path, str):
        return path
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _head_kind(given: Any) -> Any:
    """A ``HeadKind`` subclass as its no-argument instance (anything else as it is); a head whose
    ``inputs`` is neither 'vectors' nor 'maps' is refused."""
    kind = given() if isinstance(given, type) and issubclass(given, HeadKind) else given
    if isinstance(kind, HeadKind) and kind.inputs not in ("vectors", "maps"):
        raise TypeError(f"head {kind.name!r}: inputs must be 'vectors' or 'maps'")
    return kind


# The entry points of the group ``bench.heads``: this project's (its built-in kinds, pyproject's
# ``bench.heads.kinds:KINDS``) first, then installed packages' (a ``HeadKind``, a subclass, a
# tuple of them, or a module that registers on import). Core names no heads module.
HEADS: Registry[HeadKind] = Registry("head", HeadKind, key=lambda kind: kind.name,
                                     prepare=_head_kind)
head_names = HEADS.names
head_kind = HEADS.get
head_kinds = HEADS.values


def register_head(kind: Any) -> Any:
    """Register a head kind: a ``HeadKind`` instance, or (as a class decorator) a ``HeadKind``
    subclass whose no-argument instance is registered. Anything else is a TypeError."""
    HEADS.add(kind)
    return kind


@dataclass(frozen=True)
class Recipe:
    """How heads are trained, by name (``--recipe``). ``bench``, the default, is each head's
    own settings: a grid selected on val, retrained, tested once. Another recipe fixes settings
    per head, declared by the head's kind (``HeadKind.recipes``: a one-file head adds its own);
    a head that declares none refuses it. ``mark`` and ``footnote``: how a leaderboard marks its
    results; ``selects``: whether validation selects anything under it."""

    name: str
    description: str
    mark: str = ""
    footnote: str = ""
    selects: bool = True


DEFAULT_RECIPE = "bench"
RECIPES: Registry[Recipe] = Registry("recipe", Recipe, key=lambda recipe: recipe.name)
RECIPES.add(Recipe(DEFAULT_RECIPE, "each head's own settings: a hyperparameter grid selected on "
                   "val, the winner retrained on train+val and tested once"))
RECIPES.add(Recipe(
    "paper", "Mukhopadhyay et al. 2023's released scripts (finetune.py, scripts/linear.sh, "
    "attention.sh): SGD without momentum or weight decay, cross-entropy, StepLR(7, 0.1) per "
    "epoch, 28 epochs, batch 128, lr 1e-2 (linear, raw features) or 5e-2 (attention); one "
    "training on train+val, the model after the last epoch is tested",
    mark="§", footnote="trained with the paper's recipe (SGD without momentum or weight decay, "
    "StepLR(7, 0.1), 28 epochs, batch 128, raw features), no validation selection",
    selects=False))


def recipe_settings(kind: HeadKind, recipe: str) -> dict[str, Any]:
    """The settings ``recipe`` fixes for ``kind`` ({} for ``bench``); an unknown recipe, or one
    the head does not declare, is a one-line UsageError."""
    RECIPES.get(recipe)  # unknown: the registry's error, naming the recipes
    if recipe == DEFAULT_RECIPE:
        return {}
    if recipe not in kind.recipes:
        having = [k.name for k in HEADS.values() if recipe in k.recipes]
        raise UsageError(f"head {kind.name!r} has no {recipe!r} recipe; heads with one: "
                         f"{', '.join(having) or 'none'} (or use --recipe {DEFAULT_RECIPE})")
    return dict(kind.recipes[recipe])


def apply_recipe(kind: HeadKind, recipe: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with what ``recipe`` fixes for ``kind``; a setting given otherwise than the
    recipe fixes it is a one-line UsageError naming its flag (the same value is fine)."""
    fixed = recipe_settings(kind, recipe)
    flags = {setting: flag for flag, setting in kind.flags.items()}

    def same(a: Any, b: Any) -> bool:
        return (tuple(a) if isinstance(a, (list, tuple)) else a) == (
            tuple(b) if isinstance(b, (list, tuple)) else b)

    for name, value in settings.items():
        if name in fixed and not same(value, fixed[name]):
            given = flags.get(name) or f"--probe-arg {name}="
            raise UsageError(f"--recipe {recipe} fixes {name} = {fixed[name]!r} for head "
                             f"{kind.name!r}: drop {given}, or use --recipe {DEFAULT_RECIPE}")
    return {**settings, **fixed}


def protocols() -> dict[str, tuple[str, ...] | None]:
    """Leaderboard families (``--protocol``) -> the heads each ranks; ``all``: every head."""
    out: dict[str, tuple[str, ...] | None] = {}
    for kind in HEADS.values():
        out[kind.leaderboard_family()] = (*(out.get(kind.leaderboard_family()) or ()), kind.name)
    return out | {"all": None}
