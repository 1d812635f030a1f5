"""The states of jobs and tasks: one enum each, a docstring per member."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "PENDING"
    """Accepted: batches and tasks are being written, or workers are queued but none has started."""
    RUNNING = "RUNNING"
    """Workers are draining the tasks of the current phase."""
    PAUSED = "PAUSED"
    """Shown while the pause flag is set: no rate-limit slots are issued, no task is claimed."""
    RETRYING = "RETRYING"
    """A retry phase is planned or running (its workers may wait for the backoff)."""
    AGGREGATING = "AGGREGATING"
    """Every task is finished; the aggregator is merging the committed outputs."""
    COMPLETED = "COMPLETED"
    """Every item is accounted for: in the final output, or a failure manifest with its reason."""
    FAILED = "FAILED"
    """The job cannot finish (integrity error beyond repair, handler not importable, ...)."""
    CANCELLED = "CANCELLED"
    """Stopped by `slurmctl cancel`; `resume` carries on from where it stopped."""
    STOPPED = "STOPPED"
    """Shown for a local-executor job nobody runs: its foreground `submit` or `resume` was
    interrupted (Ctrl-C) or killed. `resume` carries on from where it stopped."""

    @property
    def terminal(self) -> bool:
        return self in {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    """Waiting to be claimed (its id is in the queue, or the reconciler will put it back)."""
    RUNNING = "RUNNING"
    """Claimed under a lease; another worker may take it over once the lease expires."""
    SUCCESS = "SUCCESS"
    """Committed: its output key, sha256 and row count are recorded. Item failures are counted."""
    FAILED = "FAILED"
    """Cannot run at all (its batch is corrupt, the handler cannot be imported)."""


UNFINISHED = (TaskStatus.PENDING, TaskStatus.RUNNING)
