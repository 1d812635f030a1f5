"""The finalize step: reconcile; if the phase is done, write its failure manifest and aggregate.

Run by the local executor when its workers exit, by Slurm after the array
(`--dependency=afterany`), and by `resume`. Idempotent: a finished job is left as it is.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmctl import hooks, lifecycle
from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.reconcile import reconcile
from slurmctl.backends.statestore import (
    ITEMS_FAILED_PERMANENT,
    ITEMS_FAILED_TRANSIENT,
    ITEMS_TOTAL,
    task_counter,
)
from slurmctl.config import JobDefinition
from slurmctl.errors import IntegrityError, SlurmctlError
from slurmctl.faults import kill_point
from slurmctl.finalize import failures, retry
from slurmctl.finalize.aggregate import OutputConflict, aggregate
from slurmctl.finalize.dataset import PartitionError
from slurmctl.finalize.intermediates import remove_intermediates
from slurmctl.finalize.rerun import missing_results
from slurmctl.finalize.retry import RetryPlan
from slurmctl.ids import phase_name, phase_number
from slurmctl.jobs import append_history, get_job, load_definition
from slurmctl.layout import JobLayout
from slurmctl.states import JobStatus, TaskStatus

log = logging.getLogger("slurmctl.finalize")


@dataclass(frozen=True)
class FinalizeResult:
    status: JobStatus
    work_left: int
    """Tasks of the current phase still PENDING or RUNNING: workers are needed."""
    begin_at: float = 0.0
    """When a retry phase's workers may start (its backoff)."""
    submitting: bool = False
    """Submit has not written its last task yet (no "submit done" marker): the phase cannot
    end, whatever the counters say."""


def finalize(backend: Backend, job_id: str, *, notify: bool = True) -> FinalizeResult:
    """notify=False: the caller runs the `after_finalize` hooks once it has acted on the result
    (the Slurm executor: alerts would otherwise see its not-yet-queued workers as missing)."""
    try:
        return _finalize(backend, job_id)
    finally:
        if notify:
            hooks.registry.after_finalize(backend, job_id)  # e.g. alerts, once per episode


def _finalize(backend: Backend, job_id: str) -> FinalizeResult:
    job = get_job(backend, job_id)
    if job.status.terminal:
        return FinalizeResult(job.status, 0)
    phase = job.phase
    if phase != "initial":  # an operator's retry killed between its flip and its manifests
        retry.settle_operator_retry(backend, job_id, phase)
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
    if not job.submitted:  # streaming submit: more tasks may come; never finished early
        return FinalizeResult(job.status, left, job.not_before, submitting=True)
    if left:
        return FinalizeResult(job.status, left, job.not_before)
    failed = counters.get(task_counter(phase, "FAILED"), 0)
    if failed:
        first = next(backend.state.iter_tasks(job_id, phase=phase, status=TaskStatus.FAILED))
        return _fail(
            backend, job_id, f"{failed} task(s) could not run, e.g. {first.task_id}: {first.error}"
        )
    definition = load_definition(backend, job_id)
    work = Path(tempfile.mkdtemp(prefix=f"slurmctl-finalize-{job_id}-"))
    try:
        plan = _plan_retry(backend, job_id, definition, phase, work)
        if plan is not None:
            return FinalizeResult(JobStatus.RETRYING, plan.tasks, plan.begin_at)
        too_many = _failure_share_exceeded(definition, counters)
        if too_many:
            return _fail(backend, job_id, too_many)
        if not lifecycle.begin_aggregation(backend, job_id):  # cancelled meanwhile
            return FinalizeResult(get_job(backend, job_id).status, 0)
        kill_point("finalize.before_aggregate")
        scratch = Path(definition.scratch) if definition.scratch else None
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
        final = aggregate(backend, job_id, definition.output.fan_in, scratch, definition.output)
    except (ObjectNotFound, IntegrityError) as e:  # a committed object lost or damaged since
        return _fail(backend, job_id, unusable_result(backend, job_id, e))
    except PartitionError as e:  # the user's partition_by does not fit the output
        return _fail(backend, job_id, str(e))
    except OutputConflict as e:
        _fail(backend, job_id, str(e))
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    layout = JobLayout(job_id)
    counters = backend.state.counters(job_id)
    items = {k.removeprefix("items."): v for k, v in counters.items() if k.startswith("items.")}
    manifest = {
        "job_id": job_id,
        "files": [f.entry() for f in final.files],
        "output": final.url,
        "rows": final.rows,
        "items": items,
        "inputs": final.inputs,
        "levels": final.levels,
        "failures": _failure_files(backend, job_id, phase),
        "quarantine": layout.quarantine,
        **({"partitioning": final.partitioning} if final.partitioning else {}),
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    backend.objects.put_json(layout.final_manifest, manifest)
    if not lifecycle.complete(backend, job_id, rows=final.rows, output=final.url):
        return FinalizeResult(get_job(backend, job_id).status, 0)  # cancelled during the merge
    backend.queue.delete_queue(job_id)
    if not definition.output.keep_intermediates:
        _remove_intermediates(backend, job_id)
    return FinalizeResult(JobStatus.COMPLETED, 0)


def _remove_intermediates(backend: Backend, job_id: str) -> None:
    """output.keep_intermediates: false. The job is COMPLETED whatever happens here: a removal
    that fails is logged with its traceback and left to `slurmctl clean --intermediates`."""
    try:
        removed = remove_intermediates(backend, job_id, by="output.keep_intermediates")
    except (SlurmctlError, OSError):
        log.exception(
            "%s: removing its intermediates failed; `slurmctl clean %s --intermediates` "
            "finishes it",
            job_id,
            job_id,
        )
        return
    log.info("%s: %d intermediate objects removed", job_id, removed.objects)


def _fail(backend: Backend, job_id: str, reason: str) -> FinalizeResult:
    lifecycle.fail(backend, job_id, reason)
    return FinalizeResult(get_job(backend, job_id).status, 0)


def unusable_result(backend: Backend, job_id: str, e: ObjectNotFound | IntegrityError) -> str:
    """One line for a committed object that aggregation could not use: the task, the key, and
    the command that runs the task again from its batch (intact: it is verified then)."""
    missing = isinstance(e, ObjectNotFound)
    key = str(e.args[0]) if missing and e.args else None
    gone = missing_results(backend, job_id) if missing else []
    if len(gone) > 1:
        return (
            f"{len(gone)} committed results are missing, e.g. task {gone[0]}'s; `slurmctl retry "
            f"--job-id {job_id} --rerun-missing` runs them again from their batches"
        )
    for task in backend.state.iter_tasks(job_id, status=TaskStatus.SUCCESS):
        for what, k in (("result", task.output_key), ("item errors", task.errors_key)):
            if k and (k == key or (not missing and backend.objects.url(k) in str(e))):
                state = "is missing" if missing else "is damaged (sha256 mismatch)"
                return (
                    f"task {task.task_id}: its committed {what} {k} {state}; `slurmctl retry "
                    f"--job-id {job_id} --tasks {task.task_id}` runs it again from its batch"
                )
    return f"an object aggregation needs is {'missing' if missing else 'damaged'}: " + (
        key or str(e)
    )


def _plan_retry(
    backend: Backend, job_id: str, definition: JobDefinition, phase: str, work: Path
) -> RetryPlan | None:
    """Write the phase's failure manifest, then start the next phase if transient failures
    remain and have attempts left (retry.max_attempts counts every phase an item ran in)."""
    number = phase_number(phase)
    can_retry = number + 1 < definition.retry.max_attempts
    retry_path, failures_path, count, _, listed = retry.split_phase(
        backend,
        job_id,
        phase,
        lambda e: can_retry and not e["permanent"],
        work,
        exhausted=not can_retry,
    )
    # Before the flip: the manifest is a pure function of the finished phase, so writing it
    # again after a crash gives the same records, and a crash after the flip loses nothing.
    written = failures.read(backend, job_id, phase)
    if written is None or get_job(backend, job_id).phase == phase:
        failures.store(backend, job_id, phase, failures_path, listed, count)
    if count == 0:
        return None
    new_phase = phase_name(number + 1)
    if get_job(backend, job_id).phase != phase:  # another finalize started it: leave its tasks
        return _started_elsewhere(backend, job_id, count)
    tasks = retry.write_phase(backend, job_id, new_phase, retry_path, count, definition.batch_size)
    plan = retry.start_phase(backend, job_id, definition, phase, new_phase, count, 0, tasks)
    kill_point("finalize.after_phase_flip")
    if plan is not None:
        append_history(
            backend,
            job_id,
            "retry_phase",
            phase=new_phase,
            items=count,
            tasks=tasks,
            begin_in_s=round(plan.begin_at - time.time(), 1),
        )
        log.info("%s: %d transient failures retried in %s", job_id, count, new_phase)
        return plan
    return _started_elsewhere(backend, job_id, count)


def _started_elsewhere(backend: Backend, job_id: str, count: int) -> RetryPlan:
    """Another finalize flipped the phase first: report the phase it started."""
    job = get_job(backend, job_id)
    counters = backend.state.counters(job_id)
    left = sum(counters.get(task_counter(job.phase, s), 0) for s in ("PENDING", "RUNNING"))
    return retry.RetryPlan(job.phase, count, 0, left, job.not_before)


def _failure_share_exceeded(definition: JobDefinition, counters: dict[str, int]) -> str | None:
    """A job whose every item failed is FAILED whatever max_failure_share says (null included);
    otherwise it is FAILED when the failed share is over max_failure_share."""
    share = definition.max_failure_share
    total = counters.get(ITEMS_TOTAL, 0)
    failed = counters.get(ITEMS_FAILED_PERMANENT, 0) + counters.get(ITEMS_FAILED_TRANSIENT, 0)
    if total > 0 and failed >= total:
        return f"all {failed} items failed"
    if share is None or not total or failed / total <= share:
        return None
    return (
        f"{failed} of {total} items failed ({failed / total:.1%}), over max_failure_share {share:g}"
    )


def _failure_files(backend: Backend, job_id: str, last_phase: str) -> list[dict[str, Any]]:
    return [
        {
            "phase": m.phase,
            "key": m.key,
            "summary": JobLayout(job_id).failures_summary(m.phase),
            "sha256": m.sha256,
            "items": m.count,
            "retried": m.retried,
        }
        for m in failures.manifests(backend, job_id, last_phase)
    ]
