"""slurmctl: embarrassingly parallel batch jobs as Slurm job arrays, coordinated through AWS
(S3, DynamoDB, SQS) or an embedded backend (SQLite + a folder).

The Python API (`submit`, `job`, `list_jobs`, `Job`, `JobStatusView`, `JobFailed`, ...) lives in
`slurmctl.api`, imported on first use so that `import slurmctl` (which every handler does for
its error classes) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slurmctl.errors import (
    JobFailed,
    JobStopped,
    PermanentError,
    SlurmctlError,
    TransientError,
    UserError,
    WaitTimeout,
)

if TYPE_CHECKING:
    from slurmctl.api import Job, JobStatusView, job, list_jobs, submit

__version__ = "0.1.0"
_API = ("Job", "JobStatusView", "job", "list_jobs", "submit")
__all__ = [
    "Job",
    "JobFailed",
    "JobStatusView",
    "JobStopped",
    "PermanentError",
    "SlurmctlError",
    "TransientError",
    "UserError",
    "WaitTimeout",
    "__version__",
    "job",
    "list_jobs",
    "submit",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        from slurmctl import api

        return getattr(api, name)
    raise AttributeError(f"module 'slurmctl' has no attribute {name!r}")
