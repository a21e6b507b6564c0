"""The job boundary: a picklable spec in, metrics out. Executors (local, submitit, SLURM) run it.

A ``BenchJob`` names a backbone and a task (by registry name, with overrides), the feature
requests (layer, pool) and the probe protocol. Running it extracts every request's features in one
backbone pass per split (or reuses them from the cache), probes each (layer, pool) and logs one
MLflow run per cell. ``ExtractJob`` does the extraction alone (for SLURM arrays: task k of n).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class FeatureJob:
    """What every job needs to produce features: the backbone, the data, how to run."""

    backbone: str
    task: str
    layers: list[str] = field(default_factory=list)  # empty: the backbone's default layers
    pools: list[str] = field(default_factory=list)  # empty: the backbone's default pool
    backbone_args: dict[str, Any] = field(default_factory=dict)
    task_args: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    workers: int = 2
    shard_size: int = 4096
    skip_corrupt: bool = False
    cache_dir: str | None = None
    progress: bool = True
    compile: bool = False  # torch.compile the backbone's forward (same features, same cache key)
    decode: str = "cpu"  # "gpu": JPEG files decoded with nvJPEG on the device (bench.pipeline)

    def cells(self) -> list[tuple[str, str]]:
        """(layer, pool) as given ('' = the preset's default), in the order ``build`` resolves."""
        return [(layer, pool) for layer in self.layers or [""] for pool in self.pools or [""]]

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on preemption or timeout: requeue the same job, which resumes
        extraction at the first missing shard and skips cells already logged."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def build(self):
        """(backbone, task, requests, device, precision), validated before any heavy work."""
        from bench.extract import resolve_device, resolve_precision
        from bench.registry import backbones, tasks
        from bench.task import DatasetError

        task = tasks.create(self.task, **self.task_args)
        problems = task.verify(full=False)
        if problems:
            raise DatasetError(f"task {self.task!r}: " + "\n".join(problems))
        backbones.entry(self.backbone)  # unknown names fail before the model is built
        backbone = backbones.create(self.backbone, **self.backbone_args)
        from bench.backbone import check_pool

        requests = []
        for layer, pool in self.cells():
            canonical = backbone.canonical_layer(layer or backbone.default_layers[0])
            pool = pool or backbone.default_pool
            check_pool(backbone.feature_point(canonical), pool)
            requests.append((canonical, pool))
        device = resolve_device(self.device)
        return backbone, task, requests, device, resolve_precision(self.precision, device)

    def extract_all(self, array_index: int = 0, array_size: int = 1):
        from bench.cache import FeatureCache
        from bench.extract import extract

        backbone, task, requests, device, precision = self.build()
        cache = FeatureCache(self.cache_dir)
        reports = {}
        for split in SPLIT_NAMES:
            reports[split] = extract(
                backbone, task.split(split), requests, cache, task.config,
                device=device, precision=precision, batch_size=self.batch_size,
                workers=self.workers, shard_size=self.shard_size, skip_corrupt=self.skip_corrupt,
                array_index=array_index, array_size=array_size, progress=self.progress,
                compile=self.compile, decode=self.decode,
            )
        return backbone, task, requests, device, precision, reports


@dataclass
class ExtractJob(FeatureJob):
    array_index: int = 0
    array_size: int = 1

    def __call__(self) -> dict[str, Any]:
        *_, reports = self.extract_all(self.array_index, self.array_size)
        return {s: {"shards_written": r.shards_written, "images": r.images_processed,
                    "skipped": r.skipped} for s, r in reports.items()}


@dataclass
class BenchJob(FeatureJob):
    head: str = "linear"
    probe: dict[str, Any] = field(default_factory=dict)  # ProbeConfig overrides
    seed: int = 0
    experiment_id: str | None = None
    suite: str = "bench"
    tracking_uri: str | None = None  # passed explicitly so SLURM jobs log where the driver reads
    force: bool = False  # recompute cells that already have a finished run

    def cell_id(self, layer: str, pool: str) -> str:
        """Identity of one result cell, as given by the user: a rerun of the same command skips it."""
        from bench.task import json_digest

        return json_digest({
            "backbone": self.backbone, "backbone_args": self.backbone_args, "task": self.task,
            "task_args": self.task_args, "layer": layer, "pool": pool, "head": self.head,
            "probe": self.probe, "seed": self.seed, "precision": self.precision,
        })[:20]

    def __post_init__(self) -> None:
        from bench.heads import HEADS as MAP_HEADS

        if self.head in MAP_HEADS and not self.pools:
            self.pools = ["map16"]  # attention heads read lightly pooled maps

    def probe_config(self):
        """ProbeConfig for the batched grid heads, HeadConfig for the attention heads."""
        from bench.heads import HEADS as MAP_HEADS
        from bench.heads import HeadConfig
        from bench.probe import ProbeConfig

        config = HeadConfig if self.head in MAP_HEADS else ProbeConfig
        return config(head=self.head, seed=self.seed, **self.probe)

    def probe_cells(self) -> list[tuple[str, str, list[int]]]:
        """(layer label, pool, indices into cells()): one result each.

        DifFormer fuses every layer (blocks x timesteps) of a pool into one cell; every other head
        probes each (layer, pool) on its own.
        """
        cells = self.cells()
        if self.head != "difformer":
            return [(layer, pool, [i]) for i, (layer, pool) in enumerate(cells)]
        pools = list(dict.fromkeys(pool for _, pool in cells))
        return [("+".join(layer for layer, p in cells if p == pool), pool,
                 [i for i, (_, p) in enumerate(cells) if p == pool]) for pool in pools]

    def __call__(self) -> list[dict[str, Any]]:
        import os

        from bench.tracking import ensure_experiment, finished_cells

        if self.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        cfg = self.probe_config()  # bad values fail before any work
        experiment_id = self.experiment_id or ensure_experiment(self.suite)
        ids = [self.cell_id(layer, pool) for layer, pool, _ in self.probe_cells()]
        done = {} if self.force else finished_cells(experiment_id, ids)
        if len(done) == len(ids):
            return [done[i] for i in ids]
        job_started = time.time()  # the first cell's run covers the extraction too
        backbone, task, requests, device, precision, reports = self.extract_all()
        skipped = [s for r in reports.values() for s in r.skipped]
        results = []
        for cell, (_, _, members) in zip(ids, self.probe_cells()):
            if cell in done:
                results.append(done[cell])
                continue
            chosen = [requests[i] for i in members]
            entries = {s: [reports[s].entries[r] for r in chosen] for s in SPLIT_NAMES}
            started = time.time()
            result = self._fit(cfg, chosen, entries, task, device)
            results.append(self._log(backbone, task, chosen, precision, cfg, result, entries,
                                     skipped, started, experiment_id, cell,
                                     job_started if not results else started))
        return results

    def _fit(self, cfg, requests, entries, task, device):
        from bench.heads import HEADS as MAP_HEADS
        from bench.heads import fit_head
        from bench.probe import fit_probe

        maps = self.head in MAP_HEADS
        feats: dict[str, Any] = {}
        labels: dict[str, Any] = {}
        for split, split_entries in entries.items():
            # stored fp16 (half the memory); maps stay on disk, read a minibatch at a time
            loaded = [e.open() if maps else e.load(dtype=None) for e in split_entries]
            keep = loaded[0][2]
            labels[split] = _kept(loaded[0][1], keep)
            if maps:
                feats[split] = {layer: _kept(x, keep)
                                for (layer, _), (x, _, _) in zip(requests, loaded)}
            else:
                feats[split] = _kept(loaded[0][0], keep)
        fit = fit_head if maps else fit_probe
        return fit(feats, labels, task.num_classes, cfg, task.headline_metric, device=device,
                   progress=self.progress)

    def _log(self, backbone, task, requests, precision, cfg, result, entries, skipped,
             probe_started, experiment_id, cell, run_started) -> dict[str, Any]:
        from bench.tracking import log_run

        layer = "+".join(layer for layer, _ in requests)
        pool = requests[0][1]
        metrics = {f"test_{k}": v for k, v in result.test.items()}
        metrics |= {f"val_{k}": v for k, v in result.val.items()}
        metrics["probe_seconds"] = time.time() - probe_started
        params = {
            "backbone": self.backbone, "task": self.task, "layer": layer, "pool": pool,
            "head": self.head, "precision": precision, "seed": self.seed,
            "feature_shape": [e.feature_shape() for e in entries["train"]],
            "backbone_config": backbone.config, "task_config": task.config,
            "best": result.best, **cfg.as_params(),
        }
        tags = {
            "bench.kind": "result",
            "bench.cell": cell,
            "bench.backbone": self.backbone,
            "bench.task": self.task,
            "bench.headline": task.headline_metric,
            "bench.cache_key": entries["test"][0].key,
            "bench.cache_keys": json.dumps({s: [e.key for e in es] for s, es in entries.items()}),
            "bench.weights_sha256": backbone.weights_digest(),
            "bench.skipped_count": str(len(skipped)),
        }
        if skipped:
            tags["bench.skipped"] = json.dumps(skipped)[:5000]
        run_name = f"{self.backbone}/{self.task}/{layer}/{pool}/{self.head}"
        artifacts = {
            "config.json": json.dumps(asdict(self) | {"resolved": params}, indent=1,
                                      default=str).encode(),
            "per_class_accuracy.csv": _per_class_csv(task, result).encode(),
            "grid.csv": _grid_csv(result.grid).encode(),
            "confusion_matrix.png": _confusion_png(result.confusion, run_name),
        }
        run_id = log_run(experiment_id, run_name, params, metrics, tags, artifacts, run_started)
        return {"run_id": run_id, "run_name": run_name, "layer": layer, "pool": pool, **metrics,
                "best": result.best, "skipped": len(skipped)}


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
