"""The retry planner: the failures of a finished phase become the next phase's batches.

Reads the committed tasks' item errors (each file verified against its committed sha256) and
splits them: transient failures with attempts left are cut into batches of the next phase
(`retry_1`, task group `retry_batch_1`, ...), started after an exponential backoff with jitter;
everything else is written to the phase's failure manifest with its reason. `slurmctl retry`
uses the same machinery on the failure manifests, for the error types an operator picks.
"""

from __future__ import annotations

import itertools
import json
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmctl import lifecycle
from slurmctl.backends import Backend, batches
from slurmctl.backends.batches import batch_where, read_batch
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.statestore import (
    ITEMS_FAILED_PERMANENT,
    ITEMS_FAILED_TRANSIENT,
    ITEMS_PENDING,
    TaskRecord,
    task_counter,
)
from slurmctl.config import JobDefinition
from slurmctl.errors import IntegrityError, JobStateError
from slurmctl.faults import kill_point
from slurmctl.finalize import failures
from slurmctl.finalize.failures import FailureWriter
from slurmctl.finalize.intermediates import refuse_if_removed
from slurmctl.ids import (
    batch_id,
    id_width,
    phase_name,
    phase_number,
    phase_prefix,
)
from slurmctl.layout import JobLayout
from slurmctl.states import TaskStatus
from slurmctl.worker.classify import PERMANENT

TASKS_PER_WRITE = 500


def backoff_s(definition: JobDefinition, number: int) -> float:
    """Exponential in the retry number, capped, with equal jitter (half fixed, half random)."""
    full = float(
        min(definition.retry.backoff_max_s, definition.retry.backoff_s * 2.0 ** (number - 1))
    )
    return full / 2 + random.uniform(0, full / 2)


@dataclass(frozen=True)
class RetryPlan:
    phase: str
    items: int
    permanent: int
    """How many of the items had a permanent failure (an operator's retry only)."""
    tasks: int
    begin_at: float


def batch_lines(data: bytes) -> list[bytes]:
    """A batch's (or an errors file's) lines, cut on \\n only: `splitlines()` would also cut
    on a raw CR, which JSON allows as whitespace, and shift every later item's index."""
    return data.removesuffix(b"\n").split(b"\n") if data else []


def task_errors(backend: Backend, task: TaskRecord) -> list[dict[str, Any]]:
    if not task.errors_key or not (task.failed_permanent + task.failed_transient):
        return []
    data = backend.objects.get_bytes(task.errors_key, sha256=task.errors_sha256)
    return [json.loads(line) for line in batch_lines(data) if line.strip()]


def _reason(entry: dict[str, Any], exhausted: bool) -> str:
    if entry["error_type"] in PERMANENT:
        return "permanent error"
    return "retries exhausted" if exhausted else "transient error, not retried"


def split_phase(
    backend: Backend,
    job_id: str,
    phase: str,
    retry_if: Callable[[dict[str, Any]], bool],
    work: Path,
    exhausted: bool,
) -> tuple[Path, Path, int, int, int]:
    """One pass over the phase's item errors: the retried ones (with their input lines) to a
    JSON-lines file, the rest to the failure manifest's records (a local JSON-lines file).
    Returns both paths, how many are retried, how many of those are permanent, and how many
    are listed in the manifest."""
    listed = FailureWriter(work / f"failures-{phase}.jsonl")
    retry_path = work / f"retry-from-{phase}.jsonl"
    retried = permanent = 0
    with open(retry_path, "wb") as retry_out:
        for task in backend.state.iter_tasks(job_id, phase=phase, status=TaskStatus.SUCCESS):
            chosen = []
            for entry in task_errors(backend, task):
                if retry_if(entry):
                    chosen.append(entry)
                else:
                    listed.add(entry, _reason(entry, exhausted))
            if chosen:
                batch = batch_lines(read_batch(backend.objects, task))
                for entry in chosen:
                    retry_out.write(batch[entry["index"]] + b"\n")
                    permanent += entry["error_type"] in PERMANENT
                retried += len(chosen)
    listed.close()
    return retry_path, listed.path, retried, permanent, listed.count


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for line in f:
            yield line.rstrip(b"\n")


def clear_unstarted(backend: Backend, job_id: str, phase: str) -> int:
    """Remove what a planner killed before its flip left under a phase that never started: its
    tasks, their batches (packs, or one object each before packing: both start with the phase's
    first batch id's prefix), its operator plan. The caller holds the job lease and has checked
    that the job is still in the phase before this one."""
    gone = backend.state.delete_tasks(job_id, phase)
    prefix = JobLayout(job_id).root + f"batches/{phase_prefix(phase)}batch-"
    for key in list(backend.objects.list(prefix)):  # a killed planning's, with tasks or not
        backend.objects.delete(key)
    backend.objects.delete(_plan_key(job_id, phase))
    return gone


def write_phase(
    backend: Backend,
    job_id: str,
    new_phase: str,
    source: Path,
    count: int,
    batch_size: int,
) -> int:
    """Cut the retried items into the new phase's batches and tasks.

    The batches are packed as submit packs them (backends/batches.py), under keys unique to
    this planning (`r1-batch-000000--r1-batch-000015.<token>.jsonl`), after whatever an earlier,
    killed planning left under the phase was removed: a second `retry` with other error types
    never reuses the first one's batches or tasks. A pack is stored before its tasks.
    """
    clear_unstarted(backend, job_id, new_phase)
    layout = JobLayout(job_id)
    token = secrets.token_hex(4)
    width = id_width(-(-count // batch_size))
    tasks: list[TaskRecord] = []
    n = 0
    for group in batches.packs(enumerate(_cut(_lines(source), batch_size))):
        bids = [batch_id(new_phase, index, width) for index, _ in group]
        data, regions = batches.pack(b for _, b in group)
        key = layout.batch_pack(bids[0], f"{bids[-1]}.{token}")
        backend.objects.put_bytes(key, data)
        tasks += batches.pack_tasks(job_id, new_phase, width, group, key, regions)
        n += len(group)
        if len(tasks) >= TASKS_PER_WRITE:
            backend.state.put_tasks(tasks)
            tasks.clear()
    if tasks:
        backend.state.put_tasks(tasks)
    return n


def _cut(lines: Iterator[bytes], batch_size: int) -> Iterator[bytes]:
    """The retried items' lines as stored batches of batch_size."""
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) == batch_size:
            yield batches.batch_bytes(batch)
            batch = []
    if batch:
        yield batches.batch_bytes(batch)


def start_phase(
    backend: Backend,
    job_id: str,
    definition: JobDefinition,
    from_phase: str,
    new_phase: str,
    items: int,
    permanent: int,
    tasks: int,
    *,
    backoff: bool = True,
) -> RetryPlan | None:
    """Flip the job to the new phase, moving the counters, once (conditional on the phase)."""
    number = phase_number(new_phase)
    begin_at = time.time() + (backoff_s(definition, number) if backoff else 0.0)
    backend.queue.create_queue(job_id)  # deleted when the job completed: an operator's retry
    moved = lifecycle.begin_retry_phase(
        backend,
        job_id,
        from_phase=from_phase,
        new_phase=new_phase,
        not_before=begin_at,
        counter_deltas={
            task_counter(new_phase, "PENDING"): tasks,
            ITEMS_FAILED_TRANSIENT: -(items - permanent),
            ITEMS_FAILED_PERMANENT: -permanent,
            ITEMS_PENDING: items,
        },
    )
    if not moved:
        return None
    ids = [t.task_id for t in backend.state.unfinished_tasks(job_id, new_phase)]
    delay = int(max(0.0, min(begin_at - time.time(), 900)))
    for start in range(0, len(ids), 1000):
        backend.queue.send(job_id, ids[start : start + 1000], delay_s=delay)
    return RetryPlan(new_phase, items, permanent, tasks, begin_at)


@dataclass(frozen=True)
class Selection:
    """What `slurmctl retry` would queue: items by error type, from the failure manifests."""

    by_type: dict[str, int]
    items: int
    tasks: int


def select_failures(
    backend: Backend, job_id: str, last_phase: str, types: set[str], batch_size: int
) -> Selection:
    by_type: dict[str, int] = {}
    for _, entry in failures.all_entries(backend, job_id, last_phase):
        if entry["error_type"] in types:
            by_type[entry["error_type"]] = by_type.get(entry["error_type"], 0) + 1
    items = sum(by_type.values())
    return Selection(by_type, items, -(-items // batch_size))


def _plan_key(job_id: str, phase: str) -> str:
    return JobLayout(job_id).root + f"retries/{phase}.json"


def operator_retry(
    backend: Backend,
    job_id: str,
    definition: JobDefinition,
    last_phase: str,
    types: set[str],
    work: Path,
) -> RetryPlan | None:
    """A new phase for the failures of the given types, permanent ones included.

    Which manifest entries move (those of these error types) is recorded
    (`retries/<phase>.json`) before the phase flips and applied to the manifests after it;
    finalize applies a recorded plan again if a crash came in between
    (`settle_operator_retry`), so no item is ever listed twice or lost. One pass over the
    manifests, one batch in memory at a time: entries of a task are consecutive in a manifest.
    """
    retry_path = work / "operator-retry.jsonl"
    moved: dict[str, int] = {}
    count = permanent = 0
    with open(retry_path, "wb") as out:
        for manifest in failures.manifests(backend, job_id, last_phase):
            chosen = (e for e in failures.entries(backend, manifest) if e["error_type"] in types)
            for tid, group in itertools.groupby(chosen, key=lambda e: str(e["task_id"])):
                lines = _task_batch(backend, job_id, tid)
                for entry in group:
                    out.write(lines[entry["index"]] + b"\n")
                    moved[manifest.phase] = moved.get(manifest.phase, 0) + 1
                    count += 1
                    permanent += entry["error_type"] in PERMANENT
    if count == 0:
        return None
    new_phase = phase_name(phase_number(last_phase) + 1)
    tasks = write_phase(backend, job_id, new_phase, retry_path, count, definition.batch_size)
    plan_doc = {"phase": new_phase, "types": sorted(types), "moved": moved}
    backend.objects.put_json(_plan_key(job_id, new_phase), plan_doc)
    kill_point("retry.after_tasks_written")
    plan = start_phase(
        backend, job_id, definition, last_phase, new_phase, count, permanent, tasks, backoff=False
    )
    if plan is None:
        return None
    kill_point("retry.after_phase_flip")
    settle_operator_retry(backend, job_id, new_phase)
    return plan


def _task_batch(backend: Backend, job_id: str, tid: str) -> list[bytes]:
    """The input lines of the task a failure manifest names, verified."""
    task = backend.state.get_task(job_id, tid)
    if task is None:
        raise IntegrityError(f"job {job_id}: its failure manifest names task {tid}, which is gone")
    try:
        return batch_lines(read_batch(backend.objects, task))
    except ObjectNotFound:
        refuse_if_removed(backend, job_id, "its failures cannot be retried")
        raise JobStateError(
            f"job {job_id}: task {tid}'s batch {batch_where(task)} is gone"
        ) from None


def _listed(gone: set[tuple[str, int]]) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (e["task_id"], e["index"]) in gone


def settle_operator_retry(backend: Backend, job_id: str, phase: str) -> bool:
    """Take the entries an operator's retry moved into `phase` out of the earlier failure
    manifests (idempotent: the entries of the plan's error types, all of which moved; a plan
    of an earlier version lists them by task and index), then drop the plan."""
    key = _plan_key(job_id, phase)
    try:
        plan: Any = backend.objects.get_json(key)
    except ObjectNotFound:
        return False
    if "types" in plan:
        types = set(plan["types"])
        for manifest in failures.manifests(backend, job_id, phase_name(phase_number(phase) - 1)):
            failures.remove(backend, manifest, lambda e: e["error_type"] in types)
    else:
        for from_phase, listed in plan["moved"].items():
            found = failures.read(backend, job_id, from_phase)
            if found is not None:
                failures.remove(backend, found, _listed({(t, i) for t, i in listed}))
    backend.objects.delete(key)
    return True
