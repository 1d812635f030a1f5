"""Who holds a task's lease: the worker process, as its executor can recognise it dead.

A worker records its `Holder` with every claim (`TaskRecord.holder`). An executor that knows a
holder dead (the local executor reaped the process; Slurm reports the array element ended) frees
its leases at once with `release_dead`, instead of making the task wait a whole lease TTL. The
worker id alone cannot say it: `local-1-0` is reused by the next `resume`, and `<array>_<index>`
by a requeued element.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    slurm_job_id: str | None = None
    """SLURM_JOB_ID: the element's own job id (unique per array element)."""
    slurm_element: str | None = None
    """`<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>`, as squeue names the element."""
    pidns: str | None = None
    """The pid namespace (`/proc/self/ns/pid`): a pid means something only inside it (a
    container on the same host has its own)."""

    @classmethod
    def here(cls, environ: dict[str, str] | None = None) -> Holder:
        env = os.environ if environ is None else environ
        array, index = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        return cls(
            socket.gethostname(),
            os.getpid(),
            env.get("SLURM_JOB_ID"),
            f"{array}_{index}" if array and index else None,
            _pidns(),
        )

    def encode(self) -> str:
        doc = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> Holder | None:
        """None for a record written before holders were recorded, or unreadable."""
        if not text:
            return None
        try:
            doc: Any = json.loads(text)
            return cls(
                str(doc["host"]),
                int(doc["pid"]),
                doc.get("slurm_job_id"),
                doc.get("slurm_element"),
                doc.get("pidns"),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def process_gone(self) -> bool:
        """True when the holder ran on this host, in this pid namespace, and no process has its
        pid any more (a pid still in use, perhaps by another process, counts as alive: the lease
        then expires as it would have)."""
        if self.host != socket.gethostname() or self.pidns is None or self.pidns != _pidns():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _pidns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
