"""Feature extraction: one backbone pass over a split feeds every requested (layer, pool).

Works shard by shard, so memory stays flat as the dataset grows and an interrupted extraction
resumes at the first missing shard. A SLURM array shares one extraction: task k of n writes the
missing shards i with i % n == k.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.backbone import Backbone, BackboneOutputError, describe
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


def encode(features: np.ndarray, storage: str) -> np.ndarray:
    """float32 features as a cache file holds them (bfloat16: rounded to nearest even, the bits
    kept as uint16)."""
    if storage != BF16:
        with np.errstate(over="ignore"):  # an overflow is refused by the caller, named
            return features.astype(storage)
    return torch.from_numpy(np.ascontiguousarray(features, np.float32)).to(torch.bfloat16).view(
        torch.int16).numpy().view(np.uint16)


def check_storage(backbone: Backbone, outputs: dict[tuple[str, str], torch.Tensor],
                  storage: str) -> None:
    """Refuse a cache dtype that cannot store these (calibration) features as the backbone gives
    them: integer features beyond the type's exact integers, or values beyond float16's range
    (65504). Later images are checked again when written (``NonFiniteFeaturesError``)."""
    for (layer, pool), features in outputs.items():
        values = features.detach().float().abs()
        largest = float(values.max()) if values.numel() else 0.0
        where = f"{describe(backbone)}: {layer} pool={pool}"
        exact = EXACT_INTEGERS.get(storage)
        if not features.is_floating_point() and exact is not None and largest > exact:
            raise CacheDtypeError(
                f"{where} gives integers up to {largest:.0f}, which {storage} cannot hold exactly "
                f"(exact up to {exact:,}): use --cache-dtype fp32")
        if storage == "float16" and largest > FP16_MAX:
            raise CacheDtypeError(
                f"{where} reaches |x| = {largest:.3g}, beyond float16's largest value 65504 "
                f"(it would be stored as inf): use --cache-dtype bf16 or fp32")


def entry_fields(
    backbone: Backbone, task_config: dict, split: Split, layer: str, pool: str,
    precision: PrecisionPolicy,
) -> dict[str, Any]:
    """Everything that changes a cached feature (see bench.features.cache)."""
    return {
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
) -> ExtractionReport:
    """Fill the cache entries of ``requests`` (canonical layer, pool) for ``split``.

    ``precision``: the run's resolved policy (``bench.precision``); a name is not resolved here.
    ``compile``: run the backbone's truncated forward through torch.compile (see bench.features.compile;
    same features, same cache entries). ``decode``: "cpu" decodes images in the workers, "gpu"
    decodes JPEG files with nvJPEG on the device (see bench.features.pipeline). ``on_first_batch(images,
    seconds, cache bytes per image)`` hears how the first batch went (for a time estimate).
    """
    check_ranges({"batch_size": batch_size, "shard_size": shard_size, "workers": workers},
                 OPTION_RANGES, "extract:")  # before any cache entry is created
    require(precision)
    decode_on = _decode_device(decode, device)
    if compile:
        from bench.features.compile import enable_compile

        enable_compile(backbone)
    requests = list(dict.fromkeys(requests))
    entries = {}
    for req in requests:
        fields = entry_fields(backbone, task_config, split, *req, precision)
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
    loader = Loader(split, backbone.transform(), batches, device=device, workers=workers,
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
            with autocast(precision.extraction, device):
                outputs = backbone.extract(images, requests, ids.to(device))
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
