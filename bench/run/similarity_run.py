"""A similarity matrix as a result: feature points from the cache, one MLflow run per matrix.

Rows and columns are feature points (backbone, layer, timestep, pool) of one backbone, or of a
backbone and an ``against`` one. Layers may be ranges and globs: ``block1..37@t90`` (37 points),
``block24@t0..999:25`` (40 timesteps), ``blocks.*`` (every layer of that name). Each side is
resolved like a ``bench run`` (``bench.run.spec.resolve``) and its features are read from the feature
cache: the whole split's entries when probes extracted them already, else an extraction
(``bench.features.extract``) of just the ``n`` images chosen (a seeded subset, the same on both sides).
Both sides must hold the same images in the same order, else the error names the first that
differs.

The matrix is identified like a result: a digest of its resolved protocol (both sides' backbone
configs, weights and features, the task, the images, the measure and its settings, the null and
interval settings, the precision, the protocol and schema versions). A finished matrix of that
identity is reused; a new identity in the same slot (same backbones, task, images, points,
measure) supersedes the old run, which stays in MLflow.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UsageError
from bench.points import expand_layers as expand_layer_specs
from bench.results.record import RunRecord
from bench.results.matrices import SimilarityRecord
from bench.heads.similarity import INTERVALS, Measure
from bench.run.spec import RunOptions, RunSpec

ARTIFACT = "similarity.json"


@dataclass
class Side:
    """One backbone's feature points as the user typed them."""

    backbone: str
    layers: list[str] = field(default_factory=list)  # ranges and globs allowed; empty: defaults
    pools: list[str] = field(default_factory=list)  # empty: the backbone's default pool
    backbone_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SimilaritySpec:
    """A similarity matrix as asked for; nothing in ``RunOptions`` changes its numbers."""

    side: Side
    task: str
    split: str = "val"
    n: int | None = None  # images: a seeded subset of the split (None: all)
    against: Side | None = None  # columns from another backbone (None: rows x rows)
    measure: Measure = field(default_factory=Measure)
    permutations: int = 100  # permutation null per cell (0: none)
    interval: str = "jackknife"  # jackknife | subsample | none
    interval_draws: int = 20  # jackknife groups or subsamples
    noise_draws: int = 1  # diffusion backbones: matrices at noise seeds base..base+K-1
    seed: int = 0  # the image subset, the permutations and the interval draws
    task_args: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"
    skip_corrupt: bool = False
    cache_dtype: str = "auto"  # the cached features' type (bench.precision.CACHE_DTYPES)


@dataclass
class SimilarityResult:
    identity: str
    name: str
    rows: list[dict[str, Any]]  # each point: backbone, layer, pool, d
    cols: list[dict[str, Any]]
    n: int
    values: np.ndarray
    null_mean: np.ndarray | None
    p: np.ndarray | None
    low: np.ndarray | None
    high: np.ndarray | None
    spread: np.ndarray | None  # std across noise draws
    protocol: dict[str, Any]
    run_id: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    reused: bool = False

    def to_json(self) -> bytes:
        out = {k: v.tolist() if isinstance(v, np.ndarray) else v
               for k, v in asdict(self).items() if k not in ("files", "reused", "run_id")}
        return json.dumps(out, indent=1, default=str).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> SimilarityResult:
        data = json.loads(text)
        arrays = ("values", "null_mean", "p", "low", "high", "spread")
        return cls(**{k: (np.asarray(v) if k in arrays and v is not None else v)
                      for k, v in data.items()})


def label(point: dict[str, Any]) -> str:
    return f"{point['backbone']}:{point['layer']}/{point['pool']}"


def expand_layers(backbone: Any, specs: list[str]) -> list[str]:
    """Layer specs (ranges, globs over the backbone's layers) -> layer names
    (``bench.points.expand_layers``)."""
    return expand_layer_specs(specs, lambda: [p.name for p in backbone.feature_points()],
                              backbone.name)


def _noise_seeds(backbone: Any, side: Side, draws: int) -> list[int] | None:
    """The noise seeds of ``draws`` draws for a stochastic backbone (None: deterministic)."""
    if "noise_seed" not in backbone.config:
        return None
    base = int(side.backbone_args.get("noise_seed", backbone.config["noise_seed"]))
    return [base + k for k in range(draws)]


@dataclass
class _Side:
    """One side resolved: per noise draw its prepared run; its points and kept items."""

    prepared: list[Any]  # bench.run.spec.Prepared per noise draw
    noise_seeds: list[int] | None


def _resolve_side(side: Side, spec: SimilaritySpec, options: RunOptions) -> _Side:
    from bench.registry import backbones
    from bench.run.spec import resolve

    backbones.entry(side.backbone)
    first = backbones.create(side.backbone, **side.backbone_args)
    layers = expand_layers(first, side.layers)
    seeds = _noise_seeds(first, side, spec.noise_draws) if spec.noise_draws > 1 else None
    prepared = []
    for k, seed in enumerate(seeds or [None]):
        args = side.backbone_args if seed is None else side.backbone_args | {"noise_seed": seed}
        backbone = first if k == 0 else backbones.create(side.backbone, **args)
        run_spec = RunSpec(backbone=side.backbone, task=spec.task, layers=layers,
                           pools=list(side.pools), backbone_args=args, task_args=spec.task_args,
                           precision=spec.precision, skip_corrupt=spec.skip_corrupt,
                           cache_dtype=spec.cache_dtype)
        prepared.append(resolve(run_spec, options, backbone=backbone))
    return _Side(prepared, seeds)


def _subset(length: int, n: int | None, seed: int) -> np.ndarray | None:
    """Indices of a seeded subset of n images in split order (None: the whole split)."""
    if n is None or n >= length:
        return None
    if n < 4:
        raise UsageError(f"--n {n}: a similarity needs at least 4 images")
    return np.sort(np.random.default_rng(seed).choice(length, n, replace=False))


def _features(prepared: Any, split_name: str, indices: np.ndarray | None,
              options: RunOptions) -> tuple[list[np.ndarray], list[Any]]:
    """Each request's features for the chosen images, and the items kept (corrupt ones left out).

    The whole split's cache entries serve when complete (extracted for probes already); else
    only the chosen images are extracted (their own cache entries). A diffusion backbone draws
    its noise by an image's position in the split it extracts, so its subsets always come from
    their own entries: the same images always get the same features."""
    from bench.features.cache import FeatureCache, reading
    from bench.features.extract import entry_fields, extract

    run, cache = prepared.run, FeatureCache(options.cache_dir)
    full = prepared.task.split(split_name)

    def entries_of(split: Any) -> dict[tuple[str, str], Any]:
        return {r: cache.entry(entry_fields(prepared.backbone, run.task_config, split, *r,
                                            run.precision)) for r in run.requests}

    entries = entries_of(full)
    source, rows = full, np.arange(len(full)) if indices is None else indices
    shared = indices is None or "noise_seed" not in prepared.backbone.config
    if not (shared and all(e.complete() for e in entries.values())):
        source = full if indices is None else full.subset(indices)
        entries, rows = entries_of(source), np.arange(len(source))
    with reading(entries.values()):  # no other run's --no-keep-features removes them meanwhile
        if source is not full or not all(e.complete() for e in entries.values()):
            entries = extract(prepared.backbone, source, run.requests, cache, run.task_config,
                              device=prepared.device, precision=run.precision,
                              batch_size=options.batch_size, workers=options.workers,
                              shard_size=options.shard_size, skip_corrupt=run.spec.skip_corrupt,
                              progress=options.progress, compile=options.compile,
                              decode=options.decode).entries
        opened = [entries[r].open() for r in run.requests]
        rows = rows[np.logical_and.reduce([mask[rows] for _, _, mask in opened])]
        return [np.asarray(x.take(rows)) for x, _, _ in opened], [source.items[i] for i in rows]


def check_items(rows: list[Any], cols: list[Any], names: tuple[str, str]) -> None:
    """Both sides must hold the same images in the same order; else name the first difference."""
    for i, (a, b) in enumerate(zip(rows, cols)):
        if a != b:
            raise UsageError(f"{names[0]} and {names[1]} do not hold the same images: image {i} is "
                             f"{a!r} on one side and {b!r} on the other; give both sides the same "
                             "task, split, --n and --seed")
    if len(rows) != len(cols):
        longer = rows if len(rows) > len(cols) else cols
        raise UsageError(f"{names[0]} has {len(rows)} images and {names[1]} {len(cols)}: image "
                         f"{min(len(rows), len(cols))} ({longer[min(len(rows), len(cols))]!r}) is "
                         "on one side only (an image skipped as corrupt?)")


def _points(prepared: Any, features: list[np.ndarray]) -> list[dict[str, Any]]:
    return [{"backbone": prepared.run.spec.backbone, "layer": layer, "pool": pool,
             "d": int(np.prod(x.shape[1:]))} for (layer, pool), x in zip(prepared.run.requests,
                                                                         features)]


def _protocol(spec: SimilaritySpec, sides: list[_Side], images: str, n: int) -> dict[str, Any]:
    """What the matrix's identity digests: each side's resolved protocol (as a result's, less the
    head), the images and every setting that changes a number."""
    from bench.run.spec import ResolvedCell

    out: dict[str, Any] = {"kind": "similarity", "sides": []}
    for side in sides:
        run = side.prepared[0].run
        resolved = run.protocol(ResolvedCell(tuple(run.requests), ""))
        for key in ("result_schema", "protocol_version", "bench_version", "task", "precision",
                    "skip_corrupt"):
            out[key] = resolved.pop(key)
        out["sides"].append({k: v for k, v in resolved.items()
                             if k not in ("head", "groups", "split_manifests")})
    return out | {
        "split": spec.split, "images_manifest": images, "n": n, "seed": spec.seed,
        "measure": spec.measure.settings(), "permutations": spec.permutations,
        "interval": {"method": spec.interval, "draws": spec.interval_draws, "confidence": 0.95},
        "noise_seeds": [s.noise_seeds for s in sides],
    }


def _check(spec: SimilaritySpec) -> None:
    if spec.interval not in INTERVALS:
        raise UsageError(f"interval {spec.interval!r}: use one of {', '.join(INTERVALS)}")
    if spec.permutations < 0 or spec.noise_draws < 1:
        raise UsageError("permutations must be >= 0 and noise draws >= 1")


@dataclass
class Planned:
    """A matrix resolved without computing it: its sides, images and identity."""

    sides: list[_Side]
    indices: np.ndarray | None  # the chosen images of the split (None: all)
    protocol: dict[str, Any]
    identity: str


def plan(spec: SimilaritySpec, options: RunOptions) -> Planned:
    """Resolve ``spec`` into its identity (the backbones are built, nothing is extracted): what
    finds a matrix already logged (``bench similarity``, ``bench report``)."""
    from bench.digest import json_digest
    from bench.run.spec import build_task

    _check(spec)
    build_task(RunSpec(spec.side.backbone, spec.task, task_args=spec.task_args))  # data first
    sides = [_resolve_side(spec.side, spec, options)]
    if spec.against is not None:
        sides.append(_resolve_side(spec.against, spec, options))
    if spec.noise_draws > 1 and all(s.noise_seeds is None for s in sides):
        raise UsageError("--noise-draws applies to stochastic (diffusion) backbones, whose "
                         "features depend on a noise_seed; these have none")
    split = sides[0].prepared[0].task.split(spec.split)
    indices = _subset(len(split), spec.n, spec.seed)
    images = (split if indices is None else split.subset(indices)).manifest_digest()
    n = len(split) if indices is None else len(indices)
    protocol = _protocol(spec, sides, images, n)
    return Planned(sides, indices, protocol, json_digest(protocol)[:32])


Figures = Callable[["SimilarityResult"], dict[str, bytes]]


def similarity(spec: SimilaritySpec, options: RunOptions | None = None,
               figures: Figures | None = None) -> SimilarityResult:
    """Compute (or reuse) the matrix of ``spec``, log it as one MLflow run; its result.
    ``figures``: PNGs drawn of the result, logged with it (the caller's renderer: the engine
    draws none)."""
    import torch

    from bench.heads import similarity as estimators
    from bench.precision import resolve_device
    from bench.results.matrices import find_similarity
    from bench.results.store import ensure_experiment

    options = options or RunOptions()
    started = time.time()
    planned = plan(spec, options)
    sides, indices, protocol, identity = (planned.sides, planned.indices, planned.protocol,
                                          planned.identity)
    experiment_id = options.experiment_id or ensure_experiment(options.suite)
    if not options.force:
        for found in find_similarity(experiment_id, identity):
            return logged(found)

    draws = max(len(s.prepared) for s in sides)
    device = resolve_device(options.device)
    values, kept = [], None
    for k in range(draws):
        feats, items = [], []
        for side in sides:
            prepared = side.prepared[min(k, len(side.prepared) - 1)]
            x, its = _features(prepared, spec.split, indices, options)
            check_features(prepared, x)
            feats.append((prepared, x))
            items.append(its)
        if len(items) == 2:
            check_items(items[0], items[1], (spec.side.backbone, spec.against.backbone))
        rows = estimators.as_points(feats[0][1], device)
        cols = estimators.as_points(feats[1][1], device) if len(feats) == 2 else rows
        values.append(estimators.matrix(spec.measure, rows, cols))
        if not bool(torch.isfinite(values[-1]).all()):
            _refuse_non_finite(values[-1].isfinite(), feats)
        if k == 0:
            kept = (rows, cols, feats, items[0])
    rows, cols, feats, items = kept
    observed = values[0]
    null = estimators.permutation_null(spec.measure, rows, cols, observed, spec.permutations,
                                       spec.seed) if spec.permutations else None
    ci = estimators.interval(spec.measure, rows, cols, observed, spec.interval,
                             spec.interval_draws, spec.seed)
    numpy = (lambda t: None if t is None else t.double().cpu().numpy())  # noqa: E731
    result = SimilarityResult(
        identity=identity, name=_name(spec, protocol["n"]),
        rows=_points(*feats[0]), cols=_points(*feats[-1]), n=len(items),
        values=numpy(observed), null_mean=numpy(null.mean) if null else None,
        p=numpy(null.p) if null else None, low=numpy(ci.low) if ci else None,
        high=numpy(ci.high) if ci else None,
        spread=numpy(torch.stack(values).std(0)) if draws > 1 else None, protocol=protocol)
    _log(experiment_id, spec, result, started, figures)
    return result


def check_features(prepared: Any, features: list[np.ndarray]) -> None:
    """Refuse feature points no measure can compare, before a matrix is computed: values that are
    not finite, or the same for every image (a constant point's CKA divides 0 by 0 and its
    neighbours are all ties), naming the point."""
    from bench.errors import NumericalError

    for (layer, pool), x in zip(prepared.run.requests, features):
        flat = x.reshape(len(x), -1)
        where = f"{prepared.run.spec.backbone} {layer}/{pool}"
        if not np.isfinite(flat).all():
            raise NumericalError(f"feature point {where} has values that are not finite (NaN or "
                                 "inf): no similarity is computed; check the backbone's inputs "
                                 "or use --precision fp32")
        if len(flat) and (flat == flat[0]).all():
            raise NumericalError(f"feature point {where} is the same for all {len(flat)} images "
                                 "(constant features): its similarity to anything is undefined; "
                                 "leave the point out or check what the backbone receives")


def _refuse_non_finite(finite: Any, feats: list[tuple[Any, list[np.ndarray]]]) -> None:
    """A matrix with a cell that is not finite is refused, naming the cell's two points."""
    from bench.errors import NumericalError

    bad = (~finite).nonzero()
    i, j = (int(v) for v in bad[0])
    rows, cols = _points(*feats[0]), _points(*feats[-1])
    raise NumericalError(f"the similarity of {label(rows[i])} and {label(cols[j])} is not "
                         f"finite ({len(bad)} such cells): nothing is logged; check those "
                         "points' features")


def _name(spec: SimilaritySpec, n: int) -> str:
    models = spec.side.backbone + (f" x {spec.against.backbone}" if spec.against else "")
    return f"similarity/{models}/{spec.task}:{spec.split}/n{n}/{spec.measure.name}"


class _MatrixRecord(SimilarityRecord):
    """A matrix's record: its MLflow description says what it is (a result's says "test (val)",
    which a matrix has not)."""

    def description(self) -> str:
        measure = self.head.removeprefix("similarity:")
        shape = self.layer.split(":")[0].replace("x", " x ")
        return (f"{measure}, {shape} points, n = {int(self.metrics['n'])} images, mean "
                f"{self.metrics['mean_value']:.3f}")


def _record(spec: SimilaritySpec, result: SimilarityResult, started: float) -> RunRecord:
    from bench.digest import json_digest

    points = [[p["backbone"], p["layer"], p["pool"]] for p in result.rows + result.cols]
    finite = result.values[np.isfinite(result.values)]
    metrics = {"n": float(result.n), "cells": float(result.values.size),
               "mean_value": float(finite.mean()) if finite.size else float("nan"),
               "seconds": time.time() - started}
    return _MatrixRecord(
        identity=result.identity, name=result.name,
        backbone=spec.side.backbone + (f" x {spec.against.backbone}" if spec.against else ""),
        task=f"{spec.task}:{spec.split}:n{result.protocol['n']}",
        layer=f"{len(result.rows)}x{len(result.cols)}:{json_digest(points)[:12]}",
        pool=",".join(dict.fromkeys(p["pool"] for p in result.rows + result.cols)),
        head=f"similarity:{spec.measure.name}", seed=spec.seed, headline="mean_value",
        metrics=metrics, best={}, protocol=result.protocol, start_time=started,
        weights_sha256=",".join(s["weights_sha256"] for s in result.protocol["sides"]))


def _log(experiment_id: str, spec: SimilaritySpec, result: SimilarityResult,
         started: float, figures: Figures | None) -> None:
    from bench.results.matrices import supersede_similarity
    from bench.results.runs import log_record

    record = _record(spec, result, started)
    artifacts = {ARTIFACT: result.to_json(), "protocol.json": record.protocol_json(),
                 "matrix.csv": matrix_csv(result).encode()} | (figures(result) if figures else {})
    result.files = _write_local(result.identity, artifacts)
    result.run_id = log_record(experiment_id, record, artifacts)
    supersede_similarity(experiment_id, record)


IDENTITY = re.compile(r"[0-9a-f]{32}")  # a matrix's identity: the folder of its files


def _write_local(identity: str, artifacts: dict[str, bytes]) -> dict[str, Path]:
    """The matrix's files under results/similarity/<identity>/ (the figures the CLI points to).
    The identity and the names come from a logged run: checked, never trusted as paths."""
    from bench.errors import BenchError
    from bench.paths import similarity_dir

    if not IDENTITY.fullmatch(identity):
        raise BenchError(f"similarity run with identity {identity[:80]!r}: not a bench digest; "
                         "its files are not written (a damaged or foreign run)")
    folder = similarity_dir() / identity
    files = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in artifacts.items():
            if Path(name).name != name or name in ("", ".", ".."):
                raise BenchError(f"similarity run {identity}: artifact {name[:80]!r} is not a "
                                 "file name; its files are not written")
            files[name] = folder / name
            files[name].write_bytes(content)
    except OSError as e:
        raise BenchError(f"cannot write the matrix's files to {folder}: {e.strerror or e}") from None
    return files


def logged(record: RunRecord) -> SimilarityResult:
    """The matrix of a finished similarity run, its files written under results/similarity/."""
    import os
    import tempfile

    from bench.results.store import client

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client().download_artifacts(record.run_id, "", tmp))
        artifacts = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    result = SimilarityResult.from_json(artifacts[ARTIFACT])
    if result.identity != record.identity:
        from bench.errors import BenchError

        raise BenchError(f"similarity run {record.run_id}: its {ARTIFACT} names identity "
                         f"{str(result.identity)[:80]!r}, its tag {record.identity!r}: a "
                         "damaged or foreign run; delete it or recompute with --force")
    result.files = _write_local(result.identity, artifacts)
    result.run_id, result.reused = record.run_id, True
    return result


def matrix_csv(result: SimilarityResult) -> str:
    """One line per cell: its points, value, null mean, p, 95% interval, noise-draw spread."""
    lines = ["row,col,row_d,col_d,value,null_mean,p,ci95_low,ci95_high,noise_std"]

    def cell(array: np.ndarray | None, i: int, j: int) -> str:
        return "" if array is None else f"{array[i, j]:.6f}"

    for i, r in enumerate(result.rows):
        for j, c in enumerate(result.cols):
            fields = [cell(a, i, j) for a in (result.values, result.null_mean, result.p,
                                              result.low, result.high, result.spread)]
            lines.append(",".join([f'"{label(r)}"', f'"{label(c)}"', str(r["d"]), str(c["d"]),
                                   *fields]))
    return "\n".join(lines) + "\n"


def _short(point: dict[str, Any]) -> str:
    return f"{point['layer']}/{point['pool']}"


def table(result: SimilarityResult, width: int = 10) -> str:
    """A compact text table: values (first ``width`` columns), then what the null and interval say."""
    shown = result.cols[:width]
    lines = ["".ljust(24) + " ".join(f"{_short(c)[-7:]:>7s}" for c in shown)
             + (" ..." if len(result.cols) > width else "")]
    for i, r in enumerate(result.rows[:40]):
        lines.append(f"{_short(r)[-24:]:<24s}" + " ".join(
            f"{result.values[i, j]:7.3f}" for j in range(len(shown))))
    if len(result.rows) > 40:
        lines.append(f"... {len(result.rows) - 40} more rows")
    if result.p is not None:
        lines.append(f"permutation null ({result.protocol['permutations']} permutations): mean "
                     f"{np.nanmean(result.null_mean):.3f}; cells with p <= 0.05: "
                     f"{int((result.p <= 0.05).sum())} of {result.p.size}")
    if result.low is not None:
        half = (result.high - result.low) / 2
        lines.append(f"95% interval ({result.protocol['interval']['method']}): median half-width "
                     f"{np.nanmedian(half):.3f}")
    if result.spread is not None:
        lines.append(f"noise draws {result.protocol['noise_seeds']}: median std "
                     f"{np.nanmedian(result.spread):.4f}")
    return "\n".join(lines)


SETTINGS = ("backbone", "task", "split", "n", "layers", "pools", "backbone_args",
            "against", "against_layers", "against_pools", "against_args", "measure", "k",
            "rbf_threshold", "batch", "permutations", "interval", "interval_draws",
            "noise_draws", "seed", "task_args", "precision", "skip_corrupt", "cache_dtype")


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                            for v in value)


def _integer(low: int) -> Any:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


_TYPES: dict[str, tuple[Any, str]] = {  # setting -> (check, what it must be)
    "backbone": (lambda v: isinstance(v, str) and v != "", "a backbone preset name"),
    "against": (lambda v: isinstance(v, str) and v != "", "a backbone preset name"),
    "task": (lambda v: isinstance(v, str) and v != "", "a task name"),
    "split": (lambda v: v in ("train", "val", "test"), "train, val or test"),
    "n": (_integer(4), "an integer >= 4 (images)"),
    "layers": (_texts, "a list of layer specs"),
    "pools": (_texts, "a list of pools"),
    "against_layers": (_texts, "a list of layer specs"),
    "against_pools": (_texts, "a list of pools"),
    "backbone_args": (lambda v: isinstance(v, dict), "a mapping of arguments"),
    "against_args": (lambda v: isinstance(v, dict), "a mapping of arguments"),
    "task_args": (lambda v: isinstance(v, dict), "a mapping of arguments"),
    "measure": (lambda v: isinstance(v, str), "a measure name"),
    "k": (_integer(1), "an integer >= 1"),
    "rbf_threshold": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                      and 0 < v < float("inf"), "a number > 0"),
    "batch": (_integer(4), "an integer >= 4"),
    "permutations": (_integer(0), "an integer >= 0"),
    "interval": (lambda v: v in INTERVALS, "one of " + ", ".join(INTERVALS)),
    "interval_draws": (_integer(2), "an integer >= 2"),
    "noise_draws": (_integer(1), "an integer >= 1"),
    "seed": (_integer(0), "an integer >= 0"),
    "precision": (lambda v: v in ("auto", "fp32", "bf16", "fp16"), "auto, fp32, bf16 or fp16"),
    "skip_corrupt": (lambda v: isinstance(v, bool), "true or false"),
    "cache_dtype": (lambda v: isinstance(v, str), "a cache dtype"),
}


def check_types(settings: dict[str, Any]) -> None:
    """Each setting given by name has the type and range it needs (a paper file's or a Python
    caller's values arrive untyped): one line naming the first that does not."""
    unknown = sorted(set(settings) - set(SETTINGS), key=str)
    if unknown:
        raise UsageError(f"similarity setting {', '.join(map(str, unknown))}: use "
                         f"{', '.join(SETTINGS)}")
    for name, value in settings.items():
        check, what = _TYPES[name]
        if value is not None and value != [] and not check(value):
            raise UsageError(f"similarity setting {name!r}: expected {what}, got {value!r}")


def similarity_spec(settings: dict[str, Any]) -> SimilaritySpec:
    """A spec from ``bench similarity``'s settings by name (absent ones take the command's
    defaults): what the CLI's flags and a paper's similarity table give."""
    check_types(settings)
    given = {k: v for k, v in settings.items() if v not in (None, [])}
    if not given.get("backbone") or not given.get("task"):
        raise UsageError("a similarity matrix needs a backbone and a task")
    side = Side(given["backbone"], [str(v) for v in given.get("layers", [])],
                [str(v) for v in given.get("pools", [])], dict(given.get("backbone_args", {})))
    other = None
    if given.get("against") or given.get("against_layers"):
        other = Side(given.get("against") or side.backbone,
                     [str(v) for v in given.get("against_layers", [])],
                     [str(v) for v in given.get("against_pools", [])],
                     dict(given.get("against_args", {})))
    defaults = Measure()
    measure = Measure(given.get("measure", defaults.name), given.get("k", defaults.k),
                      given.get("rbf_threshold", defaults.rbf_threshold),
                      given.get("batch", defaults.batch_size))
    named = {k: given[k] for k in ("split", "n", "permutations", "interval", "interval_draws",
                                   "noise_draws", "seed", "task_args", "precision",
                                   "skip_corrupt", "cache_dtype") if k in given}
    return SimilaritySpec(side=side, task=given["task"], against=other, measure=measure, **named)
