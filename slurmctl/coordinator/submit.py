"""`slurmctl submit`: validate, cut batches, write the job's state, queue its tasks.

Idempotent: the batches are a pure function of the input, stored put-if-absent, and tasks are
inserted only when missing, so a submit that died half way carries on when run again. A refused
submission removes everything it wrote (DESIGN.md invariant 7).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmctl.backends import Backend
from slurmctl.backends.statestore import (
    ITEMS_PENDING,
    ITEMS_QUARANTINED,
    ITEMS_TOTAL,
    Bucket,
    JobRecord,
    TaskRecord,
    task_counter,
)
from slurmctl.config import JobDefinition
from slurmctl.coordinator.scan import InputScanner, ScanStats
from slurmctl.errors import InputError, JobStateError, UserError
from slurmctl.ids import batch_id, group_for_phase, id_width, task_id
from slurmctl.jobs import append_history, store_definition
from slurmctl.layout import JobLayout
from slurmctl.states import JobStatus
from slurmctl.worker.handler import load_handler

TASKS_PER_WRITE = 500
PHASE = "initial"


@dataclass
class Plan:
    job_id: str
    lines: int
    items: int
    quarantined: int
    reasons: dict[str, int]
    batches: int
    workers: int
    rate: float | None

    @property
    def shortest_s(self) -> float | None:
        """At one request per item, the rate limit alone takes this long."""
        return self.items / self.rate if self.rate else None


def _check(definition: JobDefinition, stats: ScanStats, path: str) -> None:
    if stats.items == 0:
        if stats.lines == 0:
            raise InputError(f"{path}: no valid item: the input is empty")
        top = ", ".join(f"{n} {k}" for k, n in sorted(stats.reasons.items()))
        raise InputError(
            f"{path}: no valid item in {stats.lines} lines ({top}); see the id_field "
            f"{definition.id_field!r} and the input format (one JSON object per line)"
        )
    share = stats.quarantined / stats.lines
    if share > definition.max_quarantine_share:
        top = ", ".join(f"{n} {k}" for k, n in sorted(stats.reasons.items()))
        raise InputError(
            f"{path}: {stats.quarantined} bad lines of {stats.lines} ({share:.1%}, {top}) exceed "
            f"max_quarantine_share {definition.max_quarantine_share:g}; fix the input or raise it"
        )


def _local_input(definition: JobDefinition) -> Path:
    ref = definition.resolved_input()
    if ref.startswith("s3://"):
        raise UserError(f"{definition.config_path}: input: s3:// inputs need backend: aws")
    return Path(ref)


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def plan(definition: JobDefinition, progress: Callable[[int], None] | None = None) -> Plan:
    """`--dry-run`: every check a submit makes, nothing written."""
    load_handler(definition.handler, definition.config_dir)
    path = _local_input(definition)
    with tempfile.TemporaryDirectory(prefix="slurmctl-plan-") as tmp:
        scanner = InputScanner(path, definition.id_field, Path(tmp), None, progress)
        for _ in scanner.items():
            pass
    stats = scanner.stats
    _check(definition, stats, str(path))
    return Plan(
        job_id=definition.effective_job_id(),
        lines=stats.lines,
        items=stats.items,
        quarantined=stats.quarantined,
        reasons=stats.reasons,
        batches=-(-stats.items // definition.batch_size),
        workers=definition.workers,
        rate=definition.rate_limit.tokens_per_sec if definition.rate_limit else None,
    )


def _batches(lines: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class Submitted:
    job_id: str
    created: bool
    """False when the job existed: submit carried on (or found it finished)."""
    status: JobStatus


def submit(
    backend: Backend,
    definition: JobDefinition,
    *,
    progress: Callable[[int], None] | None = None,
    input_size: Callable[[int], None] | None = None,
    job_id: str | None = None,
) -> Submitted:
    """job_id: the id of a job whose submission is carried on (resume), else the definition's."""
    job_id = job_id or definition.effective_job_id()
    load_handler(definition.handler, definition.config_dir)
    path = _local_input(definition)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read input: {e.strerror}") from None
    if input_size is not None:
        input_size(size)
    existing = backend.state.get_job(job_id)
    if existing is not None and existing.submitted:
        return Submitted(job_id, False, existing.status)
    created = existing is None
    if created:
        now = time.time()
        backend.state.create_job(
            JobRecord(
                job_id=job_id,
                status=JobStatus.PENDING,
                created_at=now,
                updated_at=now,
                workers=definition.workers,
                executor=definition.executor,
                backend=definition.backend,
            )
        )
    try:
        _write(backend, definition, job_id, path, progress)
    except UserError:
        if created:
            discard(backend, job_id)
        raise
    return Submitted(job_id, created, JobStatus.PENDING)


def discard(backend: Backend, job_id: str) -> None:
    """Remove every trace of a job (a refused submission leaves no job behind)."""
    layout = JobLayout(job_id)
    for key in list(backend.objects.list(layout.root)):
        backend.objects.delete(key)
    backend.queue.delete_queue(job_id)
    backend.state.delete_job(job_id)


def _write(
    backend: Backend,
    definition: JobDefinition,
    job_id: str,
    path: Path,
    progress: Callable[[int], None] | None,
) -> None:
    layout = JobLayout(job_id)
    store_definition(backend, job_id, definition)
    backend.queue.create_queue(job_id)
    work = Path(tempfile.mkdtemp(prefix=f"slurmctl-submit-{job_id}-"))
    try:
        qpath = work / "quarantine.jsonl"
        with open(qpath, "wb") as qfile:
            scanner = InputScanner(path, definition.id_field, work, qfile, progress)
            # Ids are sized for the job: a first pass would cost a read, so size on the bytes.
            count = _write_batches(backend, definition, job_id, scanner)
        stats = scanner.stats
        _check(definition, stats, str(path))
        backend.objects.put_file(layout.quarantine, qpath)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, limit in _buckets(definition).items():
        backend.state.put_bucket(Bucket(job_id, name, limit[0], limit[1]))
    manifest = _manifest(definition, job_id, stats, count)
    backend.objects.put_json(layout.manifest, manifest)
    done = backend.state.update_job(
        job_id,
        {
            "submitted": True,
            "task_count": count,
            "item_count": stats.items,
            "updated_at": time.time(),
        },
        expect={"submitted": False},
        counter_deltas={
            task_counter(PHASE, "PENDING"): count,
            ITEMS_TOTAL: stats.items,
            ITEMS_PENDING: stats.items,
            ITEMS_QUARANTINED: stats.quarantined,
        },
    )
    if not done:
        raise JobStateError(f"job {job_id}: another submit finished it first")
    append_history(
        backend,
        job_id,
        "submit",
        config_file=str(definition.config_path),
        items=stats.items,
        tasks=count,
        quarantined=stats.quarantined,
    )


def _write_batches(
    backend: Backend, definition: JobDefinition, job_id: str, scanner: InputScanner
) -> int:
    layout = JobLayout(job_id)
    width = id_width(max(1, scanner.path.stat().st_size // max(definition.batch_size, 1)))
    tasks: list[TaskRecord] = []
    index = -1
    for index, lines in enumerate(_batches(scanner.items(), definition.batch_size)):
        bid, tid = batch_id(PHASE, index, width), task_id(PHASE, index, width)
        data = b"\n".join(lines) + b"\n"
        key = layout.batch(bid)
        info = backend.objects.put_bytes(key, data, if_absent=True)
        sha = info.sha256 if info else hashlib.sha256(data).hexdigest()
        if info is None:  # written by an earlier run: it must be the very same batch
            head = backend.objects.head(key)
            if head is None or head.sha256 != sha:
                raise InputError(
                    f"{scanner.path}: the input changed since job {job_id} was first submitted "
                    f"({bid} differs); give the new input a new job_id"
                )
        tasks.append(
            TaskRecord(
                job_id=job_id,
                task_id=tid,
                batch_id=bid,
                phase=PHASE,
                group=group_for_phase(PHASE),
                items=len(lines),
                batch_key=key,
                batch_sha256=sha,
            )
        )
        if len(tasks) >= TASKS_PER_WRITE:
            _flush(backend, job_id, tasks)
            tasks = []
    _flush(backend, job_id, tasks)
    return index + 1


def _flush(backend: Backend, job_id: str, tasks: list[TaskRecord]) -> None:
    if tasks:
        backend.state.put_tasks(tasks)
        backend.queue.send(job_id, [t.task_id for t in tasks])


def _buckets(definition: JobDefinition) -> dict[str, tuple[float, int]]:
    out = {name: (r.tokens_per_sec, r.burst) for name, r in definition.rate_limits.items()}
    if definition.rate_limit is not None:
        out["default"] = (definition.rate_limit.tokens_per_sec, definition.rate_limit.burst)
    return out


def _manifest(
    definition: JobDefinition, job_id: str, stats: ScanStats, count: int
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "job_type": definition.job_type,
        "handler": definition.handler,
        "git_commit": _git_commit(definition.config_dir),
        "config_file": str(definition.config_path),
        "input_file": definition.resolved_input(),
        "batch_size": definition.batch_size,
        "task_count": count,
        "item_count": stats.items,
        "input_lines": stats.lines,
        "quarantined": stats.quarantined,
        "workers": definition.workers,
        "executor": definition.executor,
        "backend": definition.backend,
        "slurm_array_id": None,
        "slurm_job_ids": [],
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "phases": [PHASE],
        "status": str(JobStatus.PENDING),
    }
