"""The outbox: results computed but not logged (the store was down or full), kept on disk
until ``bench sync`` logs them. Nothing computed is lost to a failing store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.paths import pending_dir
from bench.results import record as names
from bench.results.record import RunRecord
from bench.results.runs import find_records, log_record, supersede
from bench.results.store import TrackingError, ensure_experiment


def save_pending(suite: str, record: RunRecord, artifacts: dict[str, bytes]) -> Path:
    """Keep a result that could not be logged on disk, for ``bench sync``; its folder.

    Written into a temporary folder renamed into place once complete, so a full disk or a kill
    never leaves a folder that looks like a result; on failure the temporary folder is removed
    and a ``TrackingError`` says why in one line.
    """
    import errno

    from bench.locks import temp_name

    folder = pending_dir() / record.identity
    tmp = temp_name(folder)
    try:
        (tmp / "artifacts").mkdir(parents=True)
        for name, content in artifacts.items():
            (tmp / "artifacts" / name).write_bytes(content)
        (tmp / "suite.txt").write_text(suite)
        (tmp / "record.json").write_text(names.to_json(record))
        if folder.exists():  # an older copy of the same result
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = ("no space left on device" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                  else e.strerror or str(e))
        raise TrackingError(f"cannot keep the result in {pending_dir()}: {reason}; free space "
                            "or set BENCH_RESULTS to a writable disk") from e
    return folder


def remove_incomplete_pending() -> list[Path]:
    """Remove kept results that are not complete (no readable record.json: written by a bench
    that died or ran out of space mid-write; temporary folders whose writer is gone); their
    paths. Temporary folders of writers still running are left alone."""
    from bench.locks import stale_temp

    removed = []
    for folder in sorted(pending_dir().glob("*")) if pending_dir().is_dir() else []:
        if folder.name.startswith("."):
            incomplete = folder.name.endswith(".tmp") and stale_temp(folder)
        else:
            try:
                names.from_json((folder / "record.json").read_text())
                incomplete = False
            except (OSError, ValueError, TypeError):
                incomplete = True
        if incomplete:
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink()
            removed.append(folder)
    return removed


def sync_pending() -> list[RunRecord]:
    """Log every result kept on disk (``save_pending``) and remove it; the records logged."""
    logged = []
    for folder in sorted(pending_dir().glob("[!.]*/record.json")):
        folder = folder.parent
        record = names.from_json((folder / "record.json").read_text())
        experiment_id = ensure_experiment((folder / "suite.txt").read_text())
        if not find_records([experiment_id], [record.identity]):
            artifacts = {p.name: p.read_bytes() for p in (folder / "artifacts").iterdir()}
            record.run_id = log_record(experiment_id, record, artifacts)
            supersede(experiment_id, record)
            logged.append(record)
        shutil.rmtree(folder)
    return logged
