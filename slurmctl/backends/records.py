"""The records the state store keeps (jobs, tasks, rate buckets) and the counter names.

They live apart from the store interface so that the task protocol (`protocol.py`) and the store
base class (`statestore.py`) can both import them without an import cycle; `statestore` re-exports
every name, so callers keep importing them from there.
"""

from __future__ import annotations

from collections.abc import Mapping
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


_PROTOCOL_COUNTERS = frozenset(
    {
        ITEMS_TOTAL,
        ITEMS_SUCCEEDED,
        ITEMS_FAILED_PERMANENT,
        ITEMS_FAILED_TRANSIENT,
        ITEMS_QUARANTINED,
        ITEMS_PENDING,
        OUTPUT_ROWS,
        WORKERS_LOST,
    }
)


def fold_running(deltas: Mapping[str, int]) -> dict[str, int]:
    """The deltas with every `<phase>.tasks.RUNNING` move added onto `<phase>.tasks.PENDING`,
    zeros dropped: for a store that keeps one count of a phase's unfinished tasks (DynamoDB), so
    that a claim (PENDING -1, RUNNING +1) and a release move no counter at all and are a single
    conditional write, and a commit or fail moves PENDING -1 with SUCCESS or FAILED +1. The
    counts that decide a phase's end (PENDING + RUNNING, SUCCESS, FAILED) stay exact;
    `split_running` tells RUNNING apart again when a reader asks."""
    out: dict[str, int] = {}
    for name, d in deltas.items():
        phase, sep, status = name.partition(".tasks.")
        if sep and status == TaskStatus.RUNNING:
            name = task_counter(phase, TaskStatus.PENDING)
        out[name] = out.get(name, 0) + d
    return {k: d for k, d in out.items() if d}


def split_running(stored: dict[str, int], running: int) -> dict[str, int]:
    """Counters folded by `fold_running` (a phase's PENDING + RUNNING stored together; a job
    written before the fold may hold both) with RUNNING told apart again: `running` tasks of
    the job are RUNNING now (the store's own view, e.g. its index of running leases), given to
    the phases that have unfinished tasks, the newest phase first (normally only the current
    phase has any), never more than a phase's unfinished count. PENDING + RUNNING is
    exact; how it splits is as fresh as the store's view."""
    out = dict(stored)
    left = max(running, 0)
    unfinished = unfinished_by_phase(stored)
    for phase in sorted(unfinished, key=_phase_order, reverse=True):
        p, r = task_counter(phase, TaskStatus.PENDING), task_counter(phase, TaskStatus.RUNNING)
        out[r] = min(left, max(unfinished[phase], 0))
        out[p] = unfinished[phase] - out[r]
        left -= out[r]
    return out


def unfinished_by_phase(counters: Mapping[str, int]) -> dict[str, int]:
    """PENDING + RUNNING per phase (every phase that has either counter)."""
    out: dict[str, int] = {}
    for name, value in counters.items():
        phase, sep, status = name.partition(".tasks.")
        if sep and status in (TaskStatus.PENDING, TaskStatus.RUNNING):
            out[phase] = out.get(phase, 0) + value
    return out


def _phase_order(phase: str) -> int:
    number = phase.removeprefix("retry_")
    return int(number) if number.isdigit() else 0


def is_protocol_counter(name: str) -> bool:
    """A counter the task protocol and the job's lifecycle move (task states, items, rows,
    workers lost), as against the metrics (`obs.*`, `ratelimit.*`, the breaker's): what
    `StateStore.counters(metrics=False)` must always return."""
    return name in _PROTOCOL_COUNTERS or ".tasks." in name


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
    batch_range: str | None = None
    """The bytes of `batch_key` that are this task's batch (`<first>-<last>`, both included):
    several batches share one object (slurmctl/backends/batches.py). None: the whole object
    (a job submitted before batches were packed). After `holder`, for the same reason."""

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


@dataclass(frozen=True)
class Versioned:
    """A document of `get_versioned`: its bytes and version (1 for the first write)."""

    version: int
    value: bytes


OUTPUT_SCHEMA_DOC = "output_schema"
"""The versioned document holding the job's recorded output schema (slurmctl/output_schema.py)."""
