"""The reconciler: puts back in the queue the tasks nobody will otherwise run.

PENDING tasks whose message was lost, and RUNNING tasks whose lease expired. A pass reads only
what expired (`StateStore.expired_tasks`: on DynamoDB one key range of the unfinished-task index
per shard, sorted by lease expiry) and the job's counters; it lists the PENDING tasks only when
the queue holds fewer messages than the counters say are PENDING (some hint was lost), and only
once submit is done: while a streaming submit runs, it counts each chunk before it queues it, so
the queue always lags the counters a little, and the submit (or the `resume` that carries a
killed one on) queues every counted task itself. So a pass costs O(expired), never
O(unfinished), and a healthy job's tasks are received once each. Duplicate messages are
harmless anyway: a claim is a conditional update and the second one fails.

Idle workers call `reconcile_turn`: one pass per job per period, whoever takes the turn first (a
versioned document `reconciler`, compare-and-swap on both stores); the others skip. Finalize
calls it without, and always runs it.

It lives beside the stores, not in finalize, because workers (while they wait for others) and
finalize both run it: a protocol step over the Backend, below both (docs/architecture.md).

A lease whose holder is known dead need not wait for its expiry: `release_dead_holders` frees it
at once (the executors know their dead workers; any process on the embedded backend's host can
tell a holder process that is gone).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from slurmctl.backends import Backend
from slurmctl.backends.records import task_counter
from slurmctl.backends.statestore import StateStore
from slurmctl.holders import Holder
from slurmctl.states import TaskStatus

TURN_DOC = "reconciler"
"""The versioned document that says who reconciles the job until when."""

log = logging.getLogger("slurmctl.reconcile")


@dataclass(frozen=True)
class Reconciled:
    pending: int
    expired: int
    running: int

    @property
    def requeued(self) -> int:
        return self.pending + self.expired


@dataclass(frozen=True)
class Turn:
    """Whose turn it is to reconcile (an idle worker's id) and for how long."""

    holder: str
    period_s: float


def take_turn(state: StateStore, job_id: str, turn: Turn, now: float) -> bool:
    """Take the job's reconciler turn for turn.period_s if nobody else holds a live one: one
    read, and one compare-and-swap write only when the turn is free (or ours)."""
    doc = state.get_versioned(job_id, TURN_DOC)
    if doc is not None:
        held = json.loads(doc.value)
        if held.get("holder") != turn.holder and float(held.get("until", 0)) > now:
            return False
    value = json.dumps({"holder": turn.holder, "until": now + turn.period_s}).encode()
    return state.put_versioned(job_id, TURN_DOC, value, doc.version if doc else 0)


def reconcile_turn(
    backend: Backend, job_id: str, phase: str, turn: Turn, *, now: float | None = None
) -> Reconciled | None:
    """An idle worker's pass: only when the job's reconciler turn is free (None otherwise)."""
    now = time.time() if now is None else now
    if not take_turn(backend.state, job_id, turn, now):
        return None
    return reconcile(backend, job_id, phase, now=now)


def reconcile(backend: Backend, job_id: str, phase: str, *, now: float | None = None) -> Reconciled:
    """Requeue expired leases always; PENDING tasks only when the queue holds fewer messages
    than there are PENDING tasks (some hint was lost), so a healthy job gets no duplicates."""
    now = time.time() if now is None else now
    state = backend.state
    backend.queue.create_queue(job_id)  # idempotent: a job revived after it ended has none
    requeue = [t.task_id for t in state.expired_tasks(job_id, phase, now)]
    counters = state.counters(job_id, metrics=False)
    pending = counters.get(task_counter(phase, TaskStatus.PENDING), 0)
    running = max(counters.get(task_counter(phase, TaskStatus.RUNNING), 0) - len(requeue), 0)
    pending_ids: list[str] = []
    if (
        pending > 0
        and backend.queue.approximate_count(job_id) < pending
        and _submitted(state, job_id)
    ):
        pending_ids = [t.task_id for t in state.pending_tasks(job_id, phase)]
    hints = requeue + pending_ids
    for start in range(0, len(hints), 1000):
        backend.queue.send(job_id, hints[start : start + 1000])
    return Reconciled(len(pending_ids), len(requeue), running)


def _submitted(state: StateStore, job_id: str) -> bool:
    """Submit has written, counted and queued its last task (the submit-done marker)."""
    job = state.get_job(job_id)
    return job is None or job.submitted


def release_dead_holders(
    backend: Backend, job_id: str, phase: str, dead: Callable[[Holder], bool]
) -> list[str]:
    """Free every lease of the phase whose holder is dead, and hint the queue. Fenced by the
    token read: a holder that committed, or lost its lease, meanwhile is left alone."""
    state = backend.state
    freed = []
    # read to the end first: no write inside an open read (SQLite's snapshot would refuse it)
    for task in list(state.running_tasks(job_id, phase)):
        if task.status != TaskStatus.RUNNING or not task.lease_token:
            continue
        holder = Holder.decode(task.holder)
        if holder is None or not dead(holder):
            continue
        if state.release_dead(job_id, task.task_id, task.lease_token):
            freed.append(task.task_id)
    for start in range(0, len(freed), 1000):
        backend.queue.send(job_id, freed[start : start + 1000])
    if freed:
        log.info("%s: freed the leases of dead workers on %s", job_id, ", ".join(freed))
    return freed
