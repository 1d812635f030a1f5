"""Job, task and batch ids: validated so no path or key can escape a job's folder."""

from __future__ import annotations

import re

from slurmctl.errors import UserError

JOB_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ID_WIDTH = 6


def validate_job_id(job_id: str, where: str = "job_id") -> str:
    """Return job_id if safe to use as a folder name, an S3 key part and an SQS name root."""
    if not JOB_ID_RE.match(job_id) or job_id in {".", ".."} or job_id.startswith("."):
        raise UserError(
            f"{where}: expected letters, digits, '.', '_' or '-' (1 to 64 characters, "
            f"not starting with '.'), found {job_id!r}"
        )
    return job_id


def phase_number(phase: str) -> int:
    """0 for the initial phase, N for retry_N."""
    return 0 if phase == "initial" else int(phase.removeprefix("retry_"))


def phase_name(number: int) -> str:
    return "initial" if number == 0 else f"retry_{number}"


def phase_prefix(phase: str) -> str:
    """'' for the initial phase, 'r1-' for retry_1 and so on."""
    if phase == "initial":
        return ""
    if phase.startswith("retry_"):
        return "r" + phase.removeprefix("retry_") + "-"
    return phase + "-"


def id_width(count: int) -> int:
    return max(ID_WIDTH, len(str(max(count - 1, 0))))


def batch_id(phase: str, index: int, width: int = ID_WIDTH) -> str:
    return f"{phase_prefix(phase)}batch-{index:0{width}d}"


def task_id(phase: str, index: int, width: int = ID_WIDTH) -> str:
    return f"{phase_prefix(phase)}task-{index:0{width}d}"


def group_for_phase(phase: str) -> str:
    """The task group of the batch tasks of a phase (docs/architecture.md, "The words")."""
    if phase == "initial":
        return "initial_batch"
    if phase.startswith("retry_"):
        return "retry_batch_" + phase.removeprefix("retry_")
    return phase
