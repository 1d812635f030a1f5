"""The reconciler: puts back in the queue the tasks nobody will otherwise run.

PENDING tasks whose message was lost, and RUNNING tasks whose lease expired, found through the
index of unfinished tasks (never a scan of all tasks). Duplicate messages are harmless: a claim is
a conditional update and the second one fails.

It lives beside the stores, not in finalize, because workers (while they wait for others) and
finalize both run it: a protocol step over the Backend, below both (docs/architecture.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from slurmctl.backends import Backend
from slurmctl.states import TaskStatus


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
