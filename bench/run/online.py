"""Heads trained through the frozen backbone (``--online``): no train-feature cache.

The released code of Mukhopadhyay et al. (soumik-kanad/diffssl, ``finetune.py``) trains its heads
on augmented images with fresh diffusion noise at every pass, the backbone frozen inside the
loop. Here epoch e (0-based) of an online run trains on view e of each training image: its
pixels drawn by ``bench.features.augment.ViewTransform(augment, input_size, seed, view=e)``, its
noise seeded by ``bench.backbone.view_sample_ids(ids, e)``; each minibatch (the grid probe's one
order, ``bench.heads.streaming.epoch_order``) is loaded, augmented and passed through the
truncated backbone under ``torch.no_grad`` (bf16/fp16 autocast by the precision policy; the
compiled truncated forward with ``--compile`` on CUDA), and every head of the grid trains from
that one forward pass (``bench.heads.probe.train_grid``: one GEMM for all linear heads). An
online run of E epochs thus sees exactly the images and noise a cached ``--views E`` run sees.

Validation and test are one deterministic centre view, read from the feature cache as in a
cached run; selection, the refit on train+val (train online, val from the cache) and the test
number are ``bench.protocol.evaluate``'s. Standardisation (the bench recipe's) uses statistics
computed online in one first pass over view 0 of the training rows (a cached ``--views`` run
takes them over all its views): one extra epoch of forwards, said here and in the costs.

A job that stops (preemption, a timeout: submitit's ``checkpoint`` requeues the same job, a
crash: run it again) resumes where it stood: the grid's state (heads, optimizer moments, kept
points, normaliser, the order generator at the epoch's start, the validation records so far)
is written atomically every ``CHECKPOINT_STEPS`` steps and at the end of every epoch to
``<cache>/online/<cell identity>.pt`` (``OnlineCheckpoint``), read back by the restarted job,
and deleted once the cell's result is computed. A resumed run gives exactly the numbers of an
uninterrupted one; it recomputes the standardisation statistics (deterministic) and loses at
most the steps since the last write.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.heads.probe import GridProbeTrainer
from bench.heads.streaming import CHUNK_ROWS, ViewCycle, epoch_order
from bench.precision import autocast

CHECKPOINT_STEPS = 200  # steps between two writes of an online job's state


@dataclass
class OnlineSource:
    """What an online run's training rows are made from: the train split's images through the
    frozen backbone at one feature point, then (a refit) cached rows appended (val's)."""

    backbone: Any  # bench.backbone.Backbone, frozen
    split: Any  # bench.task.Split: train
    request: tuple[str, str]  # (canonical layer, pool)
    augment: str
    seed: int
    device: torch.device
    extraction: str  # the precision policy's extraction type (fp32 | bf16 | fp16)
    cached: Any = None  # (N_extra, D) rows after the train split's (a refit's val), or None
    cached_labels: Any = None
    workers: int = 0  # loader processes decoding and augmenting the train images

    @functools.cached_property
    def dim(self) -> int:
        """Features per image (one image through the backbone, once)."""
        return int(self.features(0, np.arange(1)).shape[1])

    def features(self, view: int, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), D) float32 features of rows ``rows`` (``stream`` of one minibatch)."""
        return next(self.stream(view, [rows]))

    def stream(self, view: int, minibatches: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """(len(rows), D) float32 features of each minibatch of rows in turn: view ``view`` of
        the train images among them through the backbone (decoded and augmented by
        ``workers`` loader processes, read ahead: ``views``), cached
        rows (those from the split's length on) after them."""
        from bench.backbone import view_sample_ids

        n_train = len(self.split)
        wanted = [[int(i) for i in rows[rows < n_train]] for rows in minibatches]
        loaded = self.views(view, [w for w in wanted if w])
        for rows, train in zip(minibatches, wanted):
            parts: list[tuple[np.ndarray, torch.Tensor]] = []
            if train:
                images, ids = next(loaded)
                sample_ids = view_sample_ids(ids, view).to(self.device)
                with torch.no_grad(), autocast(self.extraction, self.device):
                    x = self.backbone.extract(images, [self.request], sample_ids)[self.request]
                parts.append((np.flatnonzero(rows < n_train), x.float().reshape(len(train), -1)))
            kept = np.flatnonzero(rows >= n_train)
            if len(kept):
                x = np.asarray(self.cached[rows[kept] - n_train], dtype=np.float32)
                parts.append((kept, torch.from_numpy(x).to(self.device).reshape(len(kept), -1)))
            out = parts[0][1].new_empty((len(rows), parts[0][1].shape[1]))
            for where, x in parts:
                out[torch.from_numpy(where).to(self.device)] = x
            yield out

    def views(self, view: int, minibatches: list[list[int]]
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images on the device, split indices) of each minibatch of train rows: view ``view``
        (``ViewTransform``), for a head that runs the backbone itself (``HeadKind.online_only``)."""
        from bench.features.augment import ViewTransform

        transform = ViewTransform(self.augment, self.backbone.input_size, self.seed, view,
                                  self.backbone.transform())
        yield from _loaded(self.split, transform, minibatches, self.device, self.workers)

    def centre(self, split: Any, minibatches: list[list[int]]
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, split indices) of ``split``'s rows in the backbone's own transform: the one
        deterministic centre view a cached split holds."""
        yield from _loaded(split, self.backbone.transform(), minibatches, self.device,
                           self.workers)

    def labels(self) -> np.ndarray:
        extra = [] if self.cached_labels is None else [np.asarray(self.cached_labels)]
        return np.concatenate([np.asarray(self.split.labels), *extra]).astype(np.int64)


def _loaded(split: Any, transform: Any, minibatches: list[list[int]], device: torch.device,
            workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from bench.features.pipeline import Loader
    from bench.task import DatasetError

    for images, ids, errors in Loader(split, transform, minibatches, device=device,
                                      workers=workers):
        if errors:
            raise DatasetError(errors[0][1])
        yield images, ids.long()


class OnlineBatches:
    """One view's training rows as the grid probe reads them (``bench.heads.streaming.Batches``'
    ``n``, ``dim``, ``device``, ``epoch`` and ``chunks``), computed through the backbone when
    asked for. ``skip``: minibatches of the next epoch already trained (a resumed job): their
    order is drawn, their forwards are not paid."""

    def __init__(self, source: OnlineSource, view: int, batch_size: int):
        self.source, self.view, self.batch_size = source, view, batch_size
        labels = source.labels()
        self.n = len(labels)
        self.device = source.device
        self.labels = torch.from_numpy(labels).to(self.device)
        self.dim = source.dim
        self.skip = 0

    def epoch(self, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(self.n, gen)
        skip, self.skip = self.skip, 0
        minibatches = [order[i : i + self.batch_size]
                       for i in range(skip * self.batch_size, self.n, self.batch_size)]
        for rows, x in zip(minibatches, self.source.stream(self.view, minibatches)):
            yield x, self.labels[torch.from_numpy(rows).to(self.device)]

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """This view's rows in order, ``CHUNK_ROWS`` at a time (the cached reader's chunks)."""
        starts = range(0, self.n, CHUNK_ROWS)
        chunks = [np.arange(start, min(start + CHUNK_ROWS, self.n)) for start in starts]
        yield from zip(starts, self.source.stream(self.view, chunks))


class OnlineViews(ViewCycle[OnlineBatches]):
    """Epoch e reads view e (as many views as epochs); the standardisation statistics
    (``chunks``) are view 0's alone: one online pass, not one per epoch."""

    def __init__(self, source: OnlineSource, epochs: int, batch_size: int):
        super().__init__(lambda view: OnlineBatches(source, view, batch_size), epochs)

    def chunks(self) -> Iterator[tuple[int, Any]]:
        yield from self(0).chunks()


class OnlineGridTrainer(GridProbeTrainer):
    """The grid probe (``GridProbeTrainer``: its search, selection and refit) with its training
    rows computed through the backbone every epoch (``OnlineViews``); val and test as cached.
    ``source``: the train split's source (val's cached rows are appended for a refit)."""

    def __init__(self, cfg: Any, device: Any, precision: Any, source: OnlineSource,
                 progress: bool = False):
        super().__init__(cfg, device, precision, progress)
        self.source = source

    def memory(self, data: Any) -> Any:
        """Val and test are small beside what the backbone holds: each on the device whole."""
        return _Whole()

    def _views(self, data: Any, splits: Any, mode: Any) -> OnlineViews:
        from dataclasses import replace

        source = self.source
        if list(splits) == ["train", "val"]:
            source = replace(source, cached=data.features["val"], cached_labels=data.labels["val"])
        elif list(splits) != ["train"]:
            raise ValueError(f"an online probe trains on train or train+val, not {splits}")
        return OnlineViews(source, self.cfg.epochs, self.cfg.batch_size)


class _Whole:
    def mode(self, phase: str, name: str) -> str:
        return "memory"


def online_source(prepared: Any, request: tuple[str, str], compile: bool = False,
                  workers: int = 0) -> OnlineSource:
    """The online training source of a resolved run's cell (one feature point)."""
    device = prepared.device
    backbone = prepared.backbone.eval().to(device)
    if compile and device.type == "cuda":
        from bench.features.compile import enable_compile

        enable_compile(backbone)
    spec = prepared.run.spec
    return OnlineSource(backbone, prepared.task.split("train"), request, spec.augment, spec.seed,
                        device, prepared.run.precision.extraction, workers=workers)


def online_trainer(prepared: Any, cell: Any, data: Any, options: Any) -> tuple[Any, Any]:
    """The probe data (val and test cached, train's labels) and the online grid trainer of a
    resolved online run's cell (``bench.run.jobs.BenchJob`` dispatches here)."""
    from dataclasses import replace

    from bench.protocol import head_kind
    from bench.run.spec import head_config

    [request] = cell.features
    source = online_source(prepared, request, options.compile, options.workers)
    labels = {**data.labels, "train": np.asarray(source.split.labels)}
    kind = head_kind(prepared.run.spec.head)
    if kind.online_only:  # its own trainer, given the source and the task (val/test images)
        trainer = kind.make_trainer(head_config(prepared.run.spec), prepared.device,
                                    prepared.run.precision, options.progress)
        trainer.attach(source, prepared.task)
    else:
        trainer = OnlineGridTrainer(head_config(prepared.run.spec), prepared.device,
                                    prepared.run.precision, source, options.progress)
    trainer.resume = OnlineCheckpoint(checkpoint_path(options, cell.identity))
    return replace(data, labels=labels), trainer


def checkpoint_path(options: Any, identity: str) -> Any:
    """Where an online cell's training state is kept between a stop and its restart."""
    from bench.features.cache import FeatureCache

    return FeatureCache(options.cache_dir).root / "online" / f"{identity}.pt"


class OnlineCheckpoint:
    """The grid's training state of one online cell (``bench.heads.probe.Resume``), by phase:
    written to ``path`` every ``every`` steps and at each epoch's end (a temporary file, then
    renamed: a job killed while writing leaves the previous state), read back on restart."""

    def __init__(self, path: Any, every: int = 0):
        from pathlib import Path

        self.path, self.every = Path(path), every or CHECKPOINT_STEPS
        self.saved: dict[str, Any] = (torch.load(self.path, weights_only=False)
                                      if self.path.exists() else {})
        self.steps = 0

    def restored(self, phase: str) -> Any:
        return self.saved.get(phase)

    def step(self, phase: str, snapshot: Any, boundary: bool = False) -> None:
        self.steps += not boundary
        if boundary or self.steps % self.every == 0:
            self.saved[phase] = snapshot()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            torch.save(self.saved, partial)
            partial.replace(self.path)

    def finish(self) -> None:
        """The cell's result is computed: nothing left to resume."""
        self.path.unlink(missing_ok=True)
