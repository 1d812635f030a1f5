"""Removing a COMPLETED job's intermediates: its batches, per-task results (with their item
errors and markers), aggregation levels and checkpoints, keeping the final output and its
manifest, the failure manifests, the quarantine, the task manifests, the history and the logs.

Run by `slurmctl clean JOB --intermediates`, and by finalize at COMPLETED when the definition
says `output.keep_intermediates: false`. A marker (`intermediates-removed.json`) is written
before anything goes, so a job whose removal was cut short is known as such, `retry` and
`retry --tasks` refuse it with one line (they need the batches), and running it again finishes
the removal. On S3 the keys go 1,000 per request while the listing streams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from slurmctl.backends import Backend
from slurmctl.errors import JobStateError
from slurmctl.jobs import append_history, get_job
from slurmctl.layout import JobLayout
from slurmctl.states import JobStatus

DELETE_BATCH = 1000


@dataclass(frozen=True)
class Removed:
    objects: int
    prefixes: tuple[str, ...]


def intermediates_removed(backend: Backend, job_id: str) -> bool:
    return backend.objects.head(JobLayout(job_id).intermediates_removed) is not None


def refuse_if_removed(backend: Backend, job_id: str, what: str) -> None:
    """One line for a command that needs the batches of a job whose intermediates are gone."""
    if intermediates_removed(backend, job_id):
        raise JobStateError(
            f"job {job_id}: its intermediates (batches, per-task results) were removed "
            f"(`slurmctl clean --intermediates` or output.keep_intermediates: false): {what}"
        )


def check_removable(backend: Backend, job_id: str) -> None:
    job = get_job(backend, job_id)
    if job.status != JobStatus.COMPLETED:
        raise JobStateError(
            f"job {job_id} is {job.status}: --intermediates applies to a COMPLETED job "
            "(an unfinished or failed one still needs its batches and results)"
        )


def remove_intermediates(backend: Backend, job_id: str, *, by: str) -> Removed:
    """Remove the intermediates of a COMPLETED job (JobStateError otherwise); idempotent."""
    check_removable(backend, job_id)
    layout = JobLayout(job_id)
    backend.objects.put_json(layout.intermediates_removed, {"at": time.time(), "by": by})
    count = 0
    for prefix in layout.intermediates():
        batch: list[str] = []
        for key in backend.objects.list(prefix):
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                backend.objects.delete_many(batch)
                count += len(batch)
                batch = []
        if batch:
            backend.objects.delete_many(batch)
            count += len(batch)
    append_history(backend, job_id, "clean_intermediates", objects=count, by=by)
    return Removed(count, layout.intermediates())
