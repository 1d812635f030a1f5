"""How long the worker's Slurm allocation has left, and when USR1 comes before its end.

A worker paused near its time limit checkpoints and leaves rather than burn the allocation
waiting, and a worker never claims a task it cannot finish before USR1 (worker/walltime.py):
finalize submits fresh workers once there is work to do. The end time is asked of Slurm once per
worker at most (SLURM_JOB_END_TIME when Slurm sets it, else one `squeue %e`): never once a minute
per worker, which would grow slurmctld's load with the number of workers."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("slurmctl.worker")

LEAVE_MARGIN_S = 180.0
"""A paused worker leaves when its allocation ends within this long."""
SIGNAL_LEAD_S = 120
"""USR1 this long before the time limit (`--signal=B:USR1@120`): time to checkpoint."""
SIGNAL_EARLY_S = 30.0
"""slurmctld checks time limits every 30 s (PERIODIC_TIMEOUT) and sends the warning signal at the
first check that is within 30 s of its time: USR1 may come up to this much early, never late."""


def time_limit_s(text: str | None) -> int | None:
    """A Slurm time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds; None when
    unlimited or unset."""
    if not text or text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        parts += [0] * (3 - len(parts))
        h, m, s = parts
        return ((int(days) * 24 + h) * 60 + m) * 60 + s
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


def signal_lead_s(time_limit: str | None) -> int:
    """120 s, or half a shorter time limit: a worker told to stop at once would do nothing."""
    limit = time_limit_s(time_limit)
    if limit is None or limit >= 2 * SIGNAL_LEAD_S:
        return SIGNAL_LEAD_S
    return max(limit // 2, 10)


def parse_end_time(text: str) -> float | None:
    """squeue's %e (local time, `2026-11-28T20:15:00`), or epoch seconds; None for N/A, Unknown."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


TRANSIENT = ("Unable to contact slurm controller", "Socket timed out", "Resource temporarily")
"""squeue failures worth asking again (a busy or unreachable slurmctld), with backoff."""
ATTEMPTS = 3


def _squeue_end(job_id: str, backoff_s: float = 1.0) -> float | None:
    exe = shutil.which("squeue")
    if exe is None:
        return None
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(backoff_s * 2.0 ** (attempt - 1))
        try:
            out = subprocess.run(
                [exe, "-h", "-j", job_id, "-o", "%e"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            continue
        except (OSError, subprocess.SubprocessError):
            return None
        lines = out.stdout.split()
        if out.returncode == 0:
            return parse_end_time(lines[0]) if lines else None
        if not any(t in out.stderr for t in TRANSIENT):
            return None
        log.debug("squeue for the end time: %s; asking again", out.stderr.strip())
    return None


class AllocationClock:
    """The allocation's end: env SLURM_JOB_END_TIME, else `squeue -h -j $SLURM_JOB_ID -o %e`
    asked once (a time limit an admin changes later with scontrol is not seen: USR1 still
    stops the worker at a checkpoint); None outside Slurm (a local worker never leaves for
    this)."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        squeue: Callable[[str], float | None] = _squeue_end,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.squeue = squeue
        self.clock = clock
        self._asked = False
        self._end: float | None = None
        self.squeue_calls = 0

    def end_time(self) -> float | None:
        env_end = parse_end_time(self.environ.get("SLURM_JOB_END_TIME", ""))
        if env_end is not None:
            return env_end
        job_id = self.environ.get("SLURM_JOB_ID")
        if not job_id:
            return None
        if not self._asked:  # once per worker, whatever it answered
            self._asked = True
            self.squeue_calls += 1
            self._end = self.squeue(job_id)
        return self._end

    def seconds_left(self) -> float | None:
        end = self.end_time()
        return None if end is None else end - self.clock()

    def near_end(self, margin_s: float = LEAVE_MARGIN_S) -> bool:
        left = self.seconds_left()
        return left is not None and left <= margin_s
