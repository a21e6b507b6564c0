"""Feature extraction: one backbone pass over a split feeds every requested (layer, pool).

Works shard by shard, so memory stays flat as the dataset grows and an interrupted extraction
resumes at the first missing shard. A SLURM array shares one extraction: task k of n writes the
missing shards i with i % n == k.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from bench.backbone import Backbone, BackboneOutputError, describe, view_sample_ids
from bench.features.augment import TrainView
from bench.features.cache import CacheEntry, CacheError, FeatureCache, bf16_to_float32
from bench.errors import NumericalError, UsageError
from bench.features.pipeline import DECODES, Loader
from bench.precision import BF16, FP32, PrecisionPolicy, autocast, require, storage_numpy
from bench.ranges import OPTION_RANGES, check_ranges
from bench.features.images import IMAGE_READER
from bench.task import DatasetError, Split


class NonFiniteFeaturesError(BackboneOutputError, NumericalError):
    """Features that are NaN or infinite, or overflow the cache's storage type."""


def _decode_device(decode: str, device: torch.device) -> torch.device | None:
    """Where JPEG files are decoded: None (CPU workers) or the CUDA device."""
    if decode not in DECODES:
        raise UsageError(f"decode {decode!r}: use {' or '.join(DECODES)}")
    if decode == "cpu":
        return None
    if device.type != "cuda":
        raise UsageError(f"decode='gpu' decodes JPEGs with nvJPEG on a CUDA device, but extraction "
                         f"runs on {device.type}; use decode='cpu' (--decode cpu)")
    return device


class CacheDtypeError(UsageError):
    """A cache dtype that cannot hold what the backbone gives; found before anything is written."""


FP16_MAX = 65504.0
EXACT_INTEGERS = {"float16": 2 ** 11, BF16: 2 ** 8}  # integers above are rounded
REDUCED = ("float16", BF16)  # the 16-bit types features can be stored or probed in
FLAGS = {"float16": "fp16", BF16: "bf16", "float32": "fp32"}  # --cache-dtype's names
STORAGE_CHECK_IMAGES = 16  # calibration images whose spread the resolution is checked against
LOST_SHARE = 0.01  # the share of dimensions a 16-bit type may round away before it is not used


def encode(features: np.ndarray, storage: str) -> np.ndarray:
    """float32 features as a cache file holds them (bfloat16: rounded to nearest even, the bits
    kept as uint16)."""
    if storage != BF16:
        with np.errstate(over="ignore"):  # an overflow is refused by the caller, named
            return features.astype(storage)
    return torch.from_numpy(np.ascontiguousarray(features, np.float32)).to(torch.bfloat16).view(
        torch.int16).numpy().view(np.uint16)


def _steps(magnitudes: np.ndarray, dtype: str) -> np.ndarray:
    """The rounding step of ``dtype`` at each magnitude (subnormals included: float16's
    smallest step is 6e-8, so smaller features become zeros)."""
    if dtype == BF16:  # float32's exponent, 8 significant bits: float32's step x 2**16
        return np.spacing(magnitudes.astype(np.float32)).astype(np.float64) * 2.0 ** 16
    return np.spacing(magnitudes.astype(np.float16)).astype(np.float64)


def storage_problem(backbone: Backbone, outputs: dict[tuple[str, str], torch.Tensor],
                    dtype: str) -> str | None:
    """Why ``dtype`` cannot hold these calibration features as the backbone gives them, or None.

    Integers beyond the type's exact integers, values beyond float16's range (65504), or a
    resolution too coarse for the spread: a dimension is lost when the type's rounding step at
    its magnitude (root mean square over the images) reaches its spread over the images (their
    standard deviation; constant dimensions carry nothing to lose), and the type is not used when
    more than ``LOST_SHARE`` of the dimensions are lost: features with a large common offset
    (4000 + x in float16, whose step there is 2) would otherwise be cached as constants.
    """
    if dtype not in REDUCED:
        return None
    for (layer, pool), features in outputs.items():
        where = f"{describe(backbone)}: {layer} pool={pool}"
        values = features.detach().float().cpu().numpy().reshape(len(features), -1)
        largest = float(np.abs(values).max()) if values.size else 0.0
        exact = EXACT_INTEGERS[dtype]
        if not features.is_floating_point() and largest > exact:
            return (f"{where} gives integers up to {largest:.0f}, which {dtype} cannot hold "
                    f"exactly (exact up to {exact:,})")
        if dtype == "float16" and largest > FP16_MAX:
            return (f"{where} reaches |x| = {largest:.3g}, beyond float16's largest value 65504 "
                    "(it would be stored as inf)")
        if len(values) < 2:
            continue  # one image has no spread to measure
        magnitude = np.abs(values)
        step = np.sqrt((_steps(magnitude, dtype) ** 2).mean(axis=0))
        spread = values.astype(np.float64).std(axis=0)
        informative = spread > 0
        lost = informative & (step >= spread)
        if lost.sum() > LOST_SHARE * max(1, informative.sum()):
            return (f"{where} in {dtype} loses {lost.sum():,} of the {informative.sum():,} "
                    f"dimensions that vary over {len(values)} calibration images (of "
                    f"{values.shape[1]:,}): its step at their magnitude (median "
                    f"{np.median(step[lost]):.3g} at |x| ~ "
                    f"{np.median(magnitude.mean(axis=0)[lost]):.3g}) is above their spread "
                    f"(median {np.median(spread[lost]):.3g})")
    return None


def _fix(backbone: Backbone, outputs: dict[tuple[str, str], torch.Tensor], dtype: str) -> str:
    """The --cache-dtype values that hold these features, instead of ``dtype``."""
    fits = [FLAGS[other] for other in REDUCED
            if other != dtype and storage_problem(backbone, outputs, other) is None]
    return f"use --cache-dtype {' or '.join([*fits, 'fp32'])}"


def check_storage(backbone: Backbone, outputs: dict[tuple[str, str], torch.Tensor],
                  storage: str) -> None:
    """Refuse a cache dtype that cannot store these (calibration) features
    (``storage_problem``). Later images are checked again when written (overflow:
    ``NonFiniteFeaturesError``)."""
    problem = storage_problem(backbone, outputs, storage)
    if problem:
        raise CacheDtypeError(f"{problem}: {_fix(backbone, outputs, storage)}")


@dataclass(frozen=True)
class StorageChoice:
    """The precision policy a run uses for its features, and the line saying what changed."""

    policy: PrecisionPolicy
    note: str = ""  # empty: the policy as resolved


def storage_policy(backbone: Backbone, outputs: dict[tuple[str, str], torch.Tensor],
                   policy: PrecisionPolicy, chosen: bool) -> StorageChoice:
    """``policy`` if its 16-bit types hold these calibration features; else, where the type was
    the policy's own (not ``chosen`` with ``--cache-dtype``), the policy with float32 in its
    place, so a run under ``--precision auto`` on a GPU gives a correct result without a rerun
    (the result's identity and cache key then say float32). A chosen type that cannot hold them
    is refused (``CacheDtypeError``)."""
    problem = storage_problem(backbone, outputs, policy.storage)
    if problem and chosen:
        raise CacheDtypeError(f"{problem}: {_fix(backbone, outputs, policy.storage)}")
    if problem:
        return StorageChoice(replace(policy, storage="float32", probe_inputs="float32"),
                             f"{problem}: caching float32 instead (the result's identity and "
                             "cache key say float32)")
    problem = (storage_problem(backbone, outputs, policy.probe_inputs)
               if policy.probe_inputs != policy.storage else None)
    if problem:
        return StorageChoice(replace(policy, probe_inputs="float32"),
                             f"{problem}: the probe reads them in float32 instead (the "
                             "result's identity says so)")
    return StorageChoice(policy)


_CHOICES: dict[str, StorageChoice] = {}  # this process's decisions: said once, computed once


def checked_storage(backbone: Backbone, split: Split, requests: Sequence[tuple[str, str]],
                    policy: PrecisionPolicy, *, device: torch.device, skip_corrupt: bool,
                    chosen: bool) -> StorageChoice:
    """``storage_policy`` on the backbone's features of the first ``STORAGE_CHECK_IMAGES``
    images of ``split`` (the calibration images), when the policy stores or probes in a 16-bit
    type; the note, if any, is printed once (stderr)."""
    if policy.storage not in REDUCED and policy.probe_inputs not in REDUCED:
        return StorageChoice(policy)
    from bench.digest import json_digest

    key = json_digest([backbone.config, backbone.weights_digest(), split.manifest_digest(),
                       list(requests), policy.as_dict(), chosen, skip_corrupt])
    if key not in _CHOICES:
        images = calibration_images(split, backbone.transform(), STORAGE_CHECK_IMAGES,
                                    skip_corrupt)
        x = torch.stack(images).to(device)
        backbone.eval().to(device)
        with torch.inference_mode(), autocast(policy.extraction, device):
            outputs = backbone.extract(x, list(requests), torch.arange(len(x), device=device))
        choice = storage_policy(backbone, outputs, policy, chosen)
        if choice.note:
            print(choice.note, file=sys.stderr, flush=True)
        _CHOICES[key] = choice
    return _CHOICES[key]


def calibration_images(split: Split, transform: Callable[[Any], Any], n: int,
                       skip_corrupt: bool) -> list[Any]:
    """The first ``n`` images of ``split`` that decode (with ``skip_corrupt``; else the first
    corrupt one stops the run here, as it would the extraction)."""
    from bench.task import CorruptImageError

    images = []
    for index in range(len(split)):
        try:
            images.append(transform(split.load(index)))
        except CorruptImageError:
            if not skip_corrupt:
                raise
        if len(images) == n:
            break
    if not images:
        raise DatasetError(f"no image of the {split.name} split decodes: check the data with "
                           "`bench data verify --full`")
    return images


def entry_fields(
    backbone: Backbone, task_config: dict, split: Split, layer: str, pool: str,
    precision: PrecisionPolicy, view: TrainView | None = None,
) -> dict[str, Any]:
    """Everything that changes a cached feature (see bench.features.cache); an augmented train
    ``view`` adds its augmentation, number and seed (none: the centre view, the key as ever)."""
    return {
        **({} if view is None else {"view": view.fields()}),
        "backbone": backbone.config,
        "weights_sha256": backbone.weights_digest(),
        "layer": layer,
        "pool": pool,
        "precision": precision.extraction,
        "storage": precision.storage,
        "task": task_config,
        "split": split.name,
        "split_manifest": split.manifest_digest(),
        "image_reader": IMAGE_READER,
    }


@dataclass
class ExtractionReport:
    """What an extraction did; ``skipped`` names every item the cached features leave out."""

    entries: dict[tuple[str, str], CacheEntry]
    shards_written: int
    images_processed: int
    skipped: list[str]


def extract(
    backbone: Backbone,
    split: Split,
    requests: Sequence[tuple[str, str]],
    cache: FeatureCache,
    task_config: dict,
    *,
    device: torch.device,
    precision: PrecisionPolicy = FP32,
    batch_size: int = 64,
    workers: int = 0,
    shard_size: int = 4096,
    skip_corrupt: bool = False,
    array_index: int = 0,
    array_size: int = 1,
    progress: bool = True,
    compile: bool = False,
    decode: str = "cpu",
    on_first_batch: Callable[[int, float, int], None] | None = None,
    view: TrainView | None = None,
) -> ExtractionReport:
    """Fill the cache entries of ``requests`` (canonical layer, pool) for ``split``.

    ``precision``: the run's resolved policy (``bench.precision``); a name is not resolved here.
    ``compile``: run the backbone's truncated forward through torch.compile (see bench.features.compile;
    same features, same cache entries). ``decode``: "cpu" decodes images in the workers, "gpu"
    decodes JPEG files with nvJPEG on the device (see bench.features.pipeline). ``on_first_batch(images,
    seconds, cache bytes per image)`` hears how the first batch went (for a time estimate).
    ``view``: an augmented view of the train split (``--views``): item i's image is the view's
    augmentation of it (``ViewTransform``, decoded on the CPU: the GPU path only centre-crops)
    and a stochastic backbone's noise is seeded by ``view_sample_ids``; its own cache entries.
    """
    check_ranges({"batch_size": batch_size, "shard_size": shard_size, "workers": workers},
                 OPTION_RANGES, "extract:")  # before any cache entry is created
    require(precision)
    decode_on = _decode_device(decode, device)
    transform: Callable[..., Any] = backbone.transform()
    if view is not None:
        transform, decode_on = view.transform(backbone.input_size, transform), None
    if compile:
        from bench.features.compile import enable_compile

        enable_compile(backbone)
    requests = list(dict.fromkeys(requests))
    entries = {}
    for req in requests:
        fields = entry_fields(backbone, task_config, split, *req, precision, view)
        entries[req] = cache.entry(fields)
        entries[req].create(fields, split.labels, shard_size)
    sizes = {e.manifest["shard_size"] for e in entries.values()}
    if len(sizes) > 1:
        raise CacheError(f"cached entries of one extraction disagree on shard size {sizes}; "
                         "remove them with `bench cache rm` or extract them separately")
    shard_size = sizes.pop()
    # without skip_corrupt, shards that left items out are recomputed (the image may be fixed)
    todo = {req: set(e.missing_shards(allow_skipped=skip_corrupt)) for req, e in entries.items()}
    missing = sorted(set().union(*todo.values()))
    mine = [s for s in missing if s % array_size == array_index]
    report = ExtractionReport(entries, 0, 0, [])
    if not mine:
        report.skipped = _left_out(split, entries)
        return report

    batches = []
    for shard in mine:
        lo, hi = shard * shard_size, min((shard + 1) * shard_size, len(split))
        batches += [list(range(i, min(i + batch_size, hi))) for i in range(lo, hi, batch_size)]
    loader = Loader(split, transform, batches, device=device, workers=workers,
                    decode_on=decode_on)
    from tqdm.auto import tqdm

    backbone.eval().to(device)
    total = sum(len(b) for b in batches)
    bar = tqdm(total=total, desc=f"extract {backbone.name}/{split.name}", unit="img",
               disable=not progress)
    buffers: dict[tuple[str, str], list[np.ndarray]] = {r: [] for r in requests}
    shard_skips: list[int] = []
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}  # each request's feature shape
    current = mine[0]
    dtype = storage_numpy(precision.storage)

    def flush(shard: int) -> None:
        for req, entry in entries.items():
            if shard in todo[req]:
                features = np.concatenate(buffers[req])
                stored = encode(features, precision.storage)
                decoded = bf16_to_float32(stored) if precision.storage == BF16 else stored
                if not np.isfinite(decoded).all():
                    raise NonFiniteFeaturesError(
                        f"{describe(backbone)}: features of {req} are not finite in "
                        f"{precision.storage} (max |x| "
                        f"{np.abs(features).max():.3g}); the backbone's output overflows the cache "
                        "dtype (try --cache-dtype bf16 or fp32, or --precision fp32) or is NaN: "
                        "check the weights and inputs")
                entry.write_shard(shard, stored, shard_skips)
            buffers[req] = []
        report.shards_written += 1

    started = time.perf_counter()
    with torch.inference_mode():
        for images, ids, errors in loader:
            shard = int(ids[0]) // shard_size
            if shard != current:
                flush(current)
                shard_skips, current = [], shard
            for index, message in errors:
                if not skip_corrupt:
                    raise DatasetError(message)
                shard_skips.append(index - shard * shard_size)
            sample_ids = ids if view is None else view_sample_ids(ids, view.view)
            with autocast(precision.extraction, device):
                outputs = backbone.extract(images, requests, sample_ids.to(device))
            for req in requests:
                features = outputs[req].float().cpu().numpy()
                width = shapes.setdefault(req, features.shape[1:])
                if features.shape[1:] != width:
                    raise BackboneOutputError(
                        f"{describe(backbone)}: {req} features changed shape from {width} to "
                        f"{features.shape[1:]} between batches; a layer's features must have "
                        "one shape for every image")
                buffers[req].append(features)
            report.images_processed += len(ids) - len(errors)
            if on_first_batch is not None and report.images_processed <= len(ids):
                on_first_batch(len(ids), time.perf_counter() - started,
                               sum(outputs[r][0].numel() for r in requests) * dtype.itemsize)
            bar.update(len(ids))
        flush(current)
    bar.close()
    report.skipped = _left_out(split, entries)
    return report


def _left_out(split: Split, entries: dict[tuple[str, str], CacheEntry]) -> list[str]:
    """Items the cached features leave out: the skipped items of every shard there, whichever
    run skipped them (a reused shard's skips count as much as this run's). Leaving out every
    image of a class changes the task, so that is an error naming the class and its files."""
    left_out: set[int] = set()
    for entry in entries.values():
        size = entry.manifest["shard_size"]
        for info in entry.usable_shards().values():
            left_out.update(info.index * size + j for j in info.skipped)
    indices = sorted(left_out)
    if indices:
        lost = np.bincount(split.labels[indices], minlength=split.labels.max() + 1)
        present = np.bincount(split.labels, minlength=split.labels.max() + 1)
        gone = [int(c) for c in np.flatnonzero((lost == present) & (present > 0))]
        if gone:
            files = [str(split.items[i]) for i in indices if split.labels[i] == gone[0]]
            raise DatasetError(
                f"--skip-corrupt would leave out every {split.name} image of class {gone[0]}"
                f"{f' (and classes {gone[1:]})' if gone[1:] else ''}: {', '.join(files[:3])}"
                f"{' ...' if len(files) > 3 else ''}; that changes the task, so repair or "
                "replace these files (see `bench data verify --full`)")
    return [str(split.items[i]) for i in indices]
