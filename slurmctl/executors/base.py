"""The executor interface: how a job's workers get started (and stopped)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from slurmctl.states import JobStatus


class Executor(ABC):
    name: str

    @abstractmethod
    def run(self, job_id: str) -> JobStatus:
        """Make the job progress: start workers for the work that remains, then finalize.

        The local executor does it in the foreground until the job ends; the Slurm executor
        queues arrays and a finalize job, and returns.
        """

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job's workers."""
