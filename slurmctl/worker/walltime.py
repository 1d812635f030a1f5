"""Walltime-aware claiming: a Slurm worker does not claim a task it cannot finish before USR1.

A task claimed in the last minutes of an allocation would be stopped by USR1 and redone from its
checkpoint by the next worker: time spent twice. So before each claim the worker compares what
its allocation has left before USR1 may come (its end time, less the `--signal` lead, less the
30 s by which Slurm may signal early) with what a task takes: the job's `slurm.min_remaining`
when set, else its own running estimate for the phase (the longest of its last tasks, with a
margin). When the task would not fit it claims nothing and leaves cleanly (exit 0, no lease
held); finalize then submits fresh workers if work remains.

A worker that has finished no task of the phase has no estimate and claims: every run of workers
makes progress, so a time limit shorter than one task never loops without end (the task is
stopped by USR1 at a checkpoint, as without this rule). Outside Slurm (no end time) nothing
changes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from slurmctl.ratelimit.allocation import SIGNAL_EARLY_S, AllocationClock, signal_lead_s

RECENT = 10
"""Tasks of a phase the estimate looks at: the longest of them."""
MARGIN = 1.25
"""The estimate is the longest recent task times this: tasks vary."""


@dataclass
class TaskDurations:
    """How long this worker's tasks took, per phase (only tasks it finished: committed or
    failed, not stopped)."""

    _recent: dict[str, deque[float]] = field(default_factory=dict)

    def add(self, phase: str, seconds: float) -> None:
        self._recent.setdefault(phase, deque(maxlen=RECENT)).append(seconds)

    def estimate(self, phase: str) -> float | None:
        recent = self._recent.get(phase)
        return max(recent) * MARGIN if recent else None


@dataclass
class WalltimeRule:
    """Whether a task of a phase still fits in this worker's allocation."""

    clock: AllocationClock
    lead_s: float
    """The `--signal=B:USR1@<lead>` the workers were submitted with."""
    min_remaining_s: float | None = None
    durations: TaskDurations = field(default_factory=TaskDurations)

    @classmethod
    def of(
        cls, clock: AllocationClock, time_limit: str | None, min_remaining_s: float | None
    ) -> WalltimeRule:
        """The rule for workers submitted with this `slurm.time` (its USR1 lead)."""
        return cls(clock, signal_lead_s(time_limit), min_remaining_s)

    def before_signal_s(self) -> float | None:
        """Seconds until USR1 may come (None outside Slurm)."""
        left = self.clock.seconds_left()
        return None if left is None else left - self.lead_s - SIGNAL_EARLY_S

    def refusal(self, phase: str) -> str | None:
        """Why no task should be claimed now, or None when one may be."""
        need = self.min_remaining_s
        source = "slurm.min_remaining"
        if need is None:
            need, source = self.durations.estimate(phase), "the estimate for this phase"
        if not need:  # no estimate yet, or min_remaining: 0
            return None
        room = self.before_signal_s()
        if room is None or room >= need:
            return None
        return (
            f"{max(room, 0.0):.0f} s left before USR1 may come, a task of phase {phase} takes "
            f"{need:.0f} s ({source}): claiming no more tasks, leaving"
        )
