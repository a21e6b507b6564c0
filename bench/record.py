"""The result record: the one owner of every MLflow name bench writes or reads.

A ``RunRecord`` is one result cell. It is written to MLflow in one place (``to_params``,
``to_tags``, ``to_metrics``, ``ARTIFACTS``) and read back in one place (``from_mlflow``) by resume,
leaderboards and figures; no other module spells a tag or param name.

| MLflow | names |
| --- | --- |
| tags | ``bench.kind`` (result / leaderboard), ``bench.identity`` (the resolved protocol's digest), ``bench.schema``, ``bench.version`` (code: package + git), ``bench.backbone``, ``bench.task``, ``bench.headline``, ``bench.weights_sha256``, ``bench.cache_keys``, ``bench.skipped_count``, ``bench.skipped``, ``bench.superseded_by`` |
| params | ``backbone``, ``task``, ``layer``, ``pool``, ``head``, ``seed``, ``shots`` (few-shot only), ``best.*`` (the selected grid point), ``protocol.*`` (the resolved protocol, flattened) |
| metrics | ``test_top1``, ``test_top5``, ``test_mean_per_class``, their 95% bootstrap intervals ``test_top1_ci95_low``/``_high`` (...), ``val_*`` of the selected point, ``probe_seconds``, ``bootstrap_seconds``; after a several-seed run, ``test_top1_seed_mean``/``_seed_std`` (...) and ``seed_count`` on each of its records |
| artifacts | ``protocol.json``, ``per_class_accuracy.csv``, ``grid.csv``, ``confusion_matrix.png``, ``predictions.npz`` (per test image: top-5 class ids and label, ``bench.stats.Predictions``) |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

KIND, IDENTITY, SCHEMA, VERSION = "bench.kind", "bench.identity", "bench.schema", "bench.version"
BACKBONE, TASK, HEADLINE = "bench.backbone", "bench.task", "bench.headline"
WEIGHTS, CACHE_KEYS = "bench.weights_sha256", "bench.cache_keys"
SKIPPED_COUNT, SKIPPED, SUPERSEDED_BY = "bench.skipped_count", "bench.skipped", "bench.superseded_by"
RESULT, LEADERBOARD = "result", "leaderboard"
SLOT_PARAMS = ("backbone", "task", "layer", "pool", "head", "seed")
PREDICTIONS = "predictions.npz"
ARTIFACTS = ("protocol.json", "per_class_accuracy.csv", "grid.csv", "confusion_matrix.png",
             PREDICTIONS)
TEST_METRICS = ("top1", "top5", "mean_per_class")
PROBE_SECONDS, BOOTSTRAP_SECONDS, SEED_COUNT = "probe_seconds", "bootstrap_seconds", "seed_count"
MAX_PARAM = 6000  # MLflow's limit on a param value
MAX_TAG = 5000


@dataclass
class RunRecord:
    identity: str
    name: str  # backbone/task/layer/pool/head
    backbone: str  # as named (registry name)
    task: str
    layer: str  # canonical; "+"-joined for a fusing head
    pool: str
    head: str
    seed: int  # for the few-shot head, the draw
    headline: str  # the task's headline metric: top1 or mean_per_class
    metrics: dict[str, float]
    best: dict[str, float]
    weights_sha256: str = ""
    cache_keys: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # items the features left out
    skipped_count: int = 0
    protocol: dict[str, Any] = field(default_factory=dict)  # written in full; not read back
    code_version: str = ""
    schema: str = ""
    run_id: str | None = None
    start_time: float | None = None  # epoch seconds
    superseded_by: str | None = None
    reused: bool = False  # read back instead of computed in this process
    shots: int = 0  # few-shot head: images per class (0 for every other head)

    @property
    def slot(self) -> tuple[str, ...]:
        """What the user's leaderboard cell is: a newer identity in the same slot supersedes."""
        return (self.backbone, self.task, self.layer, self.pool, self.head, str(self.seed),
                str(self.shots))

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The 95% bootstrap interval of ``test_{metric}`` (None for records logged before)."""
        low, high = ci_names(metric)
        if low not in self.metrics or high not in self.metrics:
            return None
        return self.metrics[low], self.metrics[high]

    @property
    def val_score(self) -> float:
        return self.metrics.get(f"val_{self.headline}", self.metrics.get("val_top1", float("nan")))

    # --- writing ------------------------------------------------------------------------------
    def to_tags(self) -> dict[str, str]:
        tags = {
            KIND: RESULT, IDENTITY: self.identity, SCHEMA: self.schema, VERSION: self.code_version,
            BACKBONE: self.backbone, TASK: self.task, HEADLINE: self.headline,
            WEIGHTS: self.weights_sha256, CACHE_KEYS: json.dumps(self.cache_keys)[:MAX_TAG],
            SKIPPED_COUNT: str(self.skipped_count or len(self.skipped)),
        }
        if self.skipped:
            tags[SKIPPED] = json.dumps(self.skipped)[:MAX_TAG]
        return tags

    def to_params(self) -> dict[str, str]:
        params = {name: str(getattr(self, name)) for name in SLOT_PARAMS}
        if self.shots:
            params["shots"] = str(self.shots)
        params |= {f"best.{k}": str(v) for k, v in self.best.items()}
        return params | _flatten("protocol", self.protocol, {})

    def to_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.items()}

    def protocol_json(self) -> bytes:
        return json.dumps({"identity": self.identity, **self.protocol}, indent=1,
                          default=str).encode()

    # --- reading ------------------------------------------------------------------------------
    @classmethod
    def from_mlflow(cls, run: Any) -> RunRecord:
        """The record of an MLflow ``Run`` (from ``MlflowClient.search_runs``)."""
        tags, params = run.data.tags, run.data.params
        best = {k[5:]: _number(v) for k, v in params.items() if k.startswith("best.")}
        return cls(
            identity=tags.get(IDENTITY, ""), name=run.info.run_name,
            backbone=tags.get(BACKBONE, params.get("backbone", "")),
            task=tags.get(TASK, params.get("task", "")),
            layer=params.get("layer", ""), pool=params.get("pool", ""),
            head=params.get("head", ""), seed=int(params.get("seed", 0)),
            headline=tags.get(HEADLINE, "top1"), metrics=dict(run.data.metrics), best=best,
            weights_sha256=tags.get(WEIGHTS, ""),
            cache_keys=json.loads(tags.get(CACHE_KEYS, "{}") or "{}"),
            skipped=json.loads(tags.get(SKIPPED, "[]")),
            skipped_count=int(tags.get(SKIPPED_COUNT, 0)),
            code_version=tags.get(VERSION, ""), schema=tags.get(SCHEMA, ""),
            run_id=run.info.run_id, start_time=run.info.start_time / 1000,
            superseded_by=tags.get(SUPERSEDED_BY), shots=int(params.get("shots", 0)),
        )


def to_json(record: RunRecord) -> str:
    """The whole record as JSON (results kept on disk while the tracking store is unreachable)."""
    from dataclasses import asdict

    return json.dumps(asdict(record), indent=1, default=str)


def from_json(text: str) -> RunRecord:
    return RunRecord(**json.loads(text))


def running_filter(identity: str) -> str:
    """Result runs of one identity left RUNNING (their logging process died)."""
    return f"tags.`{IDENTITY}` = '{identity}' and attributes.status = 'RUNNING'"


def ci_names(metric: str) -> tuple[str, str]:
    """MLflow names of the low and high ends of ``test_{metric}``'s 95% bootstrap interval."""
    return f"test_{metric}_ci95_low", f"test_{metric}_ci95_high"


def interval_metrics(intervals: Any) -> dict[str, float]:
    """A ``bench.stats.Intervals`` (95%, over test images) as record metrics."""
    if round(100 * intervals.confidence) != 95:
        raise ValueError(f"records hold 95% intervals, got {intervals.confidence:.0%}")
    out = {}
    for metric in TEST_METRICS:
        low, high = ci_names(metric)
        out[low], out[high] = intervals.low[metric], intervals.high[metric]
    return out


def seed_metrics(aggregate: Any) -> dict[str, float]:
    """A ``bench.stats.SeedAggregate`` over ``test_*`` metrics as record metrics:
    ``test_top1_seed_mean``, ``test_top1_seed_std``, ..., ``seed_count``."""
    out = {f"test_{m}_seed_mean": aggregate.mean[m] for m in aggregate.mean}
    out |= {f"test_{m}_seed_std": aggregate.std[m] for m in aggregate.std}
    return out | {SEED_COUNT: float(aggregate.seeds)}


def add_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Log more metrics on a finished run (e.g. a seed aggregate computed after it)."""
    import time

    from mlflow.entities import Metric

    from bench.tracking import client

    now = int(time.time() * 1000)
    client().log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def load_record(run_id: str) -> RunRecord:
    """The result record of one MLflow run id."""
    from bench.errors import BenchError
    from bench.tracking import client

    try:
        run = client().get_run(run_id)
    except Exception as e:
        raise BenchError(f"no MLflow run {run_id!r} at this tracking URI ({e.__class__.__name__})"
                         "; run ids are listed in the MLflow UI and printed by bench run") from e
    if run.data.tags.get(KIND) != RESULT:
        raise BenchError(f"run {run_id} is not a bench result (a leaderboard run?)")
    return RunRecord.from_mlflow(run)


def load_predictions(run_id: str) -> Any:
    """The run's per-image test predictions (``bench.stats.Predictions``), from its artifact."""
    import os
    import tempfile

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from bench.errors import BenchError
    from bench.stats import Predictions
    from bench.tracking import client

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client().download_artifacts(run_id, PREDICTIONS, tmp)
        except Exception as e:
            raise BenchError(f"run {run_id} has no {PREDICTIONS} artifact (logged before bench "
                             "stored predictions?); re-run it with --force") from e
        try:
            return Predictions.load(path)
        except BenchError as e:
            raise BenchError(f"the stored predictions of run {run_id} cannot be read: "
                             f"{str(e).replace(str(path), PREDICTIONS)}; re-run it with --force") from e


def result_filter(status: str = "FINISHED") -> str:
    """MLflow search filter for bench result runs of a status."""
    return f"tags.`{KIND}` = '{RESULT}' and attributes.status = '{status}'"


def leaderboard_filter() -> str:
    return f"tags.`{KIND}` = '{LEADERBOARD}'"


def leaderboard_tags() -> dict[str, str]:
    return {KIND: LEADERBOARD}


def superseded_tags(identity: str) -> dict[str, str]:
    return {SUPERSEDED_BY: identity}


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        out[prefix] = text[:MAX_PARAM]
    return out


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")
