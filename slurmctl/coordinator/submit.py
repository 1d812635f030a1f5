"""`slurmctl submit`: validate, cut batches, write the job's state, queue its tasks.

Idempotent: the batches, and the packs they are stored in (up to 16 to an object,
backends/batches.py), are a pure function of the input, stored put-if-absent, each pack before
its tasks, and tasks are inserted only when missing, so a submit that died half way carries on
when run again. A refused submission removes everything it wrote (docs/architecture.md,
invariant 7).

Streaming: the tasks are stored, counted and queued chunk by chunk in input order (`TaskWriter`),
and the caller is told as soon as the first ones are durable (`on_durable`), so the workers start
while the rest of the input is still being cut; the "submit done" marker (`submitted`) is set
last, and nothing finishes the phase before it (docs/architecture.md, "Streaming submit").

The input is a local file or, with the AWS backend, an S3 object read as a stream. On AWS the
packs are uploaded by a small thread pool (a bounded window of packs in flight, task records
kept in input order) and the task records and queue messages by another; the embedded backend
writes them one after another, as fast as before.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmctl.backends import Backend, batches
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.statestore import (
    ITEMS_QUARANTINED,
    Bucket,
    JobRecord,
    TaskRecord,
)
from slurmctl.config import JobDefinition
from slurmctl.coordinator import fingerprint, inputs
from slurmctl.coordinator.scan import InputScanner, InputSource, ScanStats
from slurmctl.coordinator.writer import PHASE, TaskWriter
from slurmctl.errors import InputError, JobStateError, UserError
from slurmctl.faults import kill_point
from slurmctl.ids import batch_id, id_width
from slurmctl.jobs import SubmitHeartbeat, append_history, store_definition, stored_definition
from slurmctl.layout import JobLayout
from slurmctl.states import JobStatus
from slurmctl.worker.handler import load_handler

TASKS_PER_WRITE = 500
"""Task records per chunk stored, counted and queued together (the first chunks are smaller)."""
WRITER_THREADS = 8
"""Chunks of task records stored and queued at once on AWS."""
UPLOAD_THREADS = 16
"""Packs of batches uploaded at once on AWS (the S3 client keeps 32 connections)."""
UPLOAD_WINDOW = 2 * UPLOAD_THREADS
UPLOAD_WINDOW_BYTES = 64 << 20
"""At most this many packs, and about this many bytes, cut but not yet uploaded."""
ITEM_BYTES_GUESS = 32
"""Bytes the scan parses per item, assumed for the job's expected tasks, which the job record is
created with before the scan has read a line (streaming submit): small on purpose, as too many
task keys cost a few reads where too few make a hot key (DynamoDB's K: docs/aws.md)."""


def expected_tasks(input_bytes: int, batch_size: int) -> int:
    """The tasks a job of this input size is expected to have, at most (ITEM_BYTES_GUESS)."""
    return max(1, -(-input_bytes // (ITEM_BYTES_GUESS * max(batch_size, 1))))


def _scan_size(source: InputSource) -> int:
    """The bytes the scan parses, as the scan estimates them (a compressed or Parquet file
    counts 8 times its size: inputs.Input.scan_size), else the input's size."""
    of = getattr(source, "scan_size", source.size)
    found: int = of()
    return found


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
            f"{path}: no valid item in {stats.lines} {stats.unit}s ({top}); see the id_field "
            f"{definition.id_field!r} and the input format ({stats.shape})"
        )
    share = stats.quarantined / stats.lines
    if share > definition.max_quarantine_share:
        top = ", ".join(f"{n} {k}" for k, n in sorted(stats.reasons.items()))
        raise InputError(
            f"{path}: {stats.quarantined} bad {stats.unit}s of {stats.lines} ({share:.1%}, "
            f"{top}) exceed max_quarantine_share {definition.max_quarantine_share:g}; fix the "
            "input or raise it"
        )


def open_input(definition: JobDefinition, backend: Backend | None = None) -> InputSource:
    """The definition's input (coordinator/inputs.py): local files or s3:// objects."""
    return inputs.open_input(definition, backend)


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
    source = open_input(definition)
    with tempfile.TemporaryDirectory(prefix="slurmctl-plan-") as tmp:
        scanner = InputScanner(source, definition.id_field, Path(tmp), None, progress)
        for _ in scanner.items():
            pass
    stats = scanner.stats
    _check(definition, stats, source.name)
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
    on_durable: Callable[[str], None] | None = None,
    on_refused: Callable[[], None] | None = None,
) -> Submitted:
    """job_id: the id of a job whose submission is carried on (resume), else the definition's.

    on_durable(job_id): called once, in this thread, as soon as the first tasks are durable
    (stored, counted and queued) while the rest are still being cut: the caller starts the
    workers then (streaming submit). The phase cannot end before the "submit done" marker
    (`submitted`), which is set last. on_refused(): called before a submission refused after
    on_durable (too many bad lines, a changed input) is discarded: stop what on_durable
    started."""
    job_id = job_id or definition.effective_job_id()
    load_handler(definition.handler, definition.config_dir)
    source = open_input(definition, backend)
    size = source.size()  # an unreadable input is refused before anything is written
    if input_size is not None:
        input_size(size)
    existing = check_existing(backend, definition, job_id, source, size)
    if existing is not None and existing.submitted:
        return Submitted(job_id, False, existing.status)
    created = existing is None
    fp = None if created else fingerprint.load(backend, job_id)
    fresh = fp is None  # the first submit (or one killed before it recorded the input)
    if fp is None:
        width = id_width(max(1, size // max(definition.batch_size, 1)))
        fp = fingerprint.InputFingerprint(
            definition.resolved_input(), size, fingerprint.stamp(source), width
        )
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
            ),
            expected_tasks=expected_tasks(_scan_size(source), definition.batch_size),
        )
    if fresh:
        fingerprint.store(backend, job_id, fp)  # before any batch: a resume keeps its width
    started: list[bool] = []

    def durable() -> None:
        started.append(True)
        if on_durable is not None:
            on_durable(job_id)

    try:
        with SubmitHeartbeat(backend, job_id):
            _write(backend, definition, job_id, source, fp, progress, durable)
    except UserError:
        if started and on_refused is not None:
            on_refused()
        if created:
            discard(backend, job_id)
        raise
    return Submitted(job_id, created, JobStatus.PENDING)


def check_existing(
    backend: Backend,
    definition: JobDefinition,
    job_id: str,
    source: InputSource | None = None,
    size: int | None = None,
) -> JobRecord | None:
    """The job already under this id, if any, after checking it was submitted with this very
    definition and input (ResubmissionRefused, exit 2, names what differs)."""
    existing = backend.state.get_job(job_id)
    if existing is None:
        return None
    stored = stored_definition(backend, job_id)
    if stored is not None:
        fingerprint.check_definition(job_id, stored, definition)
    fp = fingerprint.load(backend, job_id)
    if fp is not None:
        source = source or open_input(definition, backend)
        size = source.size() if size is None else size
        fingerprint.check_input(job_id, fp, definition.resolved_input(), source, size)
    return existing


def discard(backend: Backend, job_id: str) -> None:
    """Remove every trace of a job (a refused submission leaves no job behind)."""
    layout = JobLayout(job_id)
    try:
        for key in list(backend.objects.list(layout.root)):
            backend.objects.delete(key)
    except UserError:
        pass  # the bucket is unreachable or missing: nothing was written there
    backend.queue.delete_queue(job_id)
    backend.state.delete_job(job_id)


def _write(
    backend: Backend,
    definition: JobDefinition,
    job_id: str,
    source: InputSource,
    fp: fingerprint.InputFingerprint,
    progress: Callable[[int], None] | None,
    on_durable: Callable[[], None],
) -> None:
    layout = JobLayout(job_id)
    hashing = fingerprint.HashingSource(source)
    store_definition(backend, job_id, definition)
    backend.queue.create_queue(job_id)
    for name, limit in _buckets(definition).items():  # before any worker can run
        backend.state.put_bucket(Bucket(job_id, name, limit[0], limit[1]))
    if backend.objects.head(layout.manifest) is None:
        backend.objects.put_json(layout.manifest, _manifest(definition, job_id, None, None))
    work = Path(tempfile.mkdtemp(prefix=f"slurmctl-submit-{job_id}-"))
    try:
        qpath = work / "quarantine.jsonl"
        with open(qpath, "wb") as qfile:
            scanner = InputScanner(hashing, definition.id_field, work, qfile, progress)
            # Ids are sized at the first submit, on the bytes (a first pass would cost a read).
            count = _write_batches(backend, definition, job_id, scanner, fp.width, on_durable)
        stats = scanner.stats
        _check(definition, stats, source.name)
        backend.objects.put_file(layout.quarantine, qpath)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fp.sha256, fp.lines, fp.batches = hashing.digest.hexdigest(), stats.lines, count
    fingerprint.store(backend, job_id, fp)
    # the Slurm executor may have recorded its arrays in the manifest meanwhile: keep them
    manifest = _read_manifest(backend, layout.manifest) or _manifest(
        definition, job_id, stats, count
    )
    counts = _manifest(definition, job_id, stats, count)
    manifest.update(
        {k: counts[k] for k in ("task_count", "item_count", "input_lines", "quarantined")}
    )
    backend.objects.put_json(layout.manifest, manifest)
    kill_point("submit.before_done")
    done = backend.state.update_job(
        job_id,
        {"submitted": True, "updated_at": time.time()},  # the "submit done" marker
        expect={"submitted": False, "task_count": count},
        counter_deltas={ITEMS_QUARANTINED: stats.quarantined},
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


def _read_manifest(backend: Backend, key: str) -> dict[str, Any]:
    try:
        doc = backend.objects.get_json(key)
    except ObjectNotFound:
        return {}
    return dict(doc) if isinstance(doc, dict) else {}


def _write_batches(
    backend: Backend,
    definition: JobDefinition,
    job_id: str,
    scanner: InputScanner,
    width: int,
    on_durable: Callable[[], None],
) -> int:
    layout = JobLayout(job_id)

    def put(group: list[tuple[int, bytes]]) -> list[TaskRecord]:
        bids = [batch_id(PHASE, index, width) for index, _ in group]
        data, regions = batches.pack(b for _, b in group)
        key = layout.batch_pack(bids[0], bids[-1])
        info = backend.objects.put_bytes(key, data, if_absent=True)
        if info is None:  # written by an earlier run: it must be the very same pack
            head = backend.objects.head(key)
            if head is None or head.sha256 != hashlib.sha256(data).hexdigest():
                which = bids[0] if len(bids) == 1 else f"{bids[0]} to {bids[-1]}"
                raise InputError(
                    f"{scanner.name}: the input changed since job {job_id} was first submitted "
                    f"({which} differs); give the new input a new job_id"
                )
        return batches.pack_tasks(job_id, PHASE, width, group, key, regions)

    cut = (
        (index, batches.batch_bytes(lines))
        for index, lines in enumerate(_batches(scanner.items(), definition.batch_size))
    )
    threads = 1 if backend.kind == "local" else UPLOAD_THREADS
    writer = TaskWriter(backend, job_id, 1 if backend.kind == "local" else WRITER_THREADS)
    tasks: list[TaskRecord] = []
    count = 0
    flush_at = 1  # the first task alone, so the workers start at once; then doubling
    try:
        for records in _in_order(put, batches.packs(cut), threads):
            for record in records:
                tasks.append(record)
                count += 1
                kill_point("submit.after_batch")
                if len(tasks) >= flush_at:
                    writer.add(tasks)
                    tasks = []
                    flush_at = min(flush_at * 2, TASKS_PER_WRITE)
                    if writer.started(on_durable):
                        kill_point("submit.streaming")
        writer.add(tasks)
        writer.close()
    finally:
        writer.abandon()
    writer.started(on_durable)
    return count


def _in_order(
    put: Callable[[list[tuple[int, bytes]]], list[TaskRecord]],
    groups: Iterable[list[tuple[int, bytes]]],
    threads: int,
) -> Iterator[list[TaskRecord]]:
    """put(pack) for every pack of batches, results in input order; with threads > 1, uploads
    run in a pool, at most UPLOAD_WINDOW packs (and ~UPLOAD_WINDOW_BYTES) cut and not yet done."""
    if threads <= 1:
        for group in groups:
            yield put(group)
        return
    window: deque[tuple[Future[list[TaskRecord]], int]] = deque()
    in_flight = 0
    with ThreadPoolExecutor(threads, thread_name_prefix="slurmctl-upload") as pool:
        try:
            for group in groups:
                size = sum(len(data) for _, data in group)
                window.append((pool.submit(put, group), size))
                in_flight += size
                while window and (len(window) >= UPLOAD_WINDOW or in_flight > UPLOAD_WINDOW_BYTES):
                    done, size = window.popleft()
                    in_flight -= size
                    yield done.result()
            while window:
                yield window.popleft()[0].result()
        finally:
            for pending, _ in window:  # an error or an abandoned submit: start nothing more
                pending.cancel()


def _buckets(definition: JobDefinition) -> dict[str, tuple[float, int]]:
    out = {name: (r.tokens_per_sec, r.burst) for name, r in definition.rate_limits.items()}
    if definition.rate_limit is not None:
        out["default"] = (definition.rate_limit.tokens_per_sec, definition.rate_limit.burst)
    return out


def _manifest(
    definition: JobDefinition, job_id: str, stats: ScanStats | None, count: int | None
) -> dict[str, Any]:
    """The job manifest; while submit still cuts batches (stats None), without the counts."""
    return {
        "job_id": job_id,
        "job_type": definition.job_type,
        "handler": definition.handler,
        "git_commit": _git_commit(definition.config_dir),
        "config_file": str(definition.config_path),
        "input_file": definition.resolved_input(),
        "batch_size": definition.batch_size,
        "task_count": count,
        "item_count": stats.items if stats else None,
        "input_lines": stats.lines if stats else None,
        "quarantined": stats.quarantined if stats else None,
        "workers": definition.workers,
        "executor": definition.executor,
        "backend": definition.backend,
        "slurm_array_id": None,
        "slurm_job_ids": [],
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "phases": [PHASE],
        "status": str(JobStatus.PENDING),
    }
