"""`slurmctl retry --tasks`: finished tasks run again from their batches.

For a committed result that went missing or was damaged (the job FAILED at aggregation and
names the task), or a task that could not run (a damaged batch, since restored). The task goes
back to PENDING in the job's current phase, and its counters move back exactly, in the same
transaction: what it had counted (succeeded, failed, rows) is taken off, its items are pending
again. A task of an earlier phase runs again with only the items that succeeded there (its
failures were already retried or listed in that phase's failure manifest), read from its
verified item-errors file; so no item is ever counted twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass

from slurmctl import lifecycle
from slurmctl.backends import Backend
from slurmctl.backends.batches import batch_where, read_batch
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.statestore import (
    ITEMS_FAILED_PERMANENT,
    ITEMS_FAILED_TRANSIENT,
    ITEMS_PENDING,
    ITEMS_SUCCEEDED,
    OUTPUT_ROWS,
    JobRecord,
    TaskRecord,
    task_counter,
)
from slurmctl.errors import IntegrityError, JobStateError, UserError
from slurmctl.finalize.intermediates import refuse_if_removed
from slurmctl.finalize.retry import batch_lines, task_errors
from slurmctl.ids import group_for_phase
from slurmctl.layout import JobLayout
from slurmctl.states import TaskStatus


@dataclass(frozen=True)
class Rerun:
    task_id: str
    items: int


def _fresh(task: TaskRecord, **changes: object) -> TaskRecord:
    """The task as never run: PENDING, no lease, no output, nothing counted."""
    return dataclasses.replace(
        task,
        status=TaskStatus.PENDING,
        attempts=0,
        worker_losses=0,
        lease_token=None,
        worker_id=None,
        lease_expires=None,
        checkpoint_key=None,
        checkpoint_sha256=None,
        output_key=None,
        output_sha256=None,
        output_rows=0,
        errors_key=None,
        errors_sha256=None,
        succeeded=0,
        failed_permanent=0,
        failed_transient=0,
        start_time=None,
        end_time=None,
        error=None,
        **changes,  # type: ignore[arg-type]
    )


def _batch(backend: Backend, job_id: str, task: TaskRecord) -> bytes:
    try:
        return read_batch(backend.objects, task)
    except ObjectNotFound:
        refuse_if_removed(backend, job_id, f"task {task.task_id} cannot run again")
        what = "is missing"
    except IntegrityError:
        what = "is damaged (its sha256 is not the one recorded)"
    raise JobStateError(
        f"job {job_id}: task {task.task_id} cannot run again: its batch {batch_where(task)} {what}"
    )


def _plan(backend: Backend, job: JobRecord, task: TaskRecord) -> tuple[TaskRecord, dict[str, int]]:
    """The task's new record and the counter moves that undo what it counted."""
    batch = _batch(backend, job.job_id, task)
    old, phase = task.phase, job.phase
    deltas = {task_counter(old, task.status): -1, task_counter(phase, TaskStatus.PENDING): 1}
    if task.status == TaskStatus.FAILED:  # it never counted items: they are still pending
        return _fresh(task, phase=phase, group=group_for_phase(phase)), deltas
    deltas |= {ITEMS_SUCCEEDED: -task.succeeded, OUTPUT_ROWS: -task.output_rows}
    if old == phase:  # its failures are not listed anywhere yet: they run again too
        deltas |= {
            ITEMS_FAILED_PERMANENT: -task.failed_permanent,
            ITEMS_FAILED_TRANSIENT: -task.failed_transient,
            ITEMS_PENDING: task.succeeded + task.failed_permanent + task.failed_transient,
        }
        return _fresh(task), deltas
    deltas[ITEMS_PENDING] = task.succeeded
    if not task.failed_permanent + task.failed_transient:
        return _fresh(task, phase=phase, group=group_for_phase(phase)), deltas
    try:
        failed = {e["index"] for e in task_errors(backend, task)}
    except (ObjectNotFound, IntegrityError):
        raise JobStateError(
            f"job {job.job_id}: task {task.task_id} of phase {old} cannot run again: its item "
            f"errors {task.errors_key} are unusable, so which of its items were retried is unknown"
        ) from None
    lines = [line for i, line in enumerate(batch_lines(batch)) if i not in failed]
    data = b"\n".join(lines) + b"\n"
    key = JobLayout(job.job_id).batch(f"{task.batch_id}.{secrets.token_hex(4)}")
    backend.objects.put_bytes(key, data)
    new = _fresh(
        task,
        phase=phase,
        group=group_for_phase(phase),
        items=len(lines),
        batch_key=key,
        batch_sha256=hashlib.sha256(data).hexdigest(),
        batch_range=None,  # a whole object of its own
    )
    return new, deltas


def missing_results(backend: Backend, job_id: str) -> list[str]:
    """The committed tasks whose result or item-errors object is gone: one listing of the
    results folder against the committed keys (the state store says what must be there)."""
    present = set(backend.objects.list(JobLayout(job_id).root + "results/"))
    return [
        t.task_id
        for t in backend.state.iter_tasks(job_id, status=TaskStatus.SUCCESS)
        if any(k and k not in present for k in (t.output_key, t.errors_key))
    ]


def rerun_tasks(backend: Backend, job: JobRecord, task_ids: list[str]) -> list[Rerun]:
    """Reset the tasks (the caller holds the job lease), then queue them and revive the job."""
    tasks = []
    for tid in task_ids:
        task = backend.state.get_task(job.job_id, tid)
        if task is None:
            raise UserError(f"--tasks: job {job.job_id} has no task {tid!r}")
        if task.status not in (TaskStatus.SUCCESS, TaskStatus.FAILED):
            raise JobStateError(f"job {job.job_id}: task {tid} is {task.status}: it runs already")
        tasks.append(task)
    done = []
    for task in tasks:
        new, deltas = _plan(backend, job, task)
        if not backend.state.replace_task(new, expect_status=task.status, counter_deltas=deltas):
            raise JobStateError(f"job {job.job_id}: task {task.task_id} changed; try again")
        done.append(Rerun(task.task_id, new.items))
    backend.queue.create_queue(job.job_id)
    backend.queue.send(job.job_id, [r.task_id for r in done])
    if not lifecycle.reopen(backend, job.job_id, from_status=job.status, clear_backoff=True):
        raise JobStateError(f"job {job.job_id} changed while its tasks were re-run; try again")
    return done
