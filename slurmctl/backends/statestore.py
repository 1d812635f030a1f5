"""The state store interface: the truth about jobs, tasks, leases, counters and rate buckets.

Every transition is one conditional update or transaction, and the counters it moves change in
that same transaction (docs/architecture.md, "The task protocol"). Implementations: SQLite
(`BEGIN IMMEDIATE`) and DynamoDB (one table, `TransactWriteItems`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from slurmctl.ratelimit.gcra import Backoff, effective_rate
from slurmctl.states import JobStatus, TaskStatus

# Counter names. Phase-qualified task counters read `<phase>.tasks.<STATUS>`.
ITEMS_TOTAL = "items.total"
ITEMS_SUCCEEDED = "items.succeeded"
ITEMS_FAILED_PERMANENT = "items.failed_permanent"
ITEMS_FAILED_TRANSIENT = "items.failed_transient"
ITEMS_QUARANTINED = "items.quarantined"
ITEMS_PENDING = "items.pending"
OUTPUT_ROWS = "rows"
WORKERS_LOST = "workers.lost"
"""Leases freed because their holder was known dead (`release_dead`): the executors' fruitless-
runs rule counts a run that freed one as a run that did something."""


def task_counter(phase: str, status: TaskStatus | str) -> str:
    return f"{phase}.tasks.{status}"


@dataclass
class JobRecord:
    """Kept small (DynamoDB bills writes by item size): the definition lives in the object store."""

    job_id: str
    status: JobStatus
    phase: str = "initial"
    paused: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    task_count: int = 0
    item_count: int = 0
    workers: int = 1
    executor: str = "local"
    backend: str = "local"
    submitted: bool = False
    """True once every batch and task is written and the counters are set."""
    error: str | None = None
    run: int = 0
    """How many runs (submit, resume, retry) the job has had."""
    not_before: float = 0.0
    """A retry phase's backoff: no task of the phase is claimed before this time."""


JOB_FIELDS = frozenset(JobRecord.__dataclass_fields__)


@dataclass
class TaskRecord:
    job_id: str
    task_id: str
    batch_id: str
    phase: str
    group: str
    items: int
    batch_key: str
    batch_sha256: str
    role: str = "worker"
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0
    worker_losses: int = 0
    """Leases that expired (the worker died: crash, kill, OOM). A lease released on a signal
    (preemption) does not count: only deaths lead to poison isolation."""
    lease_token: str | None = None
    worker_id: str | None = None
    lease_expires: float | None = None
    checkpoint_key: str | None = None
    checkpoint_sha256: str | None = None
    output_key: str | None = None
    output_sha256: str | None = None
    output_rows: int = 0
    errors_key: str | None = None
    errors_sha256: str | None = None
    succeeded: int = 0
    failed_permanent: int = 0
    failed_transient: int = 0
    start_time: float | None = None
    end_time: float | None = None
    error: str | None = None
    holder: str | None = None
    """Who claimed the task last: host, pid and Slurm ids (slurmctl/holders.py), so an executor
    that knows that process dead frees the lease at once (`release_dead`). Last, so a state
    root written before it gains it as its last column."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TASK_FIELDS = tuple(TaskRecord.__dataclass_fields__)


@dataclass(frozen=True)
class TaskCommit:
    """What a successful attempt produced; recorded by the fenced commit."""

    output_key: str
    output_sha256: str
    output_rows: int
    errors_key: str
    errors_sha256: str
    succeeded: int
    failed_permanent: int
    failed_transient: int
    end_time: float


@dataclass(frozen=True)
class Bucket:
    """A rate-limit bucket: the shared schedule (GCRA) and its adaptive backoff."""

    job_id: str
    name: str
    rate: float
    """The configured rate (`rate_limit`, or the last `set-rate`)."""
    burst: int
    tat: float = 0.0
    paused: bool = False
    effective: float = 0.0
    """The effective rate right after the last throttle cut; 0 when never cut. The rate in force
    at a time is `effective_rate(now)` (it recovers additively, see ratelimit/gcra.py)."""
    changed_at: float = 0.0
    """When the last cut happened."""
    hold_until: float = 0.0
    """No slot is issued before this time (a Retry-After, job-wide)."""

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.effective, self.changed_at, self.hold_until)

    def effective_rate(self, now: float) -> float:
        return effective_rate(self.rate, self.backoff, now)


@dataclass(frozen=True)
class SlotGrant:
    times: tuple[float, ...] = field(default_factory=tuple)
    tat: float = 0.0
    """The bucket's TAT right after this grant; a release succeeds only if it is still this."""
    paused: bool = False
    rate: float = 0.0
    """The effective rate the slots are spaced by: leases are sized from it, and a release moves
    TAT back by one 1/rate per unused slot."""
    configured_rate: float = 0.0
    """The bucket's configured rate (a `set-rate` shows here within one lease)."""
    hold_until: float = 0.0
    """Set, with no times, while a Retry-After holds issuance: ask again at that time."""
    writes: int = 0
    """Bucket write attempts this grant took (conditional writes that lost a race included)."""


class StateStore(ABC):
    # --- jobs -------------------------------------------------------------------------------
    @abstractmethod
    def create_job(self, job: JobRecord) -> bool:
        """Insert the job record if absent; False if a job with this id exists."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list_jobs(self) -> list[JobRecord]: ...

    @abstractmethod
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

    @abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Remove the job, its tasks, counters, buckets and lease (for `clean --everything`)."""

    @abstractmethod
    def acquire_job_lease(self, job_id: str, holder: str, ttl_s: float, now: float) -> bool:
        """The job-level lease that keeps two `resume` (or finalize) from acting at once."""

    @abstractmethod
    def release_job_lease(self, job_id: str, holder: str) -> None: ...

    @abstractmethod
    def job_lease(self, job_id: str) -> tuple[str, float] | None:
        """(holder, expiry) of the job-level lease, if any: to recognise a dead holder."""

    # --- tasks ------------------------------------------------------------------------------
    @abstractmethod
    def put_tasks(self, tasks: Sequence[TaskRecord]) -> int:
        """Insert tasks that do not exist yet (idempotent); returns how many were new."""

    @abstractmethod
    def get_task(self, job_id: str, task_id: str) -> TaskRecord | None: ...

    @abstractmethod
    def replace_task(
        self, task: TaskRecord, *, expect_status: TaskStatus, counter_deltas: Mapping[str, int]
    ) -> bool:
        """Put the whole record if the stored task has expect_status, moving the counters in
        the same transaction (`retry --tasks`: a finished task runs again). False otherwise."""

    @abstractmethod
    def delete_tasks(self, job_id: str, phase: str) -> int:
        """Remove every task of a phase that never started (a retry planner killed before its
        flip left them); the caller holds the job lease. Returns how many went."""

    @abstractmethod
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

    @abstractmethod
    def heartbeat(self, job_id: str, task_id: str, token: str, lease_s: float, now: float) -> bool:
        """Extend the lease if token still holds it."""

    @abstractmethod
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

    @abstractmethod
    def release_dead(self, job_id: str, task_id: str, token: str) -> bool:
        """RUNNING under token becomes PENDING at once: its holder is known dead (its executor
        saw it exit, or Slurm reports its array element ended). Counts a worker loss, on the task
        (as the takeover of an expired lease does: poison isolation) and on the job
        (`workers.lost`)."""

    @abstractmethod
    def commit_task(self, job_id: str, task_id: str, token: str, commit: TaskCommit) -> bool:
        """The fenced commit: RUNNING under token becomes SUCCESS, with outputs and counters."""

    @abstractmethod
    def fail_task(self, job_id: str, task_id: str, token: str, error: str, now: float) -> bool:
        """RUNNING under token becomes FAILED (the task cannot run at all)."""

    @abstractmethod
    def unfinished_tasks(self, job_id: str, phase: str | None = None) -> Iterator[TaskRecord]:
        """PENDING and RUNNING tasks, through an index of unfinished tasks (never a full scan)."""

    @abstractmethod
    def iter_tasks(
        self, job_id: str, *, phase: str | None = None, status: TaskStatus | None = None
    ) -> Iterator[TaskRecord]:
        """All tasks of the job (paginated), in task id order."""

    @abstractmethod
    def counters(self, job_id: str) -> dict[str, int]:
        """Every counter of the job, summed over shards."""

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
    # Small, self-contained: a named document per job, replaced by compare-and-swap on its
    # version, so concurrent writers (workers widening the output schema) never lose an update.
    @abstractmethod
    def get_versioned(self, job_id: str, name: str) -> Versioned | None:
        """The document `name` of the job (read consistently), None when never written."""

    @abstractmethod
    def put_versioned(self, job_id: str, name: str, value: bytes, expect_version: int) -> bool:
        """Store value as version expect_version + 1 if the stored version is expect_version
        (0: the document does not exist yet); False, and nothing written, otherwise."""


@dataclass(frozen=True)
class Versioned:
    """A document of `get_versioned`: its bytes and version (1 for the first write)."""

    version: int
    value: bytes


OUTPUT_SCHEMA_DOC = "output_schema"
"""The versioned document holding the job's recorded output schema (slurmctl/output_schema.py)."""
