"""The state store: the truth about jobs, tasks, leases, counters and rate buckets.

The public methods the rest of slurmctl calls (`claim_task`, `commit_task`, `update_job`,
`acquire_job_lease`, ...) are written once, here, over the pure transitions of `protocol.py`:
read the record, let the protocol decide the conditional write, hand it to the store. A store
implements only primitives: `_write` (one conditional write of a job, task or lease record with
its counter deltas, atomically), the reads (`get_job`, `get_task`, `job_lease`, `list_jobs`,
`iter_tasks`, the unfinished-task index, `counters`), the bulk `put_tasks` and `delete_job`, and
the rate-limit buckets (still one method per operation, their GCRA math shared in
ratelimit/gcra.py). Implementations: SQLite (`BEGIN IMMEDIATE`) and DynamoDB (one table,
`TransactWriteItems`); how each makes a write atomic, and what it does when the answer to one is
lost, is its own business, never a second copy of the protocol.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from slurmctl.backends import protocol
from slurmctl.backends.protocol import Ref, Write
from slurmctl.backends.records import (
    ITEMS_FAILED_PERMANENT,
    ITEMS_FAILED_TRANSIENT,
    ITEMS_PENDING,
    ITEMS_QUARANTINED,
    ITEMS_SUCCEEDED,
    ITEMS_TOTAL,
    JOB_FIELDS,
    OUTPUT_ROWS,
    OUTPUT_SCHEMA_DOC,
    TASK_FIELDS,
    WORKERS_LOST,
    Bucket,
    JobRecord,
    SlotGrant,
    TaskCommit,
    TaskRecord,
    Versioned,
    task_counter,
)
from slurmctl.states import TaskStatus

__all__ = [
    "ITEMS_FAILED_PERMANENT",
    "ITEMS_FAILED_TRANSIENT",
    "ITEMS_PENDING",
    "ITEMS_QUARANTINED",
    "ITEMS_SUCCEEDED",
    "ITEMS_TOTAL",
    "JOB_FIELDS",
    "OUTPUT_ROWS",
    "OUTPUT_SCHEMA_DOC",
    "TASK_FIELDS",
    "WORKERS_LOST",
    "Bucket",
    "JobRecord",
    "SlotGrant",
    "StateStore",
    "TaskCommit",
    "TaskRecord",
    "Versioned",
    "task_counter",
]

CLAIM_ROUNDS = 3
"""A claim whose pinned read went stale (another claim or release in between) reads again."""


class StateStore(ABC):
    """The protocol's public operations, written once over the store primitives below."""

    # --- the primitives each store implements ------------------------------------------------
    @abstractmethod
    def _write(self, w: Write) -> bool:
        """Apply w atomically: if w.cond holds on the record (absent or present), set w.sets
        (creating the record when absent) or delete it, and add w.deltas to the job's counters,
        in one transaction. False, and nothing changed, when the condition fails."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list_jobs(self) -> list[JobRecord]: ...

    @abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Remove the job, its tasks, counters, buckets and lease (for `clean --everything`)."""

    @abstractmethod
    def job_lease(self, job_id: str) -> tuple[str, float] | None:
        """(holder, expiry) of the job-level lease, if any: to recognise a dead holder."""

    @abstractmethod
    def put_tasks(self, tasks: Sequence[TaskRecord]) -> int:
        """Insert tasks that do not exist yet (idempotent); returns how many were new."""

    @abstractmethod
    def get_task(self, job_id: str, task_id: str) -> TaskRecord | None: ...

    @abstractmethod
    def delete_tasks(self, job_id: str, phase: str) -> int:
        """Remove every task of a phase that never started (a retry planner killed before its
        flip left them); the caller holds the job lease. Returns how many went."""

    @abstractmethod
    def unfinished_tasks(self, job_id: str, phase: str | None = None) -> Iterator[TaskRecord]:
        """PENDING and RUNNING tasks, through an index of unfinished tasks (never a full scan)."""

    def expired_tasks(self, job_id: str, phase: str, now: float) -> Iterator[TaskRecord]:
        """RUNNING tasks of the phase whose lease expired before now. A store with an index by
        expiry reads only those (DynamoDB); this default filters the unfinished ones (SQLite:
        a local read)."""
        for t in self.unfinished_tasks(job_id, phase):
            if t.status == TaskStatus.RUNNING and (t.lease_expires or 0) < now:
                yield t

    def running_tasks(self, job_id: str, phase: str) -> Iterator[TaskRecord]:
        """RUNNING tasks of the phase (as many as there are workers: the dead-holder check)."""
        for t in self.unfinished_tasks(job_id, phase):
            if t.status == TaskStatus.RUNNING:
                yield t

    def live_tasks(self, job_id: str, now: float) -> Iterator[TaskRecord]:
        """RUNNING tasks of any phase whose lease is still live at now (`clean`'s refusal). A
        store with an index by expiry reads only those (DynamoDB); this default filters the
        unfinished ones (SQLite: a local read)."""
        for t in self.unfinished_tasks(job_id):
            if t.status == TaskStatus.RUNNING and (t.lease_expires or 0) > now:
                yield t

    def pending_tasks(self, job_id: str, phase: str) -> Iterator[TaskRecord]:
        """PENDING tasks of the phase (the reconciler, when the queue lost some hints)."""
        for t in self.unfinished_tasks(job_id, phase):
            if t.status == TaskStatus.PENDING:
                yield t

    @abstractmethod
    def iter_tasks(
        self, job_id: str, *, phase: str | None = None, status: TaskStatus | None = None
    ) -> Iterator[TaskRecord]:
        """All tasks of the job (paginated), in task id order."""

    @abstractmethod
    def counters(
        self, job_id: str, *, metrics: bool = True, running: bool = True
    ) -> dict[str, int]:
        """Every counter of the job (summed over shards, where a store shards them). With
        metrics=False a store may leave out the counters that only counter-only updates move
        (the per-task metrics, the time series, the breaker's: DynamoDB's metrics shards): the
        protocol's counters (`<phase>.tasks.*`, `items.*`, `rows`, `workers.lost`) are always
        there, for the callers that read nothing else (an idle worker, the reconciler).

        A phase's PENDING + RUNNING, SUCCESS and FAILED are exact. With running=False a store
        may count a phase's RUNNING tasks among its PENDING ones (DynamoDB keeps one count of
        both, so that a claim moves no counter, and tells them apart from its index only when
        asked): for the callers that need only the sum (an idle worker's poll, a progress
        bar). With running=True the split may lag the tasks by the index's consistency."""

    @abstractmethod
    def get_versioned(self, job_id: str, name: str) -> Versioned | None:
        """The document `name` of the job (read consistently), None when never written."""

    def _view(self, ref: Ref) -> dict[str, Any] | None:
        """The record a Write targets, as the field mapping its condition is checked against."""
        if ref.kind == "task":
            task = self.get_task(ref.job_id, ref.name)
            return dataclasses.asdict(task) if task else None
        if ref.kind == "job":
            job = self.get_job(ref.job_id)
            return dataclasses.asdict(job) if job else None
        if ref.kind == "doc":
            doc = self.get_versioned(ref.job_id, ref.name)
            return dataclasses.asdict(doc) if doc else None
        lease = self.job_lease(ref.job_id)
        return {"holder": lease[0], "expires": lease[1]} if lease else None

    def _apply(self, w: Write | None) -> bool:
        if w is None:  # the protocol refused on what was read: no write needed
            return False
        if w.is_check:  # a bare condition check costs one read, never a write
            return protocol.holds(w.cond, self._view(w.ref))
        return self._write(w)

    # --- jobs -------------------------------------------------------------------------------
    def create_job(self, job: JobRecord, *, expected_tasks: int | None = None) -> bool:
        """Insert the job record if absent; False if a job with this id exists.
        expected_tasks: an estimate of the job's tasks (a streaming submit knows only its
        input's size), by which a store may lay the job out (DynamoDB: its K task keys)."""
        return self._apply(protocol.create_job(job))

    def update_job(
        self,
        job_id: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
        counter_deltas: Mapping[str, int] | None = None,
    ) -> bool:
        """Apply changes if every field in expect has that value; move counters in the same
        transaction. False (and nothing changed) when a condition fails."""
        return self._apply(protocol.update_job(job_id, changes, expect, counter_deltas))

    def acquire_job_lease(self, job_id: str, holder: str, ttl_s: float, now: float) -> bool:
        """The job-level lease that keeps two `resume` (or finalize) from acting at once."""
        return self._apply(protocol.acquire_job_lease(job_id, holder, ttl_s, now))

    def release_job_lease(self, job_id: str, holder: str) -> None:
        self._apply(protocol.release_job_lease(job_id, holder))

    # --- tasks ------------------------------------------------------------------------------
    def claim_task(
        self,
        job_id: str,
        task_id: str,
        worker_id: str,
        token: str,
        lease_s: float,
        now: float,
        *,
        holder: str | None = None,
    ) -> TaskRecord | None:
        """PENDING, or RUNNING with an expired lease, becomes RUNNING under token (held by
        worker_id, whose process `holder` describes).

        Returns the claimed record, or None if the task is not claimable (someone else holds it,
        or it is finished).
        """
        for _ in range(CLAIM_ROUNDS):
            rec = self.get_task(job_id, task_id)
            step = protocol.claim(rec, worker_id, token, lease_s, now, holder)
            if step is None:
                return None
            write, claimed = step
            if self._write(write):
                return claimed
        return None

    def replace_task(
        self, task: TaskRecord, *, expect_status: TaskStatus, counter_deltas: Mapping[str, int]
    ) -> bool:
        """Put the whole record if the stored task has expect_status, moving the counters in
        the same transaction (`retry --tasks`: a finished task runs again). False otherwise."""
        return self._apply(protocol.replace_task(task, expect_status, counter_deltas))

    def heartbeat(self, job_id: str, task_id: str, token: str, lease_s: float, now: float) -> bool:
        """Extend the lease if token still holds it."""
        return self._apply(protocol.heartbeat(job_id, task_id, token, lease_s, now))

    def release_task(
        self,
        job_id: str,
        task_id: str,
        token: str,
        *,
        checkpoint_key: str | None = None,
        checkpoint_sha256: str | None = None,
    ) -> bool:
        """RUNNING under token becomes PENDING again (a worker leaving on a signal); it does not
        count as a worker loss."""
        rec = self.get_task(job_id, task_id)
        return self._apply(protocol.release(rec, token, checkpoint_key, checkpoint_sha256))

    def release_dead(self, job_id: str, task_id: str, token: str) -> bool:
        """RUNNING under token becomes PENDING at once: its holder is known dead (its executor
        saw it exit, or Slurm reports its array element ended). Counts a worker loss, on the task
        (as the takeover of an expired lease does: poison isolation) and on the job
        (`workers.lost`)."""
        return self._apply(protocol.release_dead(self.get_task(job_id, task_id), token))

    def commit_task(self, job_id: str, task_id: str, token: str, commit: TaskCommit) -> bool:
        """The fenced commit: RUNNING under token becomes SUCCESS, with outputs and counters."""
        return self._apply(protocol.commit(self.get_task(job_id, task_id), token, commit))

    def fail_task(self, job_id: str, task_id: str, token: str, error: str, now: float) -> bool:
        """RUNNING under token becomes FAILED (the task cannot run at all)."""
        return self._apply(protocol.fail(self.get_task(job_id, task_id), token, error, now))

    # --- rate limiting ----------------------------------------------------------------------
    @abstractmethod
    def put_bucket(self, bucket: Bucket) -> None:
        """Create the bucket, or set its rate and burst if it exists (TAT kept)."""

    @abstractmethod
    def get_bucket(self, job_id: str, name: str) -> Bucket | None: ...

    @abstractmethod
    def list_buckets(self, job_id: str) -> list[Bucket]: ...

    @abstractmethod
    def reserve_slots(self, job_id: str, name: str, n: int, now: float) -> SlotGrant:
        """Reserve n send slots on the shared schedule; a paused bucket grants none."""

    @abstractmethod
    def release_slots(self, job_id: str, name: str, grant_tat: float, new_tat: float) -> bool:
        """Give back unused slots: set TAT to new_tat if it is still grant_tat."""

    @abstractmethod
    def set_buckets_paused(self, job_id: str, paused: bool) -> None: ...

    @abstractmethod
    def set_bucket_rate(
        self, job_id: str, name: str, rate: float, burst: int | None = None
    ) -> Bucket | None:
        """`set-rate`: a new configured rate (and burst, if given) for an existing bucket, TAT
        kept; any backoff is cleared (the operator's rate wins), a Retry-After hold is kept.
        Returns the bucket as it was before, None when there is no such bucket."""

    @abstractmethod
    def throttle_bucket(
        self, job_id: str, name: str, now: float, retry_after: float | None = None
    ) -> Bucket | None:
        """The API throttled: apply `gcra.throttle` to the bucket (cut the effective rate, hold
        issuance until now + retry_after). Returns the bucket after, None when absent."""

    # --- versioned documents (the job's output schema) ----------------------------------------
    # A named document per job, replaced by compare-and-swap on its version, so concurrent
    # writers (workers widening the output schema) never lose an update.
    def put_versioned(self, job_id: str, name: str, value: bytes, expect_version: int) -> bool:
        """Store value as version expect_version + 1 if the stored version is expect_version
        (0: the document does not exist yet); False, and nothing written, otherwise."""
        return self._apply(protocol.put_versioned(job_id, name, value, expect_version))
