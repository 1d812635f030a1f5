"""The task and job-lease protocol, written once: pure transitions that produce conditional writes.

Every change to a task, a job record or the job lease is a `Write`: the record it targets, the
new field values, the `Cond` that must still hold when it is applied (the status read, the lease
token, the lease expiry) and the counter deltas that move in the same transaction. The functions
below decide, from the record as read (or nothing), whether a transition is possible and what it
writes; they do no I/O. A state store applies a Write atomically (`StateStore._write`) and knows
nothing of claims, commits or fencing: SQLite checks the condition with `holds` inside one
`BEGIN IMMEDIATE` transaction, DynamoDB compiles it to a ConditionExpression. So a transition is
decided in exactly one place for both stores, and a new one is one function here.

The rules (docs/architecture.md, "The task protocol"):

- A task is claimable when PENDING, or RUNNING under a lease that has lapsed (a takeover, which
  counts a worker loss and leaves the counters alone: RUNNING stays RUNNING). A claim pins what it
  read (status, attempts, token), so two racing claims cannot both move the counters.
- Heartbeat, release, commit and fail are fenced: they apply only while the task is RUNNING under
  the caller's lease token. A worker that lost its lease changes nothing, counters included.
- Counters move only with a status change and by what that change means (one task leaves a
  status, one enters another; a commit moves the item counts), so none can go negative.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from slurmctl.backends.records import (
    ITEMS_FAILED_PERMANENT,
    ITEMS_FAILED_TRANSIENT,
    ITEMS_PENDING,
    ITEMS_SUCCEEDED,
    JOB_FIELDS,
    OUTPUT_ROWS,
    WORKERS_LOST,
    JobRecord,
    TaskCommit,
    TaskRecord,
    task_counter,
)
from slurmctl.states import TaskStatus

Kind = Literal["job", "task", "lease", "doc"]
"""The records a Write targets: a job record, a task, a job's lease (`holder`, `expires`), a
versioned document of the job (`version`, `value`)."""

RUNNING, PENDING = TaskStatus.RUNNING, TaskStatus.PENDING
FINISHED = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED})
_COMMIT_FIELDS = tuple(f.name for f in dataclasses.fields(TaskCommit))


# --- conditions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cond:
    """A condition on one record: `op` over `field` and `value`, or a combination of `parts`.

    `absent` / `present` test the record itself; `eq` with value None means the field is unset;
    `lt` / `le` compare a set field (an unset one fails them)."""

    op: Literal["absent", "present", "eq", "lt", "le", "all", "any"]
    field: str = ""
    value: Any = None
    parts: tuple[Cond, ...] = ()


ABSENT = Cond("absent")
PRESENT = Cond("present")


def eq(name: str, value: Any) -> Cond:
    return Cond("eq", name, value)


def lt(name: str, value: Any) -> Cond:
    return Cond("lt", name, value)


def le(name: str, value: Any) -> Cond:
    return Cond("le", name, value)


def all_of(*parts: Cond) -> Cond:
    return parts[0] if len(parts) == 1 else Cond("all", parts=parts)


def any_of(*parts: Cond) -> Cond:
    return parts[0] if len(parts) == 1 else Cond("any", parts=parts)


def holds(cond: Cond, record: Mapping[str, Any] | None) -> bool:
    """Whether cond holds on record (its fields as a mapping; None when it does not exist)."""
    if cond.op == "absent":
        return record is None
    if cond.op == "present":
        return record is not None
    if cond.op == "all":
        return all(holds(c, record) for c in cond.parts)
    if cond.op == "any":
        return any(holds(c, record) for c in cond.parts)
    if record is None:
        return False
    have = record.get(cond.field)
    if cond.op == "eq":
        return bool(have == cond.value) if cond.value is not None else have is None
    if have is None:
        return False
    return bool(have < cond.value) if cond.op == "lt" else bool(have <= cond.value)


# --- writes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    kind: Kind
    job_id: str
    name: str = ""
    """The record's name within its job: a task's id, a document's name (none for the others)."""


@dataclass(frozen=True)
class Write:
    """One conditional write: if `cond` holds on the record, set `sets` (creating the record when
    it is absent) or delete it, and add `deltas` to the job's counters, all or nothing."""

    ref: Ref
    cond: Cond
    sets: Mapping[str, Any] = field(default_factory=dict)
    deltas: Mapping[str, int] = field(default_factory=dict)
    delete: bool = False

    @property
    def is_check(self) -> bool:
        """A bare condition check: nothing to write, nothing to count."""
        return not self.sets and not self.deltas and not self.delete


def applied(w: Write, record: Mapping[str, Any] | None) -> bool:
    """Whether record is what w leaves behind: for resolving a write whose answer was lost.

    True when the record has every value w sets and still has every value w's condition pinned
    on a field w does not set (the lease token of a commit), so a later writer's state is not
    mistaken for ours."""
    if w.delete:
        return record is None
    if record is None or not w.sets:
        return False
    pins = w.cond.parts if w.cond.op == "all" else (w.cond,)
    kept = {c.field: c.value for c in pins if c.op == "eq" and c.field not in w.sets}
    return all(record.get(k) == v for k, v in {**w.sets, **kept}.items())


def _moves(phase: str, left: TaskStatus, entered: TaskStatus) -> dict[str, int]:
    return {task_counter(phase, left): -1, task_counter(phase, entered): 1}


def _task_ref(rec: TaskRecord) -> Ref:
    return Ref("task", rec.job_id, rec.task_id)


def held(token: str) -> Cond:
    """The fence: the task is RUNNING under this lease token."""
    return all_of(eq("status", RUNNING), eq("lease_token", token))


FREED: Mapping[str, Any] = {
    "status": PENDING,
    "lease_token": None,
    "lease_expires": None,
    "worker_id": None,
}
"""A task whose lease is given up: PENDING, claimable at once."""


def holds_lease(rec: TaskRecord | None, token: str) -> bool:
    return rec is not None and rec.status == RUNNING and rec.lease_token == token


# --- task transitions ---------------------------------------------------------------------------
def claim(
    rec: TaskRecord | None,
    worker_id: str,
    token: str,
    lease_s: float,
    now: float,
    holder: str | None = None,
) -> tuple[Write, TaskRecord] | None:
    """PENDING, or RUNNING under a lapsed lease, becomes RUNNING under token, held by worker_id
    (whose process `holder` describes): the write and the record it leaves. None when the task
    is absent, finished or held by a live lease."""
    if rec is None:
        return None
    taking_over = rec.status == RUNNING and (rec.lease_expires or 0) < now
    if rec.status != PENDING and not taking_over:
        return None
    changes: dict[str, Any] = {
        "status": RUNNING,
        "lease_token": token,
        "worker_id": worker_id,
        "holder": holder,
        "lease_expires": float(now + lease_s),
        "attempts": rec.attempts + 1,
        "worker_losses": rec.worker_losses + int(taking_over),
        "start_time": now if rec.start_time is None else rec.start_time,
    }
    new = copy.copy(rec)  # a shallow copy and its fields set: 5x cheaper than replace()
    new.__dict__.update(changes)
    # Pin what was read: a claim or release in between changes attempts, status or token.
    pins = [
        eq("status", rec.status),
        eq("attempts", rec.attempts),
        eq("lease_token", rec.lease_token),
    ]
    if taking_over:
        lapsed = rec.lease_expires is not None
        pins.append(lt("lease_expires", float(now)) if lapsed else eq("lease_expires", None))
    # A takeover leaves the counters as they are: the task was RUNNING and stays RUNNING.
    deltas = {} if taking_over else _moves(rec.phase, PENDING, RUNNING)
    return Write(_task_ref(rec), all_of(*pins), changes, deltas), new


def heartbeat(job_id: str, task_id: str, token: str, lease_s: float, now: float) -> Write:
    """Extend the lease while token holds it (no read needed: the fence is the condition)."""
    return Write(Ref("task", job_id, task_id), held(token), {"lease_expires": float(now + lease_s)})


def release(
    rec: TaskRecord | None,
    token: str,
    checkpoint_key: str | None = None,
    checkpoint_sha256: str | None = None,
) -> Write | None:
    """RUNNING under token becomes PENDING (a worker leaving on a signal: not a worker loss)."""
    if rec is None or not holds_lease(rec, token):
        return None
    sets: dict[str, Any] = dict(FREED)
    if checkpoint_key:
        sets |= {"checkpoint_key": checkpoint_key, "checkpoint_sha256": checkpoint_sha256}
    return Write(_task_ref(rec), held(token), sets, _moves(rec.phase, RUNNING, PENDING))


def release_dead(rec: TaskRecord | None, token: str) -> Write | None:
    """RUNNING under token becomes PENDING at once: its holder is known dead (its executor saw
    it exit, or Slurm reports its array element ended). A worker loss, on the task (as a
    takeover counts one: poison isolation) and on the job (`workers.lost`)."""
    if rec is None or not holds_lease(rec, token):
        return None
    # The token is pinned, so worker_losses cannot change under this write (only a claim or a
    # release_dead, both of which change the token, move it).
    sets = {**FREED, "worker_losses": rec.worker_losses + 1}
    deltas = {**_moves(rec.phase, RUNNING, PENDING), WORKERS_LOST: 1}
    return Write(_task_ref(rec), held(token), sets, deltas)


def commit(rec: TaskRecord | None, token: str, result: TaskCommit) -> Write | None:
    """The fenced commit: RUNNING under token becomes SUCCESS with its outputs, and the item
    counters move by what the attempt did."""
    if rec is None or not holds_lease(rec, token):
        return None
    sets: dict[str, Any] = {
        "status": TaskStatus.SUCCESS,
        "lease_expires": None,
        **{name: getattr(result, name) for name in _COMMIT_FIELDS},
    }
    done = result.succeeded + result.failed_permanent + result.failed_transient
    deltas = {
        **_moves(rec.phase, RUNNING, TaskStatus.SUCCESS),
        ITEMS_PENDING: -done,
        ITEMS_SUCCEEDED: result.succeeded,
        ITEMS_FAILED_PERMANENT: result.failed_permanent,
        ITEMS_FAILED_TRANSIENT: result.failed_transient,
        OUTPUT_ROWS: result.output_rows,
    }
    return Write(_task_ref(rec), held(token), sets, {k: d for k, d in deltas.items() if d})


def fail(rec: TaskRecord | None, token: str, error: str, now: float) -> Write | None:
    """RUNNING under token becomes FAILED (the task cannot run at all)."""
    if rec is None or not holds_lease(rec, token):
        return None
    sets = {"status": TaskStatus.FAILED, "lease_expires": None, "error": error, "end_time": now}
    return Write(_task_ref(rec), held(token), sets, _moves(rec.phase, RUNNING, TaskStatus.FAILED))


def replace_task(
    task: TaskRecord, expect_status: TaskStatus, counter_deltas: Mapping[str, int]
) -> Write:
    """The whole record put back if the stored task has expect_status (`retry --tasks`: a
    finished task runs again), the counters moved in the same write."""
    deltas = {k: d for k, d in counter_deltas.items() if d}
    return Write(_task_ref(task), eq("status", expect_status), dataclasses.asdict(task), deltas)


# --- jobs and the job lease ---------------------------------------------------------------------
def create_job(job: JobRecord) -> Write:
    """Insert the job record if no job has this id."""
    return Write(Ref("job", job.job_id), ABSENT, dataclasses.asdict(job))


def update_job(
    job_id: str,
    changes: Mapping[str, Any],
    expect: Mapping[str, Any] | None = None,
    counter_deltas: Mapping[str, int] | None = None,
) -> Write:
    """Apply changes to an existing job if every field in expect has that value; counters move
    in the same transaction."""
    expect = expect or {}
    unknown = (set(changes) | set(expect)) - JOB_FIELDS
    if unknown:
        raise ValueError(f"unknown job fields {sorted(unknown)}")
    if "job_id" in changes:
        raise ValueError("a job's id cannot change")
    cond = all_of(PRESENT, *(eq(k, v) for k, v in expect.items()))
    deltas = {k: d for k, d in (counter_deltas or {}).items() if d}
    return Write(Ref("job", job_id), cond, dict(changes), deltas)


def acquire_job_lease(job_id: str, holder: str, ttl_s: float, now: float) -> Write:
    """Take (or renew) the job lease: free, already ours, or lapsed (expiry at or before now)."""
    cond = any_of(ABSENT, eq("holder", holder), le("expires", float(now)))
    return Write(Ref("lease", job_id), cond, {"holder": holder, "expires": float(now + ttl_s)})


def release_job_lease(job_id: str, holder: str) -> Write:
    """Drop the job lease if holder still holds it."""
    return Write(Ref("lease", job_id), eq("holder", holder), delete=True)


# --- versioned documents ------------------------------------------------------------------------
def put_versioned(job_id: str, name: str, value: bytes, expect_version: int) -> Write:
    """Compare-and-swap: store value as version expect_version + 1 if the stored version is
    expect_version (0: the document does not exist yet)."""
    cond = ABSENT if expect_version == 0 else eq("version", expect_version)
    return Write(Ref("doc", job_id, name), cond, {"version": expect_version + 1, "value": value})
