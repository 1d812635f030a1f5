"""How long the worker's Slurm allocation has left: a worker paused near its time limit
checkpoints and leaves rather than burn the allocation waiting (finalize submits fresh workers
once there is work to do)."""

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
SQUEUE_EVERY_S = 60.0
"""squeue is asked at most this often (a time limit may be changed with scontrol)."""


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


def _squeue_end(job_id: str) -> float | None:
    exe = shutil.which("squeue")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-h", "-j", job_id, "-o", "%e"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    return parse_end_time(lines[0]) if out.returncode == 0 and lines else None


class AllocationClock:
    """The allocation's end: env SLURM_JOB_END_TIME, else `squeue -h -j $SLURM_JOB_ID -o %e`;
    None outside Slurm (a local worker never leaves for this)."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        squeue: Callable[[str], float | None] = _squeue_end,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.squeue = squeue
        self.clock = clock
        self._asked = float("-inf")
        self._end: float | None = None

    def end_time(self) -> float | None:
        env_end = parse_end_time(self.environ.get("SLURM_JOB_END_TIME", ""))
        if env_end is not None:
            return env_end
        job_id = self.environ.get("SLURM_JOB_ID")
        if not job_id:
            return None
        if self.clock() - self._asked >= SQUEUE_EVERY_S:
            self._asked = self.clock()
            self._end = self.squeue(job_id)
        return self._end

    def seconds_left(self) -> float | None:
        end = self.end_time()
        return None if end is None else end - self.clock()

    def near_end(self, margin_s: float = LEAVE_MARGIN_S) -> bool:
        left = self.seconds_left()
        return left is not None and left <= margin_s
