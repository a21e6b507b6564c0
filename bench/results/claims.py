"""Claims on result cells in the tracking store: one process computes a cell, wherever it runs.

``cell_lock`` holds a job's cells while it computes them (a run of kind ``lock``, with a
heartbeat); ``ended_claims`` tells which claims ended without their results, and why.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.results import record as names
from bench.results.runs import UnfinishedRun
from bench.results.store import client, search, store_lock

LOCK_HEARTBEAT_S = 10.0  # a claim's holder shows it is alive this often
LOCK_STALE_S = 90.0  # a claim whose heartbeat has not moved for this long: its holder died
LOCK_POLL_S = 1.0
LOCK_REPORT_S = 30.0  # a waiting run says so again this often


@contextlib.contextmanager
def cell_lock(experiment_id: str, identities: list[str],
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
              ) -> Iterator[None]:
    """Hold the result cells ``identities`` in the tracking store, where their results live, so
    identical runs anywhere (other results folders, caches or machines) compute them once.

    A claim is a run of kind ``lock`` created, then compared with the live claims of the same
    cells: a process that finds only its own holds the lock; one that finds another withdraws
    (deletes) its claim and waits. Of two claims made at once, whichever looks last sees the
    other's, so at most one holds. The holder updates its claim's heartbeat every
    ``LOCK_HEARTBEAT_S``; a claim whose heartbeat has not moved for ``LOCK_STALE_S`` (by the
    waiter's clock: clocks of machines may disagree) belonged to a process that died, and is
    marked KILLED. A waiting run says whose claim it waits for and for how long, every
    ``LOCK_REPORT_S``. The claim is deleted on release; if the work inside raised, it is kept,
    ended FAILED (KILLED for an interrupt) with the error as ``bench.error``.
    """
    import random
    import socket
    import threading

    mlflow_client = client()
    key = names.lock_key(identities)
    owner = f"{socket.gethostname()} pid {os.getpid()}"
    seen: dict[str, tuple[str, float]] = {}  # claim run id -> (heartbeat, when it last moved)
    started = time.time()
    reported = 0.0

    def live_claims(mine: str | None) -> list[Any]:
        live = []
        for run in search([experiment_id], names.lock_filter(key), mlflow_client):
            run_id, beat = run.info.run_id, run.data.tags.get(names.HEARTBEAT, "")
            if run_id == mine:
                continue
            if seen.get(run_id, ("", 0.0))[0] != beat:
                seen[run_id] = (beat, time.time())
            if time.time() - seen[run_id][1] > LOCK_STALE_S:
                with store_lock():
                    mlflow_client.set_terminated(run_id, "KILLED")
                continue
            live.append(run)
        return live

    while True:
        others = live_claims(None)
        if not others:
            with store_lock():
                mine = mlflow_client.create_run(experiment_id, run_name=f"lock {key[:8]}",
                                                tags=names.lock_tags(key, owner)).info.run_id
            others = live_claims(mine)
            if not others:
                break
            with store_lock():
                mlflow_client.delete_run(mine)
        now = time.time()
        if now - reported >= LOCK_REPORT_S:
            holder = others[0]
            say(f"waiting for {len(identities)} result cell(s) that another run is computing "
                f"({holder.data.tags.get(names.LOCK_OWNER, '?')}, claim {holder.info.run_id}, "
                f"for {now - holder.info.start_time / 1000:.0f} s); waited {now - started:.0f} s")
            reported = now
        time.sleep(LOCK_POLL_S * random.uniform(0.5, 1.5))
    if reported:
        say(f"the result cells are ours after {time.time() - started:.0f} s of waiting")

    stop = threading.Event()

    def heartbeat() -> None:
        beats = 0
        while not stop.wait(LOCK_HEARTBEAT_S):
            beats += 1
            try:
                with store_lock():
                    mlflow_client.set_tag(mine, names.HEARTBEAT, str(beats))
            except Exception:  # a missed beat; a waiter allows LOCK_STALE_S
                pass

    beating = threading.Thread(target=heartbeat, name="bench-cell-lock", daemon=True)
    beating.start()
    error: BaseException | None = None
    try:
        yield
    except BaseException as e:
        error = e
        raise
    finally:
        stop.set()
        beating.join()
        try:
            with store_lock():
                if error is None:
                    mlflow_client.delete_run(mine)
                else:  # kept, ended: what `bench report` can tell of a cell that failed
                    first = (str(error).splitlines() or [""])[0]
                    mlflow_client.set_tag(mine, names.ERROR,
                                          f"{type(error).__name__}: {first}"[:names.MAX_TAG])
                    mlflow_client.set_terminated(mine, "FAILED" if isinstance(error, Exception)
                                                 else "KILLED")
        except Exception:  # an unreachable store: the claim goes stale, waiters take over
            pass


def ended_claims(experiment_ids: list[str], jobs: list[list[str]]) -> dict[str, UnfinishedRun]:
    """For each job's cells (their identities), the newest claim on them that ended without
    their results (``cell_lock``): identity -> that claim, with its error."""
    out: dict[str, UnfinishedRun] = {}
    for identities in jobs if experiment_ids else ():
        for run in search(experiment_ids, names.ended_lock_filter(names.lock_key(identities))):
            ended = UnfinishedRun(run.info.run_id, run.info.status, run.info.start_time / 1000,
                                  run.data.tags.get(names.ERROR, ""))
            out |= {identity: ended for identity in identities}
            break
    return out
