"""The finalize step: reconcile; if the phase is done, write its failure manifest and aggregate.

Run by the local executor when its workers exit, by Slurm after the array
(`--dependency=afterany`), and by `resume`. Idempotent: a finished job is left as it is.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmctl.backends import Backend
from slurmctl.backends.statestore import task_counter
from slurmctl.errors import IntegrityError
from slurmctl.finalize.aggregate import aggregate
from slurmctl.finalize.reconcile import reconcile
from slurmctl.jobs import append_history, get_job, load_definition
from slurmctl.layout import JobLayout
from slurmctl.states import JobStatus, TaskStatus

log = logging.getLogger("slurmctl.finalize")


@dataclass(frozen=True)
class FinalizeResult:
    status: JobStatus
    work_left: int
    """Tasks of the current phase still PENDING or RUNNING: workers are needed."""


def write_failure_manifest(
    backend: Backend, job_id: str, phase: str, work: Path
) -> tuple[str, int]:
    """failures/<phase>.json: every failed item of the phase's committed tasks, with its reason."""
    layout = JobLayout(job_id)
    path = work / f"failures-{phase}.json"
    count = 0
    with open(path, "w") as out:
        out.write(f'{{"job_id": {json.dumps(job_id)}, "phase": {json.dumps(phase)}, "items": [\n')
        for task in backend.state.iter_tasks(job_id, phase=phase, status=TaskStatus.SUCCESS):
            if not task.errors_key or not (task.failed_permanent + task.failed_transient):
                continue
            data = backend.objects.get_bytes(task.errors_key, sha256=task.errors_sha256)
            for line in data.splitlines():
                err: dict[str, Any] = json.loads(line)
                err["reason"] = (
                    "permanent error" if err["permanent"] else "transient error, not retried"
                )
                out.write((",\n" if count else "") + json.dumps(err, sort_keys=True))
                count += 1
        out.write(f'\n], "count": {count}}}\n')
    backend.objects.put_file(layout.failures(phase), path)
    return layout.failures(phase), count


def finalize(backend: Backend, job_id: str) -> FinalizeResult:
    job = get_job(backend, job_id)
    if job.status.terminal:
        return FinalizeResult(job.status, 0)
    phase = job.phase
    rec = reconcile(backend, job_id, phase)
    if rec.requeued:
        log.info(
            "reconciled %s: %d pending and %d expired tasks requeued",
            job_id,
            rec.pending,
            rec.expired,
        )
    counters = backend.state.counters(job_id)
    left = counters.get(task_counter(phase, "PENDING"), 0) + counters.get(
        task_counter(phase, "RUNNING"), 0
    )
    if left:
        return FinalizeResult(job.status, left)
    failed = counters.get(task_counter(phase, "FAILED"), 0)
    if failed:
        first = next(backend.state.iter_tasks(job_id, phase=phase, status=TaskStatus.FAILED))
        reason = f"{failed} task(s) could not run, e.g. {first.task_id}: {first.error}"
        backend.state.update_job(job_id, {"status": JobStatus.FAILED, "error": reason})
        append_history(backend, job_id, "failed", reason=reason)
        return FinalizeResult(JobStatus.FAILED, 0)
    definition = load_definition(backend, job_id)
    backend.state.update_job(job_id, {"status": JobStatus.AGGREGATING, "updated_at": time.time()})
    work = Path(tempfile.mkdtemp(prefix=f"slurmctl-finalize-{job_id}-"))
    try:
        failures_key, failures = write_failure_manifest(backend, job_id, phase, work)
        try:
            final = aggregate(backend, job_id, definition.output.fan_in)
        except IntegrityError as e:
            backend.state.update_job(job_id, {"status": JobStatus.FAILED, "error": str(e)})
            append_history(backend, job_id, "failed", reason=str(e))
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    layout = JobLayout(job_id)
    counters = backend.state.counters(job_id)
    items = {k.removeprefix("items."): v for k, v in counters.items() if k.startswith("items.")}
    manifest = {
        "job_id": job_id,
        "files": [
            {"path": final.url, "key": final.key, "rows": final.rows, "sha256": final.sha256}
        ],
        "rows": final.rows,
        "items": items,
        "inputs": final.inputs,
        "levels": final.levels,
        "failures": [{"key": failures_key, "items": failures}],
        "quarantine": layout.quarantine,
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    backend.objects.put_json(layout.final_manifest, manifest)
    backend.state.update_job(job_id, {"status": JobStatus.COMPLETED, "updated_at": time.time()})
    backend.queue.delete_queue(job_id)
    append_history(backend, job_id, "completed", rows=final.rows, output=final.url)
    return FinalizeResult(JobStatus.COMPLETED, 0)
