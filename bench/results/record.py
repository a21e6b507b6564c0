"""The result record: the one owner of every MLflow name bench writes or reads.

A ``RunRecord`` is one result cell, built from a computed result in one place (``from_result``),
written as ``to_params``, ``to_tags``, ``to_metrics`` and ``artifacts`` and read back in one place
(``from_mlflow``) by resume, leaderboards and figures; no other module spells a tag, param, metric
or artifact name. This module is pure: moving records in and out of MLflow is the store modules' (``bench.results.store``).

| MLflow | names |
| --- | --- |
| run | named by ``RunRecord.label`` (``pixels image/16 linear digits``: the UI's first column tells runs apart) |
| tags | ``mlflow.note.content`` (the run's description in the UI: ``94.71 ± 2.09 (val 96.50), linear, lr 0.003, wd 0, epochs 40``), ``bench.name`` (the record's name, ``pixels/digits/image/16/linear``), ``bench.kind`` (result / leaderboard / report: a paper's report, with ``bench.paper`` and ``bench.report_tables`` / lock: a claim on cells being computed, with ``bench.lock``, ``bench.lock_owner``, ``bench.heartbeat``; a claim whose job raised ends FAILED with ``bench.error``), ``bench.identity`` (the resolved protocol's digest), ``bench.schema``, ``bench.version`` (code: package + git), ``bench.backbone``, ``bench.task``, ``bench.headline``, ``bench.weights_sha256``, ``bench.cache_keys``, ``bench.skipped_count``, ``bench.skipped``, ``bench.superseded_by``, ``bench.slot`` (digest of the schema and the leaderboard slot, for lookups by tag; with the settings digest when the user chose settings), ``bench.settings`` (digest of the settings the user chose, when any: ``bench.run.spec.user_settings``), ``bench.grid_edge`` (a grid axis selected at its end), ``bench.recipe`` (how the head was trained, when not bench's own: ``bench.protocol.RECIPES``) |
| params | ``backbone``, ``task``, ``layer``, ``pool``, ``head``, ``seed``, ``variant`` (heads with variants, e.g. ``5-shot``), ``best.*`` (the selected grid point), ``protocol.*`` (the resolved protocol, flattened) |
| metrics | ``test_top1``, ``test_top5``, ``test_mean_per_class``, their 95% bootstrap intervals ``test_top1_ci95_low``/``_high`` (...), ``val_*`` of the selected point, ``probe_seconds``, ``bootstrap_seconds``; after a several-seed run, ``test_top1_seed_mean``/``_seed_std`` (...) and ``seed_count`` on each of its records |
| artifacts | ``protocol.json``, ``per_class_accuracy.csv``, ``grid.csv``, ``confusion_matrix.png``, ``predictions.npz`` (per test image: top-5 class ids and label, ``bench.stats.Predictions``) |
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.protocol import ProbeResult
    from bench.run.spec import ResolvedCell, ResolvedRun
    from bench.stats import Intervals

from bench.digest import RESULT_SCHEMA  # the record's schema version (every identity digests it)

KIND, IDENTITY, SCHEMA, VERSION = "bench.kind", "bench.identity", "bench.schema", "bench.version"
BACKBONE, TASK, HEADLINE = "bench.backbone", "bench.task", "bench.headline"
WEIGHTS, CACHE_KEYS = "bench.weights_sha256", "bench.cache_keys"
SKIPPED_COUNT, SKIPPED, SUPERSEDED_BY = "bench.skipped_count", "bench.skipped", "bench.superseded_by"
NAME = "bench.name"  # the record's name; the MLflow run name is its shorter ``label``
NOTE = "mlflow.note.content"  # MLflow's run description, shown in the UI
SHORT = {"weight_decay": "wd"}  # best.* keys as the description spells them
SLOT = "bench.slot"
SLOTS_TAGGED = "bench.slots_tagged"  # experiment tag: every result run in it carries SLOT
GRID_EDGE = "bench.grid_edge"
SETTINGS = "bench.settings"
RECIPE = "bench.recipe"  # written only for a recipe other than bench's own
TEST_MANIFEST_PARAM = "protocol.split_manifests.test"
RESULT, LEADERBOARD, LOCK, REPORT = "result", "leaderboard", "lock", "report"
SIMILARITY = "similarity"  # a similarity matrix's run (bench.results.matrices)
PAPER, REPORT_TABLES = "bench.paper", "bench.report_tables"
LOCK_KEY, LOCK_OWNER, HEARTBEAT = "bench.lock", "bench.lock_owner", "bench.heartbeat"
ERROR = "bench.error"  # a failed claim's error, first line
SLOT_PARAMS = ("backbone", "task", "layer", "pool", "head", "seed")
PROTOCOL_JSON, PER_CLASS, GRID, CONFUSION = ("protocol.json", "per_class_accuracy.csv", "grid.csv",
                                             "confusion_matrix.png")
PREDICTIONS = "predictions.npz"
ARTIFACTS = (PROTOCOL_JSON, PER_CLASS, GRID, CONFUSION, PREDICTIONS)
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
    code_version: str = field(default_factory=lambda: current_code_version())
    schema: str = RESULT_SCHEMA
    run_id: str | None = None
    start_time: float | None = None  # epoch seconds
    superseded_by: str | None = None
    reused: bool = False  # read back instead of computed in this process
    variant: str = ""  # the head kind's variant (``HeadKind.variant``, e.g. "5-shot"), or ""
    grid_edge: str = ""  # grid axes selected at an end of their range (``protocol.grid_edges``)
    settings: str = ""  # digest of the settings the user chose ("": none, the defaults)
    test_manifest: str = ""  # the test split's manifest digest: what the test set was
    recipe: str = "bench"  # how the head was trained (bench.protocol.RECIPES)

    @property
    def slot(self) -> tuple[str, ...]:
        """What the user's leaderboard cell is: a newer identity in the same slot supersedes."""
        return (self.backbone, self.task, self.layer, self.pool, self.head, str(self.seed),
                self.variant)

    @property
    def slot_key(self) -> str:
        """The ``bench.slot`` tag: one value per slot, schema and chosen settings, safe in a
        search filter. Runs that chose no setting keep the key they had before settings were
        recorded, so a default run still supersedes runs logged then."""
        return _slot_key(self.schema, self.slot, self.settings)

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The 95% bootstrap interval of ``test_{metric}`` (None for records logged before)."""
        low, high = ci_names(metric)
        if low not in self.metrics or high not in self.metrics:
            return None
        return self.metrics[low], self.metrics[high]

    @property
    def label(self) -> str:
        """The MLflow run name: what tells runs apart first, since the UI's first column shows
        about 20 characters (``pixels image/16 linear digits``, ``... seed 1``, ``... 5-shot``)."""
        extra = (f" {self.variant}" if self.variant else "") + (
            f" seed {self.seed}" if self.seed else "")
        return f"{self.backbone} {self.layer}/{self.pool} {self.head} {self.task}{extra}"

    def description(self) -> str:
        """The run's one-line description (MLflow's run note): ``94.71 ± 2.09 (val 96.50),
        linear, lr 0.003, wd 0, epochs 40``."""
        value = self.metrics.get(f"test_{self.headline}", float("nan"))
        interval = self.interval(self.headline)
        shown = f"{value:.2f} ± {(interval[1] - interval[0]) / 2:.2f}" if interval else \
            f"{value:.2f}"
        best = "".join(f", {SHORT.get(k, k)} {v:g}" for k, v in self.best.items())
        return f"{shown} (val {self.val_score:.2f}), {self.head}{best}"

    @property
    def val_score(self) -> float:
        return self.metrics.get(f"val_{self.headline}", self.metrics.get("val_top1", float("nan")))

    # --- writing ------------------------------------------------------------------------------
    def to_tags(self) -> dict[str, str]:
        tags = {
            KIND: RESULT, IDENTITY: self.identity, SCHEMA: self.schema, VERSION: self.code_version,
            BACKBONE: self.backbone, TASK: self.task, HEADLINE: self.headline,
            WEIGHTS: self.weights_sha256, CACHE_KEYS: json.dumps(self.cache_keys)[:MAX_TAG],
            SKIPPED_COUNT: str(self.skipped_count or len(self.skipped)), SLOT: self.slot_key,
            NAME: self.name, NOTE: self.description(),
        }
        if self.skipped:
            tags[SKIPPED] = json.dumps(self.skipped)[:MAX_TAG]
        if self.grid_edge:
            tags[GRID_EDGE] = self.grid_edge[:MAX_TAG]
        if self.settings:
            tags[SETTINGS] = self.settings
        if self.recipe != "bench":
            tags[RECIPE] = self.recipe
        return tags

    def to_params(self) -> dict[str, str]:
        params = {name: str(getattr(self, name)) for name in SLOT_PARAMS}
        if self.variant:
            params["variant"] = self.variant
        params |= {f"best.{k}": str(v) for k, v in self.best.items()}
        return params | _flatten("protocol", self.protocol, {})

    def to_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.items()}

    def protocol_json(self) -> bytes:
        return json.dumps({"identity": self.identity, **self.protocol}, indent=1,
                          default=str).encode()

    def artifacts(self, per_class_csv: str, grid_csv: str, confusion_png: bytes,
                  predictions: bytes) -> dict[str, bytes]:
        """The run's artifact files by name (``ARTIFACTS``)."""
        return {PROTOCOL_JSON: self.protocol_json(), PER_CLASS: per_class_csv.encode(),
                GRID: grid_csv.encode(), CONFUSION: confusion_png, PREDICTIONS: predictions}

    # --- building -----------------------------------------------------------------------------
    @classmethod
    def from_result(cls, run: ResolvedRun, cell: ResolvedCell, result: ProbeResult, *,
                    intervals: Intervals, seconds: dict[str, float],
                    cache_keys: dict[str, list[str]], feature_shapes: list[Any],
                    skipped: list[str], start_time: float) -> RunRecord:
        """The record of one computed cell. ``seconds``: ``probe`` and ``bootstrap`` wall time."""
        metrics = {f"test_{k}": v for k, v in result.test.items()}
        metrics |= {f"val_{k}": v for k, v in result.val.items()}
        metrics |= interval_metrics(intervals)
        metrics |= {PROBE_SECONDS: seconds["probe"], BOOTSTRAP_SECONDS: seconds["bootstrap"]}
        return cls(
            identity=cell.identity,
            name=run.run_name(cell),
            backbone=run.spec.backbone, task=run.spec.task, layer=cell.layer, pool=cell.pool,
            head=run.spec.head, seed=run.spec.seed, headline=run.headline, metrics=metrics,
            best=result.best, weights_sha256=run.weights_sha256, cache_keys=cache_keys,
            skipped=skipped, skipped_count=len(skipped),
            protocol=run.protocol(cell) | {"feature_shapes": feature_shapes,
                                           "settings": run.settings},
            start_time=start_time, variant=run.variant, grid_edge="; ".join(result.edge),
            settings=settings_digest(run.settings), test_manifest=run.split_manifests["test"],
            recipe=run.spec.recipe,
        )

    # --- reading ------------------------------------------------------------------------------
    @classmethod
    def from_mlflow(cls, run: Any) -> RunRecord:
        """The record of an MLflow ``Run`` (from ``MlflowClient.search_runs``)."""
        tags, params = run.data.tags, run.data.params
        best = {k[5:]: _number(v) for k, v in params.items() if k.startswith("best.")}
        return cls(
            identity=tags.get(IDENTITY, ""), name=tags.get(NAME, run.info.run_name),
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
            superseded_by=tags.get(SUPERSEDED_BY), variant=_variant(params),
            grid_edge=tags.get(GRID_EDGE, ""),
            settings=tags.get(SETTINGS, ""), test_manifest=params.get(TEST_MANIFEST_PARAM, ""),
            recipe=tags.get(RECIPE, "bench"),
        )


def _slot_key(schema: str, slot: tuple[str, ...], settings: str) -> str:
    key = [schema, *slot] + ([settings] if settings else [])
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]


def resolved_slot_key(run: ResolvedRun, cell: ResolvedCell) -> str:
    """The ``bench.slot`` key the record of a resolved cell carries (``RunRecord.slot_key``):
    finds the slot's result where the identity resolved here differs from its run's."""
    slot = (run.spec.backbone, run.spec.task, cell.layer, cell.pool, run.spec.head,
            str(run.spec.seed), run.variant)
    return _slot_key(RESULT_SCHEMA, slot, settings_digest(run.settings))


def settings_digest(settings: dict[str, Any]) -> str:
    """The ``bench.settings`` tag of chosen settings; "" when none was chosen (so runs logged
    before the tag existed count as default runs)."""
    if not settings:
        return ""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def to_json(record: RunRecord) -> str:
    """The whole record as JSON (results kept on disk while the tracking store is unreachable)."""
    return json.dumps(asdict(record), indent=1, default=str)


def from_json(text: str) -> RunRecord:
    return RunRecord(**json.loads(text))


def running_filter(identity: str) -> str:
    """Result runs of one identity left RUNNING (their logging process died)."""
    return f"tags.`{IDENTITY}` = {_quoted(identity)} and attributes.status = 'RUNNING'"


def ci_names(metric: str) -> tuple[str, str]:
    """MLflow names of the low and high ends of ``test_{metric}``'s 95% bootstrap interval."""
    return f"test_{metric}_ci95_low", f"test_{metric}_ci95_high"


def interval_metrics(intervals: Any) -> dict[str, float]:
    """A ``bench.stats.Intervals`` (95%, over test images) as record metrics."""
    if round(100 * intervals.confidence) != 95:
        raise ValueError(f"records hold 95% intervals, got {intervals.confidence:.0%}")
    out = {}
    for metric in intervals.point:
        low, high = ci_names(metric)
        out[low], out[high] = intervals.low[metric], intervals.high[metric]
    return out


def seed_metrics(aggregate: Any) -> dict[str, float]:
    """A ``bench.stats.SeedAggregate`` over ``test_*`` metrics as record metrics:
    ``test_top1_seed_mean``, ``test_top1_seed_std``, ..., ``seed_count``."""
    out = {f"test_{m}_seed_mean": aggregate.mean[m] for m in aggregate.mean}
    out |= {f"test_{m}_seed_std": aggregate.std[m] for m in aggregate.std}
    return out | {SEED_COUNT: float(aggregate.seeds)}


def current_code_version() -> str:
    """The package version plus the git commit of the checkout it runs from, when there is one."""
    import bench

    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{bench.__version__}+{sha}" if sha else bench.__version__


def result_filter(status: str = "FINISHED") -> str:
    """MLflow search filter for bench result runs of a status."""
    return f"tags.`{KIND}` = '{RESULT}' and attributes.status = '{status}'"


def identity_filter(identity: str, include_superseded: bool = False) -> str:
    """Finished results of one identity (which digests the schema): a tag lookup, no scan."""
    return _finished(f"tags.`{IDENTITY}` = {_quoted(identity)}", include_superseded)


def slot_filter(slot_key: str) -> str:
    """Finished, not yet superseded results of one slot (``RunRecord.slot_key``)."""
    return _finished(f"tags.`{SLOT}` = {_quoted(slot_key)}", False)


def untagged_slot_filter(kind: str = RESULT) -> str:
    """Runs of ``kind`` logged before the slot tag existed."""
    return f"tags.`{KIND}` = {_quoted(kind)} and tags.`{SLOT}` IS NULL"


def _finished(condition: str, include_superseded: bool) -> str:
    out = f"{condition} and attributes.status = 'FINISHED'"
    return out if include_superseded else f"{out} and tags.`{SUPERSEDED_BY}` IS NULL"


def _quoted(value: str) -> str:
    """A search filter literal (identities and slot keys are digests: never quoted themselves)."""
    if "'" in value:
        raise ValueError(f"a quote cannot be searched for: {value!r}")
    return f"'{value}'"


def lock_key(identities: list[str]) -> str:
    """The ``bench.lock`` key of a claim on these result cells (one job's)."""
    from bench.digest import json_digest

    return json_digest(sorted(identities))[:32]


def ended_lock_filter(key: str) -> str:
    """Claims on the cells ``key`` digests that ended without their results: FAILED (the job
    raised, ``bench.error`` says what) or KILLED (its process died; a waiter marked it)."""
    return (f"tags.`{KIND}` = '{LOCK}' and tags.`{LOCK_KEY}` = {_quoted(key)} "
            "and attributes.status != 'RUNNING'")


def lock_tags(key: str, owner: str) -> dict[str, str]:
    """Tags of a claim on result cells (``bench.results.claims.cell_lock``); ``key`` digests them."""
    return {KIND: LOCK, LOCK_KEY: key, LOCK_OWNER: owner, HEARTBEAT: "0"}


def lock_filter(key: str) -> str:
    """Live claims (RUNNING) on the cells ``key`` digests."""
    return (f"tags.`{KIND}` = '{LOCK}' and tags.`{LOCK_KEY}` = {_quoted(key)} "
            "and attributes.status = 'RUNNING'")


def unfinished_filter(identity: str) -> str:
    """Result runs of one identity that did not finish: FAILED, KILLED (its process died while
    logging) or still RUNNING."""
    return f"tags.`{IDENTITY}` = {_quoted(identity)} and attributes.status != 'FINISHED'"


def report_tags(paper: str, tables: list[str], content: str, note: str) -> dict[str, str]:
    """Tags of a paper's report run: ``content`` digests what it says (its identity)."""
    return {KIND: REPORT, PAPER: paper, REPORT_TABLES: ",".join(tables), IDENTITY: content,
            NOTE: note}


def report_name(paper: str, tables: list[str], all_tables: bool) -> str:
    return f"report {paper}" + ("" if all_tables else f" ({', '.join(tables)})")


def report_filter(paper: str, tables: list[str]) -> str:
    """Finished, not superseded reports of one paper and table selection."""
    return _finished(f"tags.`{KIND}` = '{REPORT}' and tags.`{PAPER}` = {_quoted(paper)} and "
                     f"tags.`{REPORT_TABLES}` = {_quoted(','.join(tables))}", False)


def leaderboard_filter() -> str:
    return f"tags.`{KIND}` = '{LEADERBOARD}'"


def leaderboard_tags() -> dict[str, str]:
    return {KIND: LEADERBOARD}


def superseded_tags(identity: str) -> dict[str, str]:
    return {SUPERSEDED_BY: identity}


# --- what the MLflow UI shows of an experiment (MLflow 3's own tags and routes) ----------------
# MLflow 3 opens an experiment on its GenAI traces overview, and its runs table shows no metric
# until columns are picked. The UI takes the landing tab from the experiment's kind (MLflow 3.0
# to 3.x) or from its workflow switch (``workflowType``: 3.17 on, a browser setting the link
# can set), and a runs table's columns from a saved view (an experiment tag the "Views" menu
# lists, opened by ``viewStateShareKey``). bench's experiments carry all three.
EXPERIMENT_KIND = "mlflow.experimentKind"
MACHINE_LEARNING_KIND = "custom_model_development"  # the UI's "Machine learning" experiments
SAVED_VIEW = "mlflow.sharedViewState."  # + the view's id: a saved view of the runs table
RESULTS_VIEW = "bench-results"
RESULTS_VIEW_NAME = "bench results"


def results_view_path(experiment_id: str) -> str:
    """The UI route (after the server's address) of an experiment's runs table in the results
    view: each run's description (headline ± interval, validation score, chosen point) and the
    headline metrics as columns."""
    return (f"#/experiments/{experiment_id}/runs?viewStateShareKey={RESULTS_VIEW}"
            "&workflowType=machine_learning")


def experiment_ui_tags(headlines: list[str], created_ms: int) -> dict[str, str]:
    """Tags that make the UI show an experiment's results: its kind (landing on the runs table)
    and the results view (the runs' descriptions and the test metrics ``headlines``), in the
    envelope MLflow's saved views use (``{name, createdAt, state}``, state a JSON string)."""
    state = {"selectedColumns": ["attributes.`Description`",
                                 *(f"metrics.`test_{name}`" for name in headlines)]}
    view = {"name": RESULTS_VIEW_NAME, "createdAt": created_ms, "state": json.dumps(state)}
    return {EXPERIMENT_KIND: MACHINE_LEARNING_KIND, SAVED_VIEW + RESULTS_VIEW: json.dumps(view)}


def experiment_note(experiment_id: str) -> str:
    """The experiment's description (shown above whichever tab the UI opens), linking the
    results view."""
    return (f"[Open the results table]({results_view_path(experiment_id)}): each run's headline "
            f"± its 95% interval (the runs table's view \"{RESULTS_VIEW_NAME}\").")


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        out[prefix] = text[:MAX_PARAM]
    return out


def _variant(params: dict[str, str]) -> str:
    """The record's variant; runs logged before variants carried ``shots`` (few-shot) instead."""
    if "variant" in params:
        return params["variant"]
    return f"{params['shots']}-shot" if params.get("shots", "0") != "0" else ""


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")
