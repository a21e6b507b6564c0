"""The queries the study layer makes of the store (``bench.results``): a paper's
results by identity, the slot's current result where the identity has none, the runs that ended
without a result, and finished similarity matrices. Reading only; the report's own run is logged
by ``bench.study.report``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.results.record import RunRecord
    from bench.study.plan import PaperPlan


@dataclass
class Found:
    """What the suite holds of a plan's cells, by the identity resolved here."""

    experiments: list[str]
    records: dict[str, RunRecord] = field(default_factory=dict)  # the newest finished result
    by_slot: dict[str, RunRecord] = field(default_factory=dict)  # its slot's, another identity
    unfinished: dict[str, Any] = field(default_factory=dict)  # UnfinishedRun of a cell with none


def find_results(plan: PaperPlan, suite: str) -> Found:
    """Each resolved cell's finished result, else its slot's current one, else the run or the
    job's claim that ended without it."""
    from bench.results.claims import ended_claims
    from bench.results.runs import find_records, find_slot_records, unfinished_runs
    from bench.results.store import experiment_ids
    from bench.study.plan import resolved_runs, slot_keys

    found = Found(experiment_ids([suite]))
    ids = found.experiments
    identities = [p.identity for p in plan.cells.values() if p.identity]
    for record in find_records(ids, identities):  # newest first: the first of an identity wins
        found.records.setdefault(record.identity, record)
    slots = {i: key for i, key in slot_keys(plan).items() if i not in found.records}
    current = find_slot_records(ids, slots.values())
    found.by_slot = {i: current[key] for i, key in slots.items() if key in current}
    missing = [i for i in identities if i not in found.records]
    jobs = [[c.identity for c in run.cells] for run in resolved_runs(plan)]
    found.unfinished = ended_claims(ids, [j for j in jobs if set(j) & set(missing)])
    found.unfinished |= unfinished_runs(ids, missing)
    return found


def finished_matrices(experiment_ids: list[str], identity: str) -> list[RunRecord]:
    """The finished similarity runs of one identity, newest first."""
    from bench.results.matrices import find_similarity

    return [r for e in experiment_ids for r in find_similarity(e, identity)]
