"""The reconciler: puts back in the queue the tasks nobody will otherwise run.

PENDING tasks whose message was lost, and RUNNING tasks whose lease expired, found through the
index of unfinished tasks (never a scan of all tasks). Duplicate messages are harmless: a claim is
a conditional update and the second one fails.

It lives beside the stores, not in finalize, because workers (while they wait for others) and
finalize both run it: a protocol step over the Backend, below both (docs/architecture.md).

A lease whose holder is known dead need not wait for its expiry: `release_dead_holders` frees it
at once (the executors know their dead workers; any process on the embedded backend's host can
tell a holder process that is gone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from slurmctl.backends import Backend
from slurmctl.holders import Holder
from slurmctl.states import TaskStatus

log = logging.getLogger("slurmctl.reconcile")


@dataclass(frozen=True)
class Reconciled:
    pending: int
    expired: int
    running: int

    @property
    def requeued(self) -> int:
        return self.pending + self.expired


def reconcile(backend: Backend, job_id: str, phase: str, *, now: float | None = None) -> Reconciled:
    """Requeue expired leases always; PENDING tasks only when the queue holds fewer messages
    than there are PENDING tasks (some hint was lost), so a healthy job gets no duplicates."""
    now = time.time() if now is None else now
    backend.queue.create_queue(job_id)  # idempotent: a job revived after it ended has none
    pending_ids: list[str] = []
    requeue: list[str] = []
    pending = expired = running = 0
    for task in backend.state.unfinished_tasks(job_id, phase):
        if task.status == TaskStatus.PENDING:
            pending += 1
            pending_ids.append(task.task_id)
        elif (task.lease_expires or 0) < now:
            expired += 1
            requeue.append(task.task_id)
        else:
            running += 1
    lost = pending and backend.queue.approximate_count(job_id) < pending
    if not lost:
        pending_ids = []
    for start in range(0, len(requeue + pending_ids), 1000):
        backend.queue.send(job_id, (requeue + pending_ids)[start : start + 1000])
    return Reconciled(len(pending_ids), expired, running)


def release_dead_holders(
    backend: Backend, job_id: str, phase: str, dead: Callable[[Holder], bool]
) -> list[str]:
    """Free every lease of the phase whose holder is dead, and hint the queue. Fenced by the
    token read: a holder that committed, or lost its lease, meanwhile is left alone."""
    state = backend.state
    freed = []
    # read to the end first: no write inside an open read (SQLite's snapshot would refuse it)
    for task in list(state.unfinished_tasks(job_id, phase)):
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
