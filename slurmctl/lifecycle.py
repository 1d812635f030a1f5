"""The job lifecycle: every change of a job's status (and of its pause flag) is one function here.

Why one module: the status is read by `status`, the exit codes, the executors' decisions and the
stalled alert (which reads `updated_at`); when the writes were dict literals spread over eight
modules, some forgot `updated_at`, a late writer overwrote an earlier failure's reason, and a run
that started after its workers had already failed the job turned it back to RUNNING. Here each
transition is one conditional update on the status it expects (so of two racing writers one
wins, and a terminal status is never left by accident), always sets `updated_at`, writes the
job's history entry where one is due, and says whether it applied.

```
  PENDING ─start_run─► RUNNING ─begin_retry_phase─► RETRYING ◄─┐ begin_retry_phase
                          │                            │ ──────┘ (retry_2, ...)
                          └──begin_aggregation──┐      │ begin_aggregation
                                                ▼      ▼
                                               AGGREGATING ─complete─► COMPLETED

  any unfinished status ─fail─► FAILED (the first reason stands)
  any unfinished status ─cancel─► CANCELLED
  FAILED, CANCELLED ─reopen─► RUNNING                   (`resume`)
  COMPLETED, FAILED ─reopen(clear_backoff)─► RUNNING    (`retry --tasks`: tasks run again)
  FAILED ─reopen(to=AGGREGATING)─► AGGREGATING          (`aggregate` after a fix)
  PENDING, AGGREGATING ─start_run─► RUNNING             (an executor starting a new run's workers)
```

`pause` and `lift_pause` set the pause flag, not the status: a paused job keeps its status and
is *shown* PAUSED (`observe.status`). Only `submit` creates the record (PENDING); nothing else
writes `status` or `paused` (tests/test_lifecycle_writers.py checks the source for it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from slurmctl.backends import Backend
from slurmctl.backends.statestore import JobRecord
from slurmctl.jobs import append_history, breaker_reason
from slurmctl.states import JobStatus

RACE_TRIES = 20
"""A transition from "any unfinished status" re-reads and tries again when another writer moved
the status in between; a status only moves forward, so a few tries always settle."""


def _write(
    backend: Backend,
    job_id: str,
    changes: Mapping[str, Any],
    expect: Mapping[str, Any] | None,
    counter_deltas: Mapping[str, int] | None = None,
) -> bool:
    return backend.state.update_job(
        job_id,
        {**changes, "updated_at": time.time()},
        expect=expect,
        counter_deltas=counter_deltas,
    )


def _from_unfinished(backend: Backend, job_id: str, changes: Mapping[str, Any]) -> bool:
    """Apply changes conditional on the status read, as long as it is not terminal; False when
    the job is finished (or gone): a COMPLETED, FAILED or CANCELLED job keeps its status."""
    for _ in range(RACE_TRIES):
        job = backend.state.get_job(job_id)
        if job is None or job.status.terminal:
            return False
        if _write(backend, job_id, changes, {"status": job.status}):
            return True
    return False


# --- runs -------------------------------------------------------------------------------------
def start_run(backend: Backend, job_id: str, run: int, *, from_status: JobStatus) -> bool:
    """An executor started the workers of a new job run: RUNNING, with the run's number.
    Conditional on the status the executor read before starting them, so a worker that failed
    the job meanwhile (a handler that cannot be imported) keeps it FAILED."""
    return _write(
        backend, job_id, {"status": JobStatus.RUNNING, "run": run}, {"status": from_status}
    )


def reopen(
    backend: Backend,
    job_id: str,
    *,
    from_status: JobStatus,
    to: JobStatus = JobStatus.RUNNING,
    clear_backoff: bool = False,
) -> bool:
    """An operator makes a job progress again, its error cleared: `resume` of a FAILED or
    CANCELLED job (to RUNNING), tasks re-run by `retry --tasks` (to RUNNING, no backoff left),
    `aggregate` of a FAILED job after a fix (to AGGREGATING: finalize decides again)."""
    changes: dict[str, Any] = {"status": to, "error": None}
    if clear_backoff:
        changes["not_before"] = 0.0
    return _write(backend, job_id, changes, {"status": from_status})


def begin_retry_phase(
    backend: Backend,
    job_id: str,
    *,
    from_phase: str,
    new_phase: str,
    not_before: float,
    counter_deltas: Mapping[str, int],
) -> bool:
    """Finalize (or an operator's `retry`) starts the next phase: RETRYING, once however many
    finalizers race (conditional on the phase read), the new phase's counters moved with it."""
    return _write(
        backend,
        job_id,
        {"phase": new_phase, "status": JobStatus.RETRYING, "not_before": not_before},
        {"phase": from_phase},
        counter_deltas,
    )


def begin_aggregation(backend: Backend, job_id: str) -> bool:
    """Finalize found every task of the last phase finished: AGGREGATING, from any unfinished
    status (again after a finalize killed mid-merge). False when the job is finished."""
    return _from_unfinished(backend, job_id, {"status": JobStatus.AGGREGATING})


def complete(backend: Backend, job_id: str, *, rows: int, output: str) -> bool:
    """The final output and its manifest are written: COMPLETED, only from AGGREGATING (a job
    cancelled or failed during the merge keeps that status), and the history's "completed"."""
    if not _write(
        backend, job_id, {"status": JobStatus.COMPLETED}, {"status": JobStatus.AGGREGATING}
    ):
        return False
    append_history(backend, job_id, "completed", rows=rows, output=output)
    return True


# --- ends -------------------------------------------------------------------------------------
def fail(backend: Backend, job_id: str, reason: str) -> bool:
    """The job cannot finish: FAILED with its reason, and the history's "failed". The first
    reason stands: of several workers or steps failing the job, the first one applies and the
    others (and any on an already finished job) get False and change nothing."""
    if not _from_unfinished(backend, job_id, {"status": JobStatus.FAILED, "error": reason}):
        return False
    append_history(backend, job_id, "failed", reason=reason)
    return True


def cancel(backend: Backend, job_id: str) -> bool:
    """`slurmctl cancel`: CANCELLED from any unfinished status (before the workers are stopped,
    so a worker or finalize that still starts sees it and leaves). False when already finished.
    The history's "cancel" is written by `record_cancel`, once the Slurm jobs are known."""
    return _from_unfinished(backend, job_id, {"status": JobStatus.CANCELLED})


def record_cancel(backend: Backend, job_id: str, slurm_job_ids: list[str]) -> None:
    """The history entry of a cancel: which Slurm jobs were sent scancel."""
    append_history(backend, job_id, "cancel", slurm_job_ids=slurm_job_ids)


# --- pause ------------------------------------------------------------------------------------
def pause(
    backend: Backend, job_id: str, *, reason: str | None = None, by: str = "operator"
) -> bool:
    """The one pause transition (`slurmctl pause` and the circuit breaker): the job's flag, then
    its rate-limit buckets (a worker waiting for a slot stops at its next acquire), then history.

    Conditional on the job not being paused already: of several workers tripping the breaker at
    once, one pauses the job and records it; the others get False (pausing twice is a no-op).
    """
    changes: dict[str, Any] = {"paused": True}
    if reason is not None:
        changes["error"] = reason
    if not _write(backend, job_id, changes, {"paused": False}):
        return False
    backend.state.set_buckets_paused(job_id, True)
    details = {"by": by, **({"reason": reason} if reason else {})}
    append_history(backend, job_id, "pause", **details)
    return True


def lift_pause(backend: Backend, job_id: str, job: JobRecord) -> str | None:
    """`resume`'s half of the pause: clear the flag (and a breaker's reason), unpause the
    buckets. Returns what was lifted ("pause" or "breaker"), None when the job was not paused
    (or another `resume` lifted it first: conditional on the flag, so lifting twice is a no-op)."""
    if not job.paused:
        return None
    lifted = "breaker" if breaker_reason(job) else "pause"
    changes: dict[str, Any] = {"paused": False}
    if lifted == "breaker":
        changes["error"] = None
    if not _write(backend, job_id, changes, {"paused": True}):
        return None
    backend.state.set_buckets_paused(job_id, False)
    append_history(backend, job_id, "resume", lifted=lifted)
    return lifted
