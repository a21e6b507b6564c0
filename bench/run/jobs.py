"""The job boundary: a picklable (spec, options) in, result records out. Executors run it anywhere.

A ``BenchJob`` resolves its spec (building the backbone once, in the process that runs it), reuses
every cell whose identity already has a finished result, extracts the features the others need in
one backbone pass per split (or finds them in the cache), evaluates each cell with the head's
protocol and logs one record per cell, marking what it supersedes. Every record carries the 95%
bootstrap intervals of its test metrics (over test images, ``BOOTSTRAP_RESAMPLES`` resamples,
seeded) and the per-image test predictions they come from, so any later comparison needs no
recomputation. ``ExtractJob`` does the extraction alone (for SLURM arrays: task k of n).
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.results.record import RunRecord
from bench.run.spec import SPLITS, Prepared, ResolvedCell, RunOptions, RunSpec

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # the same predictions always give the same interval


class _Requeueable:
    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on preemption or timeout: requeue the same job, which resumes
        extraction at the first missing shard and skips cells already logged."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def extract_features(prepared: Prepared, options: RunOptions, array_index: int = 0,
                     array_size: int = 1) -> dict[str, Any]:
    """Every request of the resolved run for train, val and test: split -> ExtractionReport."""
    from bench.features.cache import FeatureCache
    from bench.features.extract import extract

    run, cache = prepared.run, FeatureCache(options.cache_dir)
    heard = work_notice(prepared, cache) if array_size == 1 else None
    return {split: extract(
        prepared.backbone, prepared.task.split(split), run.requests, cache, run.task_config,
        device=prepared.device, precision=run.precision, batch_size=options.batch_size,
        workers=options.workers, shard_size=options.shard_size,
        skip_corrupt=run.spec.skip_corrupt, array_index=array_index, array_size=array_size,
        progress=options.progress, compile=options.compile, decode=options.decode,
        on_first_batch=heard,
    ) for split in SPLITS}


def work_notice(prepared: Prepared, cache: Any):
    """Say what extraction will cost before paying it (stderr): images x feature points now,
    then, from the first batch's speed and size, the time and cache it will take. The callback
    for ``extract``; None when everything is cached."""
    import sys

    from bench.features.extract import entry_fields

    run = prepared.run
    todo = {}
    for name in SPLITS:
        split = prepared.task.split(name)
        if not all(cache.entry(entry_fields(prepared.backbone, run.task_config, split, *request,
                                            run.precision)).complete()
                   for request in run.requests):
            todo[name] = len(split)
    if not todo:
        return None
    images = sum(todo.values())
    points = ", ".join(f"{layer} pool={pool}" for layer, pool in run.requests)
    splits = ", ".join(f"{name} {count:,}" for name, count in todo.items())
    print(f"extracting {images:,} images ({splits}) x {len(run.requests)} feature point"
          f"{'s' * (len(run.requests) != 1)} ({points}) with {run.spec.backbone} on "
          f"{prepared.device}; the first batch tells how long", file=sys.stderr, flush=True)
    said = []

    def heard(batch: int, seconds: float, bytes_per_image: int) -> None:
        if said:
            return
        said.append(True)
        rate = batch / max(seconds, 1e-6)
        print(f"first batch: {batch} images in {seconds:.1f} s ({rate:,.1f} img/s): about "
              f"{_duration(images / rate)} for {images:,} images, "
              f"{images * bytes_per_image / 1e6:,.1f} MB of feature cache",
              file=sys.stderr, flush=True)
    return heard


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@dataclass
class ExtractJob(_Requeueable):
    spec: RunSpec
    options: RunOptions
    array_index: int = 0
    array_size: int = 1

    def __call__(self) -> dict[str, int]:
        from bench.run.spec import resolve

        reports = extract_features(resolve(self.spec, self.options), self.options,
                                   self.array_index, self.array_size)
        return {split: r.shards_written for split, r in reports.items()}


@dataclass
class BenchJob(_Requeueable):
    spec: RunSpec
    options: RunOptions
    # Resolved already in this process (local executor): the backbone is not built twice.
    # Never pickled: a job on another machine resolves (and loads the weights) there.
    prepared: Prepared | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "prepared": None}

    def extraction_jobs(self, parts: int) -> list[ExtractJob]:
        """This job's extraction split over ``parts`` array tasks (task k writes shards k mod n)."""
        return [ExtractJob(self.spec, self.options, k, parts) for k in range(parts)]

    def __call__(self) -> list[RunRecord]:
        import os

        from bench.run.spec import resolve
        from bench.results.tracking import cell_lock, ensure_experiment, find_records

        if self.options.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = self.options.tracking_uri
        experiment_id = self.options.experiment_id or ensure_experiment(self.options.suite)
        job_started = time.time()  # the first computed cell's run covers the extraction too
        prepared = self.prepared or resolve(self.spec, self.options)
        cells = prepared.run.cells
        identities = [c.identity for c in cells]

        def logged() -> dict[str, RunRecord]:
            return {} if self.options.force else {
                r.identity: r for r in find_records([experiment_id], identities)}

        done = logged()
        if all(c.identity in done for c in cells):
            return [done[c.identity] for c in cells]
        # One process at a time computes these cells, wherever it runs: the lock lives in the
        # tracking store with the results. An identical run started meanwhile waits there, then
        # finds them logged and reuses them (no second extraction, no second result).
        with cell_lock(experiment_id, identities):
            done = logged()
            if all(c.identity in done for c in cells):
                return [done[c.identity] for c in cells]
            reports = extract_features(prepared, self.options)
            records = []
            for cell in cells:
                if cell.identity in done:
                    records.append(done[cell.identity])
                    continue
                started = time.time()
                records.append(self._evaluate(prepared, cell, reports, experiment_id,
                                              job_started if len(records) == 0 else started))
        return records

    def _evaluate(self, prepared: Prepared, cell: ResolvedCell, reports: dict[str, Any],
                  experiment_id: str, run_started: float) -> RunRecord:
        from bench.paths import tracking_uri
        from bench.protocol import evaluate, head_kind
        from bench.stats import bootstrap_intervals
        from bench.results.tracking import TrackingError, log_record, save_pending, supersede

        run = prepared.run
        kind = head_kind(run.spec.head)
        entries = {s: [reports[s].entries[r] for r in cell.features] for s in SPLITS}
        data = _probe_data(entries, kind.inputs == "maps", run.num_classes,
                           prepared.task.split("train").items,
                           _memory_budget(self.options.memory_budget, prepared.device))
        trainer = kind.make_trainer(kind.make_config(run.spec.head_args, run.spec.seed),
                                    prepared.device, run.precision, self.options.progress,
                                    run.groups)
        probe_started = time.time()
        result = evaluate(trainer, data, run.headline)
        probe_seconds = time.time() - probe_started
        bootstrap_started = time.time()
        predictions = result.predictions
        intervals = bootstrap_intervals(predictions, BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
        record = RunRecord.from_result(
            run, cell, result, intervals=intervals,
            seconds={"probe": probe_seconds, "bootstrap": time.time() - bootstrap_started},
            cache_keys={s: [e.key for e in es] for s, es in entries.items()},
            feature_shapes=[e.feature_shape() for e in entries["train"]],
            skipped=[item for r in reports.values() for item in r.skipped],
            start_time=run_started)
        artifacts = record.artifacts(_per_class_csv(prepared.task, result),
                                     _grid_csv(result.grid),
                                     _confusion_png(result.confusion, record.name),
                                     predictions.to_bytes())
        # printed before logging: a store or disk that fails now loses no number
        print(f"computed {record.name}: {_headline(record)}; logging to {tracking_uri()}",
              file=sys.stderr, flush=True)
        try:
            record.run_id = log_record(experiment_id, record, artifacts)
        except Exception as e:  # nothing computed is lost: the result waits on disk
            failure = (f"the result of {record.name} (printed above) could not be logged to "
                       f"{tracking_uri()} ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200] if str(e) else ''})")
            try:
                folder = save_pending(self.options.suite, record, artifacts)
            except TrackingError as kept:
                raise TrackingError(f"{failure}, and {kept}") from e
            raise TrackingError(f"{failure}; it is kept in {folder}: run `bench sync` once the "
                                "tracking store is back") from e
        supersede(experiment_id, record)
        return record


def _memory_budget(budget: int | str | None, device: Any) -> int | None:
    """``RunOptions.memory_budget`` in bytes: ``auto`` is a fraction of the memory free now
    where the features will sit (``bench.heads.streaming.auto_budget``)."""
    if budget != "auto":
        return budget
    from bench.heads.streaming import auto_budget

    return auto_budget(device)


def _probe_data(entries: dict[str, list[Any]], maps: bool, num_classes: int,
                train_items: list[Any], memory_budget: int | None = None):
    """Features of each split as the head reads them: memory-mapped cache shards at their stored
    precision, read by the head a minibatch (or, within ``memory_budget``, a split) at a time;
    the names of the train rows kept (few-shot draws are chosen by name)."""
    import numpy as np

    from bench.protocol import ProbeData

    features: dict[str, Any] = {}
    labels: dict[str, Any] = {}
    for split, split_entries in entries.items():
        loaded = [e.open() for e in split_entries]
        # Entries written at different times may have left out different corrupt items.
        keep = np.logical_and.reduce([mask for _, _, mask in loaded])
        labels[split] = _kept(loaded[0][1], keep)
        if maps:
            features[split] = {e.manifest["fields"]["layer"]: _kept(x, keep)
                               for e, (x, _, _) in zip(split_entries, loaded)}
        else:
            features[split] = _kept(loaded[0][0], keep)
        if split == "train":
            train_items = [item for item, kept in zip(train_items, keep) if kept]
    return ProbeData(features, labels, num_classes, train_items, memory_budget=memory_budget)


def _headline(record: RunRecord) -> str:
    """The result in a few words: test and val of the headline metric."""
    metric = record.headline
    return (f"test_{metric} {record.metrics[f'test_{metric}']:.2f}, "
            f"val_{metric} {record.val_score:.2f}")


def _kept(array: Any, keep: Any) -> Any:
    """Rows not skipped as corrupt; no copy when none was."""
    return array if keep.all() else array[keep]


def _per_class_csv(task, result) -> str:
    names = task.class_names or [str(i) for i in range(task.num_classes)]
    rows = ["class_index,class_name,test_accuracy,test_count"]
    for i, acc in enumerate(result.per_class):
        rows.append(f"{i},\"{names[i]}\",{acc:.4f},{int(result.confusion[i].sum())}")
    return "\n".join(rows) + "\n"


def _grid_csv(grid: list[dict[str, float]]) -> str:
    if not grid:
        return ""
    cols = list(grid[0])
    return "\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in grid]) + "\n"


def _confusion_png(confusion, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(confusion, cmap="Blues")
    ax.set(xlabel="predicted", ylabel="true", title=f"test confusion: {title}")
    fig.colorbar(image, ax=ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
