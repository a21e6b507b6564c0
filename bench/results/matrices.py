"""Similarity matrices in the tracking store (``bench.run.similarity_run``): one run per matrix,
under the same identity rules as results but their own kind, so leaderboards never see them."""

from __future__ import annotations

from bench.results import record as names
from bench.results.record import RunRecord
from bench.results.runs import supersede
from bench.results.store import search


class SimilarityRecord(RunRecord):
    """A similarity matrix logged like a result, under its own kind (leaderboards never see it)."""

    def to_tags(self) -> dict[str, str]:
        return super().to_tags() | {names.KIND: names.SIMILARITY}


def find_similarity(experiment_id: str, identity: str | None = None) -> list[RunRecord]:
    """Finished, not superseded similarity runs of the current schema (of one identity), newest
    first."""
    filter_string = (names.identity_filter(identity) if identity is not None else
                     f"tags.`{names.KIND}` = '{names.SIMILARITY}' and attributes.status = 'FINISHED'")
    found = [RunRecord.from_mlflow(run) for run in search([experiment_id], filter_string)
             if run.data.tags.get(names.KIND) == names.SIMILARITY]
    return [r for r in found if r.schema == names.RESULT_SCHEMA and not r.superseded_by]


def supersede_similarity(experiment_id: str, record: RunRecord) -> list[str]:
    """Mark older similarity runs of ``record``'s slot (another identity) superseded by it."""
    return supersede(experiment_id, record, names.SIMILARITY)
