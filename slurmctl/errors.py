"""One exception tree with a common root.

`UserError` and its children are the user's mistakes: the CLI prints their one-line message and
exits with code 2, never a traceback. Everything else is ours or the infrastructure's.
"""

from __future__ import annotations

from typing import Any

FRAMEWORK_ERROR = "framework error"
"""How a task that slurmctl's own code failed is named: in its reason, the job's, and as its
group's error type in `analyze-errors` (`framework`)."""


class SlurmctlError(Exception):
    """Root of every error slurmctl raises on purpose."""


class UserError(SlurmctlError):
    """A mistake the user can fix: printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """The job definition is malformed (names the file and field)."""


class InputError(UserError):
    """The input cannot be used (names the file and line)."""


class HandlerImportError(UserError):
    """The handler named by the job definition cannot be imported."""


class JobNotFound(UserError):
    """No job with this id under the state root."""


class JobStateError(UserError):
    """The operation does not apply to the job in its current state."""


class JobBusy(JobStateError):
    """Another slurmctl process holds the job-level lease: it is running the job."""


class BackendUnavailable(UserError):
    """A store cannot be reached (names the endpoint)."""


class IntegrityError(SlurmctlError):
    """A stored object does not match the sha256 recorded when it was committed."""


class LeaseLost(SlurmctlError):
    """The task's lease is no longer ours: another worker holds it, or it expired and moved on."""


class JobFailed(SlurmctlError):
    """`Job.wait`: the job ended FAILED (its reason in the message; `.status` has the rest)."""

    def __init__(self, status: Any) -> None:
        super().__init__(f"job {status.job_id} FAILED: {status.error or 'no reason recorded'}")
        self.status = status


class JobStopped(SlurmctlError):
    """`Job.wait`: the job stopped before its end (CANCELLED, STOPPED, paused by its breaker);
    `slurmctl resume JOB` (or `Job.resume()`) carries on."""

    def __init__(self, status: Any) -> None:
        why = f": {status.error}" if status.error else ""
        super().__init__(
            f"job {status.job_id} is {status.status}{why}; `slurmctl resume {status.job_id}` "
            "carries on"
        )
        self.status = status


class WaitTimeout(SlurmctlError, TimeoutError):
    """`Job.wait(timeout=...)`: the job had not ended in time; it carries on."""

    def __init__(self, status: Any, timeout: float) -> None:
        super().__init__(f"job {status.job_id} is still {status.status} after {timeout:g}s")
        self.status = status


class HandlerError(Exception):
    """Base of the exceptions a handler raises to say how an item failed."""


class TransientError(HandlerError):
    """The item may succeed when tried again later (network blip, 5xx, throttling)."""


class PermanentError(HandlerError):
    """The item will never succeed as it is (bad item, resource gone)."""
