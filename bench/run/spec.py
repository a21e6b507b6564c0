"""What a run is: the spec a user asks for, and the resolved run whose digest is a result's identity.

``RunSpec`` holds names and overrides as typed. ``resolve`` turns it, once per process, into a
``ResolvedRun``: canonical layer and pool names, the backbone's full config and weights digest,
the task's config and split manifests, the head's full settings after defaults, the precision
policy, and the versions of the result schema and the evaluation protocol. Each result cell's
identity is a digest of exactly that, so

- the same protocol typed two ways (``--layer image --pool 16`` spelled out, or left to the
  preset's defaults) is one result, reused;
- a changed preset default, head default, protocol version or weights file is a new result,
  computed afresh; the old run stays in MLflow, marked superseded;
- a setting the user chose (``ResolvedRun.settings``: backbone, task and head arguments given,
  an explicit precision or cache dtype, ``--skip-corrupt``, ``--no-keep-features``, ``--views``)
  makes an alternative of the same cell, never a successor: only a run with the same chosen
  settings supersedes.

``RunOptions`` says how and where to run (device, batch size, workers, cache folder...): nothing in
it changes a number, so nothing in it enters an identity.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bench
from bench.errors import UsageError
from bench.precision import CACHE_DTYPES, PrecisionPolicy
from bench import protocol as protocols
from bench.protocol import HeadKind, head_kind
from bench.features.augment import TrainView, augmentation
from bench.features.images import IMAGE_READER
from bench.ranges import OPTION_RANGES, TASK_RANGES, check_ranges

if TYPE_CHECKING:
    from bench.backbone import Backbone
    from bench.task import Task

SPLITS = ("train", "val", "test")


@dataclass
class RunSpec:
    """A run as the user asked for it: registry names, overrides, head and its settings."""

    backbone: str
    task: str
    layers: list[str] = field(default_factory=list)  # empty: the backbone's default layers
    pools: list[str] = field(default_factory=list)  # empty: the head's or backbone's default
    # Explicit (layer, pool) pairs instead of layers x pools (a paper's cells are no cross
    # product); "" for the backbone's default layers or the default pool. Identities are per
    # cell, so a pair given here is the same result as that layer and pool given as lists.
    features: list[tuple[str, str]] = field(default_factory=list)
    head: str = "linear"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    task_args: dict[str, Any] = field(default_factory=dict)
    head_args: dict[str, Any] = field(default_factory=dict)  # settings of the head (epochs, lrs...)
    seed: int = 0
    precision: str = "auto"
    skip_corrupt: bool = False  # leave unreadable images out (recorded) instead of stopping
    cache_dtype: str = "auto"  # the cached features' type (auto: the precision policy's storage)
    keep_features: bool = True  # False: the job deletes its cache entries once its cells are logged
    # augmented train views (``--views``): epoch e of an epoch-trained head reads view e mod
    # ``views`` of the train split, drawn by the augmentation ``augment`` from ``seed``
    # (``bench.features.augment``); val and test stay one centre view. 1: today's one view.
    views: int = 1
    augment: str = "paper"
    # how the head is trained (bench.protocol.RECIPES): "bench", each head's own grid selected on
    # val; "paper", the settings the head's kind declares for the paper's recipe
    recipe: str = protocols.DEFAULT_RECIPE
    # heads trained through the frozen backbone (``--online``, ``bench.run.online``): epoch e
    # trains on view e of each train image (``augment``), no train features cached
    online: bool = False


@dataclass
class RunOptions:
    """How and where a run executes; never part of a result's identity."""

    device: str = "auto"
    batch_size: int = 64
    workers: int = 2
    shard_size: int = 4096
    cache_dir: str | None = None
    progress: bool = True
    force: bool = False  # recompute cells that already have a finished result
    suite: str = "bench"  # the MLflow experiment
    tracking_uri: str | None = None  # passed explicitly so SLURM jobs log where the driver reads
    experiment_id: str | None = None
    compile: bool = False  # torch.compile the backbone's truncated forward (the same features)
    decode: str = "cpu"  # "gpu": JPEG files decoded with nvJPEG on the device (bench.features.pipeline)
    # bytes of features a probe holds at once ("auto": a fraction of free RAM, or of free GPU
    # memory on CUDA; None: no limit): the same numbers whatever it is (bench.heads.streaming)
    memory_budget: int | str | None = "auto"

    def __post_init__(self) -> None:
        check_ranges({n: getattr(self, n) for n in OPTION_RANGES}, OPTION_RANGES, "option",
                     {n: "--" + n.replace("_", "-") for n in OPTION_RANGES})
        if not isinstance(self.suite, str) or not self.suite.strip():
            raise UsageError(f"suite {self.suite!r}: name the MLflow experiment (--suite NAME)")


@dataclass(frozen=True)
class ResolvedCell:
    """One result: the (canonical layer, pool) features a head reads, and its identity."""

    features: tuple[tuple[str, str], ...]
    identity: str

    @property
    def layer(self) -> str:
        return "+".join(layer for layer, _ in self.features)

    @property
    def pool(self) -> str:
        return self.features[0][1]


@dataclass
class ResolvedRun:
    """Everything that makes a run's numbers what they are, with every default filled in."""

    spec: RunSpec
    backbone_config: dict[str, Any]
    weights_sha256: str
    task_config: dict[str, Any]
    headline: str
    num_classes: int
    split_manifests: dict[str, str]
    head_config: dict[str, Any]
    precision: PrecisionPolicy
    requests: list[tuple[str, str]]  # every (canonical layer, pool) to extract
    groups: list[list[str]] | None  # fusing heads: the backbone's grouping of the layers
    cells: list[ResolvedCell]
    result_schema: str
    protocol_version: str
    bench_version: str = bench.__version__
    variant: str = ""  # the head kind's name for this configuration (e.g. "5-shot"), or ""
    settings: dict[str, Any] = field(default_factory=dict)  # what the user chose (user_settings)

    def protocol(self, cell: ResolvedCell) -> dict[str, Any]:
        """The resolved protocol of one cell: what its identity digests, logged with its run."""
        return {
            "result_schema": self.result_schema,
            "protocol_version": self.protocol_version,
            "bench_version": self.bench_version,
            "backbone": self.backbone_config,
            "weights_sha256": self.weights_sha256,
            "task": self.task_config,
            "split_manifests": self.split_manifests,
            "features": [list(f) for f in cell.features],
            "head": self.head_config,
            "groups": self.groups,
            "precision": self.precision.as_dict(),
            "skip_corrupt": self.spec.skip_corrupt,
            "image_reader": IMAGE_READER,
            # only when not kept, so that every identity from before the flag stays the same
            **({} if self.spec.keep_features else {"features_kept": False}),
            **({} if self.spec.views == 1 else {"views": views_protocol(self.spec)}),
            **({} if self.spec.recipe == protocols.DEFAULT_RECIPE else
               {"recipe": self.spec.recipe}),
            **({"online": online_protocol(self.spec)} if self.spec.online else {}),
        }

    @property
    def parts(self) -> list[Part]:
        """What is extracted, in order: each train view (one, the centre view, unless
        ``--views``), then val and test."""
        spec = self.spec
        if spec.online:  # train is never cached: each epoch's view goes through the backbone
            return [Part("val"), Part("test")]
        if spec.views == 1:
            return [Part(split) for split in SPLITS]
        train = [Part("train", TrainView(spec.augment, v, spec.seed)) for v in range(spec.views)]
        return [*train, Part("val"), Part("test")]

    def run_name(self, cell: ResolvedCell) -> str:
        name = f"{self.spec.backbone}/{self.spec.task}/{cell.layer}/{cell.pool}/{self.spec.head}"
        return f"{name}/{self.variant}" if self.variant else name


@dataclass(frozen=True)
class Part:
    """One extraction of a run: a split's centre view, or one augmented view of train."""

    split: str
    view: TrainView | None = None

    @property
    def name(self) -> str:
        """The split's name, or ``train view V``: how reports, costs and records name it."""
        return self.split if self.view is None else f"{self.split} view {self.view.view}"


def views_protocol(spec: RunSpec) -> dict[str, Any]:
    """What the resolved protocol records of ``--views`` (above one view)."""
    return {"count": spec.views, "augmentation": spec.augment,
            "description": augmentation(spec.augment).description}


def online_protocol(spec: RunSpec) -> dict[str, Any]:
    """What the resolved protocol records of ``--online``: the augmentation of its views."""
    return {"augmentation": spec.augment, "description": augmentation(spec.augment).description}


def check_online(spec: RunSpec) -> None:
    """``--online`` only for a head that can train through the backbone (``HeadKind.online``),
    and not with ``--views`` (an online run draws a fresh view every epoch)."""
    if not spec.online:
        if head_kind(spec.head).online_only:
            raise UsageError(f"head {spec.head} trains through the frozen backbone: add --online")
        return
    if not head_kind(spec.head).online:
        raise UsageError(f"head {spec.head} needs cached features; drop --online")
    if spec.views != 1:
        raise UsageError(f"--online trains epoch e on view e of each image; drop --views "
                         f"{spec.views}")


def check_views(spec: RunSpec) -> None:
    """``views`` a whole number from 1, ``augment`` a registered augmentation, and more than
    one view only for a head that trains by epochs on them (``HeadKind.views``)."""
    views = spec.views
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise UsageError(f"views {views!r}: give a whole number of train views from 1 "
                         "(--views V; 1: the centre view only)")
    augmentation(spec.augment)  # an unknown name: a one-line error naming the others
    if views > 1 and not head_kind(spec.head).views:
        takes = ", ".join(k.name for k in protocols.head_kinds() if k.views)
        raise UsageError(f"head {spec.head!r} fits on one fixed set of features and cannot "
                         f"train on {views} augmented views; --views applies to {takes}")


@dataclass
class Prepared:
    """A resolved run with the objects it was resolved from: built once per process, used to run."""

    run: ResolvedRun
    backbone: Backbone
    task: Task
    device: Any  # torch.device


def build_task(spec: RunSpec) -> Task:
    """The task, its data checked cheaply (layout, counts) before any model is built."""
    from bench.registry import tasks
    from bench.task import check_classes, problems_error

    check_task_args(spec)
    task = tasks.create(spec.task, **spec.task_args)
    problems = task.verify(full=False)
    if problems:
        raise problems_error(spec.task, [f"task {spec.task!r}: {problems[0]}", *problems[1:]])
    for note in check_classes(task):  # fewer than two classes: refused here
        if note not in _NOTED:
            _NOTED.add(note)
            print(f"note: {note}", file=sys.stderr, flush=True)
    return task


_NOTED: set[str] = set()  # notes said once a process


def resolve(spec: RunSpec, options: RunOptions, backbone: Backbone | None = None) -> Prepared:
    """Resolve ``spec`` (building the task and, unless given, the backbone: once per process)."""
    from bench.digest import RESULT_SCHEMA, json_digest
    from bench.precision import resolve_device, resolve_precision, with_cache_dtype
    from bench.registry import backbones

    kind = head_kind(spec.head)
    head_settings = head_config(spec)  # bad settings fail first
    check_views(spec)
    check_online(spec)
    device = resolve_device(options.device)
    policy = with_cache_dtype(resolve_precision(spec.precision, device.type), spec.cache_dtype)
    task = build_task(spec)
    backbones.entry(spec.backbone)  # unknown names fail before any model is built
    if backbone is None:
        backbone = backbones.create(spec.backbone, **spec.backbone_args)
    requests = checked_requests(spec, backbone)
    policy = _kept_by_storage(spec, backbone, task, requests, policy, device)
    layers = [layer for layer, _ in requests]
    kind.check_backbone(backbone, list(dict.fromkeys(layers)))
    groups = None
    if kind.fuses_layers:
        groups = backbone.layer_groups(list(dict.fromkeys(layers)))
    splits = {s: task.split(s) for s in SPLITS}
    run = ResolvedRun(
        spec=spec,
        backbone_config=backbone.config,
        weights_sha256=backbone.weights_digest(),
        task_config=task.identity,
        headline=task.headline_metric,
        num_classes=task.num_classes,
        split_manifests={s: split.manifest_digest() for s, split in splits.items()},
        head_config=_settings(head_settings),
        precision=policy,
        requests=requests,
        groups=groups,
        cells=[],
        result_schema=RESULT_SCHEMA,
        protocol_version=protocols.PROTOCOL_VERSION,
        variant=kind.variant(head_settings),
        settings=user_settings(spec, head_settings, task.identity_excludes),
    )
    for features in _cell_features(kind, requests):
        draft = ResolvedCell(features, "")
        run.cells.append(ResolvedCell(features, json_digest(run.protocol(draft))[:32]))
    return Prepared(run, backbone, task, device)


def _kept_by_storage(spec: RunSpec, backbone: Backbone, task: Task,
                     requests: list[tuple[str, str]], policy: PrecisionPolicy,
                     device: Any) -> PrecisionPolicy:
    """The policy whose 16-bit types hold the backbone's features of the calibration images
    (``bench.features.extract.checked_storage``): float32 where the policy's own would lose them,
    a refusal where the user chose it (``--cache-dtype``)."""
    from bench.features.extract import checked_storage

    return checked_storage(backbone, task.split("train"), requests, policy, device=device,
                           skip_corrupt=spec.skip_corrupt,
                           chosen=spec.cache_dtype != "auto").policy


def feature_requests(spec: RunSpec, backbone: Backbone) -> list[tuple[str, str]]:
    """Every (canonical layer, pool) of ``spec``: its ``features``, else layers x pools, with the
    backbone's default layers and the head's (else the backbone's) default pool where none is
    given."""
    kind = head_kind(spec.head)
    default_pool = kind.default_pool or backbone.default_pool

    def layers(given: list[str]) -> list[str]:
        return [backbone.canonical_layer(layer) for layer in given] or list(
            backbone.default_layers)

    if spec.features:
        if spec.layers or spec.pools:
            raise UsageError("a run spec gives features or layers and pools, not both")
        pairs = [(layer, pool or default_pool) for given, pool in spec.features
                 for layer in layers([given] if given else [])]
    else:
        pairs = [(layer, pool) for layer in layers(spec.layers)
                 for pool in (spec.pools or [default_pool])]
    return list(dict.fromkeys(pairs))


def checked_requests(spec: RunSpec, backbone: Backbone) -> list[tuple[str, str]]:
    """``feature_requests``, each checked against the backbone and the head (a layer it lacks, a
    pool that does not apply): before anything is extracted."""
    from bench.backbone import check_pool

    kind = head_kind(spec.head)
    requests = feature_requests(spec, backbone)
    for layer, pool in requests:
        point = backbone.feature_point(layer)
        check_pool(point, pool)
        if not kind.accepts(point, pool):
            raise UsageError(f"head {spec.head!r} cannot read pool {pool!r} of layer {layer!r} "
                             f"({point.kind}): it needs {kind.requirement()}")
    return requests


def _cell_features(kind: HeadKind, requests: list[tuple[str, str]]) -> list[tuple]:
    """One cell per request, or, for a fusing head, one per pool holding all its layers."""
    if not kind.fuses_layers:
        return [(request,) for request in requests]
    pools = list(dict.fromkeys(pool for _, pool in requests))
    return [tuple(r for r in requests if r[1] == pool) for pool in pools]


def user_settings(spec: RunSpec, head_settings: Any,
                  task_excludes: tuple[str, ...] = ("root",)) -> dict[str, Any]:
    """The settings the user chose, as resolved (``--lrs 1e-2`` and ``lrs=[0.01]`` agree):
    backbone and task arguments given (those the task leaves out of its identity aside,
    ``Task.identity_excludes``: where the data is, what ``verify`` expects; the split manifests
    say what it is), the head settings given (those naming the cell aside,
    ``HeadKind.cell_settings``: few-shot's shots), an explicit precision or cache dtype,
    ``--skip-corrupt``, ``--no-keep-features``, ``--views`` above one and a recipe other than
    ``bench`` (the settings it fixes are the recipe's, not chosen one by one). Defaults are not
    in it, so a changed default supersedes; a run choosing otherwise is an alternative of the
    same cell."""
    head = _settings(head_settings)
    kind = head_kind(spec.head)
    fixed = protocols.recipe_settings(kind, spec.recipe)
    chosen = {
        "recipe": spec.recipe if spec.recipe != protocols.DEFAULT_RECIPE else None,
        "backbone_args": dict(spec.backbone_args),
        "task_args": {k: v for k, v in spec.task_args.items() if k not in task_excludes},
        "head": {k: head.get(k, v) for k, v in spec.head_args.items()
                 if k not in kind.cell_settings and k not in fixed},
        "precision": spec.precision if spec.precision != "auto" else None,
        "skip_corrupt": spec.skip_corrupt or None,
        "cache_dtype": spec.cache_dtype if spec.cache_dtype != "auto" else None,
        "no_keep_features": not spec.keep_features or None,
        "views": {"count": spec.views, "augmentation": spec.augment} if spec.views > 1 else None,
        "online": {"augmentation": spec.augment} if spec.online else None,
    }
    return {k: v for k, v in chosen.items() if v}


def _settings(config: Any) -> dict[str, Any]:
    """The head's settings as its identity digests them: lists for tuples, and a setting added
    later (``bench.ranges.setting(when_set=True)``) only where it is not its default."""
    from dataclasses import asdict, fields

    added = {f.name: f.default for f in fields(config) if f.metadata.get("when_set")}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()
            if k not in added or v != added[k]}


def check_spec(spec: RunSpec) -> None:
    """Cheap checks needing no model or data (names, head settings): a driver runs these before
    submitting anything."""
    from bench.registry import backbones, tasks

    backbones.entry(spec.backbone)
    tasks.entry(spec.task)
    check_task_args(spec)
    head_config(spec)
    check_views(spec)
    check_online(spec)
    if spec.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"precision {spec.precision!r}: use auto, fp32, bf16 or fp16")
    if spec.cache_dtype not in CACHE_DTYPES:
        raise UsageError(f"cache dtype {spec.cache_dtype!r}: use {', '.join(CACHE_DTYPES)}")


def head_config(spec: RunSpec) -> Any:
    """The head's settings with the recipe's (``bench.protocol.apply_recipe``: a head without
    it, or a setting given otherwise, is refused) and defaults filled in, every number checked
    against the range its kind declares (``HeadKind.make_config``)."""
    kind = head_kind(spec.head)
    return kind.make_config(protocols.apply_recipe(kind, spec.recipe, spec.head_args), spec.seed)


def check_task_args(spec: RunSpec) -> None:
    from bench.features.images import max_image_pixels

    check_ranges(spec.task_args, TASK_RANGES, f"task {spec.task!r}:")
    max_image_pixels()  # $BENCH_MAX_IMAGE_PIXELS, checked before any image is decoded
