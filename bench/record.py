"""The result record: the one owner of every MLflow name bench writes or reads.

A ``RunRecord`` is one result cell. It is written to MLflow in one place (``to_params``,
``to_tags``, ``to_metrics``, ``ARTIFACTS``) and read back in one place (``from_mlflow``) by resume,
leaderboards and figures; no other module spells a tag or param name.

| MLflow | names |
| --- | --- |
| tags | ``bench.kind`` (result / leaderboard), ``bench.identity`` (the resolved protocol's digest), ``bench.schema``, ``bench.version`` (code: package + git), ``bench.backbone``, ``bench.task``, ``bench.headline``, ``bench.weights_sha256``, ``bench.cache_keys``, ``bench.skipped_count``, ``bench.skipped``, ``bench.superseded_by`` |
| params | ``backbone``, ``task``, ``layer``, ``pool``, ``head``, ``seed``, ``best.*`` (the selected grid point), ``protocol.*`` (the resolved protocol, flattened) |
| metrics | ``test_top1``, ``test_top5``, ``test_mean_per_class``, ``val_*`` of the selected point, ``probe_seconds`` |
| artifacts | ``protocol.json``, ``per_class_accuracy.csv``, ``grid.csv``, ``confusion_matrix.png`` |
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
ARTIFACTS = ("protocol.json", "per_class_accuracy.csv", "grid.csv", "confusion_matrix.png")
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
    seed: int
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

    @property
    def slot(self) -> tuple[str, ...]:
        """What the user's leaderboard cell is: a newer identity in the same slot supersedes."""
        return (self.backbone, self.task, self.layer, self.pool, self.head, str(self.seed))

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
            superseded_by=tags.get(SUPERSEDED_BY),
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
