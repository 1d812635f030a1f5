"""Slurm job states, as squeue and sacct print them, mapped onto one enum.

The executor asks one question of these states: is a worker of the job still alive (queued,
running or about to run), or is it gone and its work up to finalize? Every code and name Slurm
22.05 documents is in the tables, so a state we have not met is still classified.
"""

from __future__ import annotations

from enum import StrEnum


class SlurmState(StrEnum):
    PENDING = "PENDING"
    """Queued: waiting for resources, a dependency, a begin time (the ~120 s hold after
    `scontrol requeue`) or a held state."""
    CONFIGURING = "CONFIGURING"
    """Allocated, its nodes booting or being set up: about to run."""
    RUNNING = "RUNNING"
    """The batch script runs."""
    SUSPENDED = "SUSPENDED"
    """Stopped by the scheduler (gang scheduling, `scontrol suspend`); resumes later."""
    STOPPED = "STOPPED"
    """Sent SIGSTOP; keeps its allocation and carries on after SIGCONT."""
    SIGNALING = "SIGNALING"
    """Being signalled (e.g. `--signal` before the time limit); still running."""
    COMPLETING = "COMPLETING"
    """Ending: Slurm waits up to KillWait for its processes. Blocks the node meanwhile."""
    STAGE_OUT = "STAGE_OUT"
    """Staging out burst-buffer data after the script ended."""
    REQUEUED = "REQUEUED"
    """Put back in the queue (requeue, requeue hold, federation requeue): will run again."""
    RESIZING = "RESIZING"
    """Its allocation is being changed; still alive."""
    COMPLETED = "COMPLETED"
    """The script exited 0: the worker left because its phase had no task left."""
    FAILED = "FAILED"
    """The script exited non-zero: 143 is a worker stopped at a checkpoint by USR1 or TERM."""
    CANCELLED = "CANCELLED"
    """scancel (by `slurmctl cancel`, an operator or an admin)."""
    TIMEOUT = "TIMEOUT"
    """Killed at its time limit. Slurm does not requeue it: finalize resubmits workers."""
    PREEMPTED = "PREEMPTED"
    """Preempted and not requeued (PreemptMode=CANCEL): finalize resubmits workers."""
    NODE_FAIL = "NODE_FAIL"
    """Its node failed; leases expire and the reconciler puts the tasks back."""
    BOOT_FAIL = "BOOT_FAIL"
    """Its node failed to boot; it never ran."""
    DEADLINE = "DEADLINE"
    """Its `--deadline` passed before it could finish."""
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    """Killed by the memory limit (`slurm.mem`)."""
    SPECIAL_EXIT = "SPECIAL_EXIT"
    """Requeued into a held state after a special exit code; needs an operator."""
    REVOKED = "REVOKED"
    """Removed in favour of a sibling (federation)."""
    UNKNOWN = "UNKNOWN"
    """Slurm no longer knows it (older than MinJobAge, without accounting) or printed a state
    we could not read: treated as gone."""

    @property
    def alive(self) -> bool:
        """Queued or running: it may still drain tasks, so no new workers are needed."""
        return self in ALIVE

    @property
    def stopped_from_outside(self) -> bool:
        """Ended by the cluster rather than by the worker: no fault of the job's."""
        return self in OUTSIDE


ALIVE = frozenset(
    {
        SlurmState.PENDING,
        SlurmState.CONFIGURING,
        SlurmState.RUNNING,
        SlurmState.SUSPENDED,
        SlurmState.STOPPED,
        SlurmState.SIGNALING,
        SlurmState.COMPLETING,
        SlurmState.STAGE_OUT,
        SlurmState.REQUEUED,
        SlurmState.RESIZING,
    }
)
OUTSIDE = frozenset(
    {
        SlurmState.CANCELLED,
        SlurmState.TIMEOUT,
        SlurmState.PREEMPTED,
        SlurmState.NODE_FAIL,
        SlurmState.BOOT_FAIL,
        SlurmState.DEADLINE,
    }
)

SQUEUE_CODES: dict[str, SlurmState] = {
    "PD": SlurmState.PENDING,
    "CF": SlurmState.CONFIGURING,
    "R": SlurmState.RUNNING,
    "S": SlurmState.SUSPENDED,
    "ST": SlurmState.STOPPED,
    "SI": SlurmState.SIGNALING,
    "CG": SlurmState.COMPLETING,
    "SO": SlurmState.STAGE_OUT,
    "RQ": SlurmState.REQUEUED,
    "RF": SlurmState.REQUEUED,
    "RH": SlurmState.REQUEUED,
    "RD": SlurmState.PENDING,
    "RS": SlurmState.RESIZING,
    "CD": SlurmState.COMPLETED,
    "F": SlurmState.FAILED,
    "CA": SlurmState.CANCELLED,
    "TO": SlurmState.TIMEOUT,
    "PR": SlurmState.PREEMPTED,
    "NF": SlurmState.NODE_FAIL,
    "BF": SlurmState.BOOT_FAIL,
    "DL": SlurmState.DEADLINE,
    "OOM": SlurmState.OUT_OF_MEMORY,
    "SE": SlurmState.SPECIAL_EXIT,
    "RV": SlurmState.REVOKED,
}
"""squeue's compact codes (`%t`)."""

LONG_NAMES: dict[str, SlurmState] = {
    **{s.value: s for s in SlurmState},
    "REQUEUE_FED": SlurmState.REQUEUED,
    "REQUEUE_HOLD": SlurmState.REQUEUED,
    "RESV_DEL_HOLD": SlurmState.PENDING,
}
"""squeue's long names (`%T`) and sacct's `State` column (which may read `CANCELLED by 0`)."""


def parse_state(text: str) -> SlurmState:
    """A state as squeue (code or name) or sacct prints it; UNKNOWN when unreadable."""
    word = text.strip().split(" ", 1)[0].rstrip("+").upper()
    return SQUEUE_CODES.get(word) or LONG_NAMES.get(word) or SlurmState.UNKNOWN
