"""The job boundary: a picklable (spec, options) in, result records out. Executors run it anywhere.

A ``BenchJob`` resolves its spec (building the backbone once, in the process that runs it), reuses
every cell whose identity already has a finished result, extracts the features the others need in
one backbone pass per split (or finds them in the cache), evaluates each cell with the head's
protocol and logs one record per cell, marking what it supersedes. Every record carries the 95%
bootstrap intervals of its test metrics (over test images, ``BOOTSTRAP_RESAMPLES`` resamples,
seeded) and the per-image test predictions they come from, so any later comparison needs no
recomputation. Before extracting, a job says what it will cost and refuses when the cache's disk
cannot hold it (``bench.run.costs``); with ``--no-keep-features`` it deletes the cache entries it
read once its cells are logged (``share_features``), but none that another run is reading: a job
holds its entries from extraction to its last logged cell (``bench.features.cache.reading``). ``ExtractJob`` does the extraction alone (for
SLURM arrays: task k of n).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.errors import UsageError
from bench.results.record import RunRecord
from bench.run.spec import SPLITS, Prepared, ResolvedCell, RunOptions, RunSpec, head_config

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # the same predictions always give the same interval


class _Requeueable:
    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on preemption or timeout: requeue the same job, which resumes
        extraction at the first missing shard, skips cells already logged and resumes an online
        cell's training at its last saved step (``bench.run.online.OnlineCheckpoint``)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def extraction_notice(prepared: Prepared, options: RunOptions,
                      requests: list[tuple[str, str]] | None = None,
                      cells_of: list[Prepared] | None = None, array_size: int = 1) -> Any:
    """``work_notice`` for an extraction (None for a task of an array: its driver said it):
    called before a job holds its cache entries (``reading``), so a refusal writes nothing."""
    from bench.features.cache import FeatureCache

    if array_size != 1:
        return None
    return work_notice(prepared, FeatureCache(options.cache_dir), options,
                       requests or prepared.run.requests, cells_of)


def extract_features(prepared: Prepared, options: RunOptions, heard: Any,
                     array_index: int = 0, array_size: int = 1,
                     requests: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Every request of the resolved run (or ``requests``: those of several heads on this
    backbone and task) for each of its parts (train, or each augmented train view, then val
    and test): part name -> ExtractionReport. ``heard``: the ``extraction_notice`` callback."""
    from bench.features.cache import FeatureCache
    from bench.features.extract import extract

    run, cache = prepared.run, FeatureCache(options.cache_dir)
    requests = requests or run.requests
    return {part.name: extract(
        prepared.backbone, prepared.task.split(part.split), requests, cache, run.task_config,
        device=prepared.device, precision=run.precision, batch_size=options.batch_size,
        workers=options.workers, shard_size=options.shard_size,
        skip_corrupt=run.spec.skip_corrupt, array_index=array_index, array_size=array_size,
        progress=options.progress, compile=options.compile, decode=options.decode,
        on_first_batch=heard, view=part.view,
    ) for part in run.parts}


def job_label(spec: RunSpec) -> str:
    return f"{spec.backbone} x {spec.task} head={spec.head}"


def work_notice(prepared: Prepared, cache: Any, options: RunOptions,
                requests: list[tuple[str, str]] | None = None,
                cells_of: list[Prepared] | None = None):
    """Say what extraction will cost before paying it (stderr): images x feature points, each
    cell's cache bytes per split and probe memory (``bench.run.costs``), the time when a CUDA
    device timed a calibration batch, the disk verdict; then, from the first batch's speed and
    size, the time and cache it will take. Refuses (``DiskSpaceError``, a ``MemoryBudgetError``
    for a budget a cell's head cannot run in) before anything is written, even when everything
    is cached. The callback for ``extract``; None when everything is cached. ``requests``: the
    points of several heads extracted together (``SharedJob``), whose runs are ``cells_of``."""
    from dataclasses import replace

    from bench.run.costs import disk_check, duration, job_cost, size

    run = prepared.run
    if requests is not None and requests != run.requests:
        cells_of = cells_of or [prepared]
        prepared = replace(prepared, run=replace(run, requests=requests, cells=[]))
        run = prepared.run
    label = job_label(run.spec)
    cost = job_cost(prepared, cache, label, options.shard_size, options.batch_size,
                    options.memory_budget, cells_of)
    if not cost.to_extract:
        return None
    disk = disk_check(cache.root, cost.new_bytes)
    if not disk.fits:
        raise disk.refusal(cost.storage, label)
    images = sum(cost.to_extract.values())
    points = ", ".join(f"{layer} pool={pool}" for layer, pool in run.requests)
    splits = ", ".join(f"{name} {count:,}" for name, count in cost.to_extract.items())
    how_long = ("the first batch tells how long" if cost.seconds is None else
                f"{duration(cost.seconds)} by a calibration batch")
    print(f"extracting {images:,} images ({splits}) x {len(run.requests)} feature point"
          f"{'s' * (len(run.requests) != 1)} ({points}) with {run.spec.backbone} on "
          f"{prepared.device}; {how_long}", file=sys.stderr)
    print("\n".join([*cost.lines(summary=False), f"  {disk.line()}"]), file=sys.stderr,
          flush=True)
    said = []

    def heard(batch: int, seconds: float, bytes_per_image: int) -> None:
        if said:
            return
        said.append(True)
        rate = batch / max(seconds, 1e-6)
        print(f"first batch: {batch} images in {seconds:.1f} s ({rate:,.1f} img/s): "
              f"{duration(images / rate)} for {images:,} images, "
              f"{size(images * bytes_per_image)} of feature cache",
              file=sys.stderr, flush=True)
    return heard


@dataclass
class ExtractJob(_Requeueable):
    spec: RunSpec
    options: RunOptions
    array_index: int = 0
    array_size: int = 1

    def __call__(self) -> dict[str, int]:
        from bench.features.cache import reading
        from bench.run.spec import resolve

        prepared = resolve(self.spec, self.options)
        heard = extraction_notice(prepared, self.options, array_size=self.array_size)
        with reading(job_entries(prepared, self.options)):
            reports = extract_features(prepared, self.options, heard, self.array_index,
                                       self.array_size)
        return {split: r.shards_written for split, r in reports.items()}


def job_entries(prepared: Prepared, options: RunOptions) -> list[Any]:
    """The cache entries a resolved job reads (``CacheEntry``), every split of every point."""
    from bench.features.cache import FeatureCache
    from bench.run.costs import entries_of

    cache = FeatureCache(options.cache_dir)
    return [entry for by_split in entries_of(prepared, cache).values()
            for entry in by_split.values()]


@dataclass
class BenchJob(_Requeueable):
    spec: RunSpec
    options: RunOptions
    # Resolved already in this process (local executor): the backbone is not built twice.
    # Never pickled: a job on another machine resolves (and loads the weights) there.
    prepared: Prepared | None = field(default=None, repr=False, compare=False)
    # --no-keep-features (spec.keep_features False): whether this job deletes its cache entries
    # once its cells are logged (False: a later job reading the same entries does), and the specs
    # of earlier jobs whose entries it deletes too (``share_features``)
    deletes_features: bool = True
    group_specs: list[RunSpec] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "prepared": None}

    def extraction_jobs(self, parts: int) -> list[ExtractJob]:
        """This job's extraction split over ``parts`` array tasks (task k writes shards k mod n)."""
        return [ExtractJob(self.spec, self.options, k, parts) for k in range(parts)]

    def finished(self, experiment_id: str, prepared: Prepared) -> dict[str, RunRecord]:
        """The finished records of this job's cells, by identity (none with ``force``)."""
        from bench.results.runs import find_records

        identities = [c.identity for c in prepared.run.cells]
        return {} if self.options.force else {
            r.identity: r for r in find_records([experiment_id], identities)}

    def __call__(self) -> list[RunRecord]:
        from bench.features.cache import reading
        from bench.run.spec import resolve
        from bench.results.claims import cell_lock

        experiment_id = _experiment(self.options)
        job_started = time.time()  # the first computed cell's run covers the extraction too
        prepared = self.prepared or resolve(self.spec, self.options)
        cells = prepared.run.cells
        identities = [c.identity for c in cells]

        def logged() -> dict[str, RunRecord]:
            return self.finished(experiment_id, prepared)

        done = logged()
        if all(c.identity in done for c in cells):
            self._release_features(prepared)
            return [done[c.identity] for c in cells]
        # One process at a time computes these cells, wherever it runs: the lock lives in the
        # tracking store with the results. An identical run started meanwhile waits there, then
        # finds them logged and reuses them (no second extraction, no second result).
        # the entries are held from extraction to the last logged cell: no other run's
        # --no-keep-features (or `bench cache rm`) removes them meanwhile
        with cell_lock(experiment_id, identities), contextlib.ExitStack() as held:
            done = logged()
            if all(c.identity in done for c in cells):
                return [done[c.identity] for c in cells]
            heard = extraction_notice(prepared, self.options)  # its refusals write nothing
            held.enter_context(reading(job_entries(prepared, self.options)))
            reports = extract_features(prepared, self.options, heard)
            records = []
            for cell in cells:
                if cell.identity in done:
                    records.append(done[cell.identity])
                    continue
                started = time.time()
                records.append(self._evaluate(prepared, cell, reports, experiment_id,
                                              job_started if len(records) == 0 else started))
        self._release_features(prepared)
        return records

    def _release_features(self, prepared: Prepared) -> None:
        """With ``--no-keep-features``, once every cell is logged: delete the cache entries this
        job and the earlier jobs of its group read (a failed cell raised before: kept), but
        skip, and say so, those another run is reading (it deletes them itself if it was
        started with --no-keep-features; they are kept otherwise)."""
        if self.spec.keep_features or not self.deletes_features:
            return
        from bench.features.cache import FeatureCache
        from bench.run.costs import size
        from bench.run.spec import resolve

        cache = FeatureCache(self.options.cache_dir)
        runs = [prepared, *(resolve(spec, self.options, backbone=prepared.backbone)
                            for spec in self.group_specs)]
        found = {e.key: e for p in runs for e in job_entries(p, self.options) if e.exists()}
        sizes = {key: e.size_bytes() for key, e in found.items()}
        kept = [key for key, entry in found.items() if not cache.remove(entry)]
        gone = [key for key in found if key not in kept]
        if gone:
            print(f"deleted {len(gone)} cache entries ({size(sum(sizes[k] for k in gone))}) of "
                  f"{job_label(self.spec)}: --no-keep-features", file=sys.stderr, flush=True)
        if kept:
            print(f"kept {len(kept)} cache entries ({size(sum(sizes[k] for k in kept))}) of "
                  f"{job_label(self.spec)} that another run is reading: --no-keep-features "
                  "skips them (`bench cache rm` once it has finished)", file=sys.stderr,
                  flush=True)


    def _evaluate(self, prepared: Prepared, cell: ResolvedCell, reports: dict[str, Any],
                  experiment_id: str, run_started: float) -> RunRecord:
        from bench.paths import tracking_uri
        from bench.heads.memory import resolve_budget
        from bench.protocol import evaluate, head_kind
        from bench.stats import bootstrap_intervals
        from bench.results.outbox import save_pending
        from bench.results.runs import log_record, supersede
        from bench.results.store import TrackingError

        run = prepared.run
        kind = head_kind(run.spec.head)
        entries = {p.name: [reports[p.name].entries[r] for r in cell.features]
                   for p in run.parts}
        views = {s: [entries[p.name] for p in run.parts if p.split == s] for s in SPLITS
                 if s != "train" or not run.spec.online}  # online: train is never cached
        data = _probe_data(views, kind.inputs == "maps", run.num_classes,
                           prepared.task.split("train").items,
                           resolve_budget(self.options.memory_budget, prepared.device))
        if run.spec.online:
            from bench.run.online import online_trainer

            data, trainer = online_trainer(prepared, cell, data, self.options)
        else:
            trainer = kind.make_trainer(head_config(run.spec),
                                        prepared.device, run.precision, self.options.progress,
                                        run.groups)
        probe_started = time.time()
        result = evaluate(trainer, data, run.headline, kind.widen)
        if run.spec.online:
            trainer.resume.finish()  # computed: a rerun reuses the result, not the state
        probe_seconds = time.time() - probe_started
        bootstrap_started = time.time()
        predictions = result.predictions
        intervals = bootstrap_intervals(predictions, BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
        record = RunRecord.from_result(
            run, cell, result, intervals=intervals,
            seconds={"probe": probe_seconds, "bootstrap": time.time() - bootstrap_started},
            cache_keys={s: [e.key for e in es] for s, es in entries.items()},
            feature_shapes=[e.feature_shape() for e in views["val"][0]],
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


def _experiment(options: RunOptions) -> str:
    """The experiment a job logs to, in the tracking store its driver reads."""
    import os

    from bench.results.store import ensure_experiment

    if options.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = options.tracking_uri
    return options.experiment_id or ensure_experiment(options.suite)


@dataclass
class SharedJob(_Requeueable):
    """Jobs of one backbone and task whose heads read different feature points (a paper's
    linear, mlp and attention cells): every point those with cells to compute need, in one
    backbone pass per split, then each job on the filled cache. With an extraction array
    (SLURM), each job's points are extracted by array tasks of their own."""

    jobs: list[BenchJob]

    @property
    def spec(self) -> RunSpec:  # what labels and failure messages name
        return self.jobs[0].spec

    @property
    def options(self) -> RunOptions:
        return self.jobs[0].options

    @options.setter
    def options(self, value: RunOptions) -> None:
        for job in self.jobs:
            job.options = value

    def extraction_jobs(self, parts: int) -> list[ExtractJob]:
        return [part for job in self.jobs for part in job.extraction_jobs(parts)]

    def __call__(self) -> list[RunRecord]:
        from bench.run.spec import resolve

        experiment_id = _experiment(self.options)
        built = next((job.prepared.backbone for job in self.jobs if job.prepared), None)
        for job in self.jobs:  # the backbone is built once
            job.prepared = job.prepared or resolve(job.spec, job.options, backbone=built)
            built = job.prepared.backbone
        todo = [job for job in self.jobs if {c.identity for c in job.prepared.run.cells}
                - set(job.finished(experiment_id, job.prepared))]
        if len(todo) > 1:
            from bench.features.cache import reading

            requests = list(dict.fromkeys(request for job in todo
                                          for request in job.prepared.run.requests))
            heard = extraction_notice(todo[0].prepared, self.options, requests,
                                      [job.prepared for job in todo])
            with reading(e for job in todo for e in job_entries(job.prepared, self.options)):
                extract_features(todo[0].prepared, self.options, heard, requests=requests)
        return [record for job in self.jobs for record in job()]


def bench_jobs(jobs: list[Any]) -> list[BenchJob]:
    """The ``BenchJob``s of a plan's jobs, a ``SharedJob``'s own jobs in its place."""
    return [one for job in jobs for one in (job.jobs if isinstance(job, SharedJob) else [job])]


def share_features(jobs: list[BenchJob], sequential: bool) -> None:
    """Jobs with ``--no-keep-features`` that read the same cache entries (one backbone and task
    with the same arguments, precision and cache dtype: several heads or seeds) leave the
    deletion to the last of them, which deletes every one's entries; jobs that run at the same
    time could delete under each other, so on a parallel executor that is refused."""
    from bench.digest import json_digest

    groups: dict[str, list[BenchJob]] = {}
    for job in jobs:
        s = job.spec
        if not s.keep_features:
            key = json_digest([s.backbone, s.task, s.backbone_args, s.task_args, s.precision,
                               s.cache_dtype, s.skip_corrupt])
            groups.setdefault(key, []).append(job)
    for group in groups.values():
        if len(group) > 1 and not sequential:
            raise UsageError(
                f"--no-keep-features: {len(group)} jobs read the features of "
                f"{group[0].spec.backbone} x {group[0].spec.task} (several heads or seeds) and "
                "this executor runs them at once, so one could delete them under another; use "
                "--executor local, or keep the features")
        for job in group[:-1]:
            job.deletes_features = False
        group[-1].group_specs = [job.spec for job in group[:-1]]


def _probe_data(entries: dict[str, list[list[Any]]], maps: bool, num_classes: int,
                train_items: list[Any], memory_budget: int | None = None):
    """Features of each split as the head reads them: memory-mapped cache shards at their stored
    precision, read by the head a minibatch (or, within ``memory_budget``, a split) at a time;
    the names of the train rows kept (few-shot draws are chosen by name). ``entries``: split ->
    its views (one, or train's augmented views: ``ProbeData.views``) -> the cell's entries."""
    import numpy as np

    from bench.protocol import ProbeData

    features: dict[str, Any] = {}
    labels: dict[str, Any] = {}
    train_views: list[Any] = []
    for split, views in entries.items():
        loaded = [[e.open() for e in view] for view in views]
        # Entries written at different times may have left out different corrupt items.
        keep = np.logical_and.reduce([mask for view in loaded for _, _, mask in view])
        labels[split] = _kept(loaded[0][0][1], keep)
        if maps:
            arrays = [{e.manifest["fields"]["layer"]: _kept(x, keep)
                       for e, (x, _, _) in zip(view, opened)}
                      for view, opened in zip(views, loaded)]
        else:
            arrays = [_kept(opened[0][0], keep) for opened in loaded]
        features[split] = arrays[0]
        if split == "train":
            train_items = [item for item, kept in zip(train_items, keep) if kept]
            train_views = arrays if len(arrays) > 1 else []
    return ProbeData(features, labels, num_classes, train_items, memory_budget=memory_budget,
                     views=train_views)


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
