"""The objects one attempt stores, and the task manifest after its commit.

An attempt's rows sit in its checkpoint until the task ends; then they become the attempt-unique
Parquet output and error records (the failure manifest's input), encoded under the job's output
schema, which this module widens with a compare-and-swap before the commit. Kept apart from the
attempt's control flow (task.py: lease, checkpoint, items, commit) because it is the one part
that knows the output's format; output.py below it turns rows into a table.

A committed task stores one object: its result (plus its item errors when it has any). The
state store's commit already records the result's key, sha256, rows and counts, so there is no
`.done` marker beside it; and the task manifest (for people and tools, read by nothing that
decides) is one JSON line in an object the worker writes every `MANIFEST_FLUSH_TASKS` tasks,
every `MANIFEST_FLUSH_S` seconds and when it leaves: one PUT per hundred tasks instead of two per
task (issue 16's cost). A worker SIGKILLed (or OOM-killed) loses the manifests it had not
written yet, never an item: the commits count, and the state store keeps each task's status,
attempts, worker, times and output. Before it runs a task taken over from another attempt (the
kind that kills workers), a worker writes what it has gathered.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from slurmctl import hooks
from slurmctl.backends import Backend
from slurmctl.backends.statestore import OUTPUT_SCHEMA_DOC, TaskCommit, TaskRecord
from slurmctl.errors import SlurmctlError
from slurmctl.layout import JobLayout
from slurmctl.output_schema import JobSchema, Pin, with_rules
from slurmctl.secrets import redact
from slurmctl.worker.checkpoint import Checkpoint, Row
from slurmctl.worker.classify import PERMANENT
from slurmctl.worker.context import Context
from slurmctl.worker.output import Encoded, encode, signature

log = logging.getLogger("slurmctl.worker")

ITEM_KEEP = 4096
"""Bytes of a permanently failed item kept in the failure manifest."""
SCHEMA_ROUNDS = 100
"""Attempts at recording a widened output schema while other workers widen it too."""
SLURM_VARS = frozenset(
    {"SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME"}
)
MANIFEST_FLUSH_TASKS = 100
"""Task manifests gathered into one object: at most this many per object."""
MANIFEST_FLUSH_S = float(os.environ.get("SLURMCTL_MANIFEST_FLUSH_S", "30"))
"""... and none waits longer than this after its commit before it is written (checked at the
next commit; the rest when the worker leaves)."""


@dataclass
class Outputs:
    """A worker's writer of its attempts' outputs (one per worker: it keeps the output schema
    as the worker last saw it)."""

    backend: Backend
    job_id: str
    worker_id: str
    ctx: Context
    id_field: str
    layout: JobLayout
    pins: dict[str, Pin]
    secrets: Sequence[str]
    in_flight: bool
    """Items finished out of order (worker/inflight.py): the output is sorted back."""
    _schema: JobSchema | None = field(default=None, init=False)
    """The job's output schema as this worker last saw it (it only ever widens)."""
    _manifests: list[bytes] = field(default_factory=list, init=False)
    """Task manifests not written yet (JSON lines)."""
    _first_at: float = field(default=0.0, init=False)
    _parts: int = field(default=0, init=False)
    _session: str = field(default_factory=lambda: secrets.token_hex(4), init=False)
    """In the manifests' keys: a worker id used again (a resumed local run) never overwrites."""

    def write(
        self,
        task: TaskRecord,
        token: str,
        ckpt: Checkpoint,
        lines: list[bytes],
    ) -> TaskCommit:
        """Store the attempt's output and error records (under attempt-unique keys); returns
        what its commit records (`end_time` is filled in by the caller)."""
        rows: list[dict[str, Any]] = []
        owners: list[int] = []
        errors: list[bytes] = []
        succeeded = permanent = transient = 0
        recorded = ckpt.rows()
        if self.in_flight:  # finished out of order: the output keeps the input's order
            recorded = iter(sorted(recorded, key=_index))
        for idx, item_id, ok, result, etype, message, sig in recorded:
            if ok:
                succeeded += 1
                if result:
                    rows.extend(result)
                    if len(result) == 1:
                        owners.append(idx)
                    else:
                        owners.extend([idx] * len(result))
                continue
            if etype in PERMANENT:
                permanent += 1
            else:
                transient += 1
            errors.append(self._error_record(task, idx, item_id, etype, message, sig, lines))
        encoded = self._encode(task, rows, owners)
        if encoded.failed:  # values that cannot be stored: those items fail, the rest commits
            ids = {idx: item_id for idx, item_id, *_ in ckpt.rows() if idx in encoded.failed}
            for idx, text in sorted(encoded.failed.items()):
                message = redact(text, self.secrets)  # the value may echo a secret
                sig = signature(message)
                errors.append(
                    self._error_record(task, idx, ids[idx], "schema", message, sig, lines)
                )
            succeeded -= len(encoded.failed)
            permanent += len(encoded.failed)
            log.warning(
                "%s: %d items failed as schema, e.g. %s",
                task.task_id,
                len(encoded.failed),
                redact(next(iter(encoded.failed.values())), self.secrets),
            )
        table = encoded.table
        # Encoded in memory (the table already is; its Parquet is smaller) and stored in one
        # put: no scratch file to create, rename and read back for its checksum.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        out = self.backend.objects.put_bytes(
            self.layout.result(task.task_id, token), sink.getvalue().to_pybytes()
        )
        err_key = err_sha = ""
        if errors:  # most tasks have none: no object for them
            err = self.backend.objects.put_bytes(
                self.layout.item_errors(task.task_id, token), b"".join(e + b"\n" for e in errors)
            )
            assert err is not None
            err_key, err_sha = err.key, err.sha256
        assert out is not None
        return TaskCommit(
            output_key=out.key,
            output_sha256=out.sha256,
            output_rows=table.num_rows,
            errors_key=err_key,
            errors_sha256=err_sha,
            succeeded=succeeded,
            failed_permanent=permanent,
            failed_transient=transient,
            end_time=0.0,
        )

    def _error_record(
        self,
        task: TaskRecord,
        idx: int,
        item_id: str,
        etype: str | None,
        message: str | None,
        sig: str | None,
        lines: list[bytes],
    ) -> bytes:
        permanent = etype in PERMANENT
        record = {
            "item_id": item_id,
            "index": idx,
            "task_id": task.task_id,
            "batch_id": task.batch_id,
            "phase": task.phase,
            "error_type": etype,
            "permanent": permanent,
            "message": message if message is None else redact(message, self.secrets),
            "signature": sig if sig is None else redact(sig, self.secrets),
            "attempt": task.attempts,
        }
        if permanent:  # a permanent failure is logged once, with its input item
            record["item"] = lines[idx][:ITEM_KEEP].decode("utf-8", "replace")
        return json.dumps(record, sort_keys=True).encode()

    def _encode(self, task: TaskRecord, rows: list[dict[str, Any]], owners: list[int]) -> Encoded:
        """The task's table under the job's output schema. A widened schema is recorded (a
        compare-and-swap on its version) before the commit, so every committed output fits the
        recorded schema; a worker that lost the race encodes again against the winner's."""
        schema = self._schema if self._schema is not None else self._load_schema()
        for _ in range(SCHEMA_ROUNDS):
            encoded = encode(rows, owners, schema, self.pins, self.id_field, task.task_id)
            if not rows or (not encoded.changed and schema.version):
                break
            if self.backend.state.put_versioned(
                self.job_id, OUTPUT_SCHEMA_DOC, encoded.schema.to_bytes(), schema.version
            ):
                encoded.schema.version = schema.version + 1
                break
            schema = self._load_schema()
        else:
            raise SlurmctlError(f"{task.task_id}: the output schema kept changing under it")
        self._schema = encoded.schema
        return encoded

    def _load_schema(self) -> JobSchema:
        doc = self.backend.state.get_versioned(self.job_id, OUTPUT_SCHEMA_DOC)
        recorded = JobSchema.from_bytes(doc.value, doc.version) if doc else JobSchema()
        return with_rules(recorded, self.pins, self.id_field)

    def after_commit(
        self,
        task: TaskRecord,
        token: str,
        commit: TaskCommit,
        t0: float,
        cpu0: float,
        calls: int,
        resumed: int,
    ) -> None:
        """The task manifest, for humans and tools (never read by the aggregator): gathered, and
        written with the others when due (`flush_manifests`)."""
        objects = self.backend.objects
        base = {
            "items": task.items,
            "items_processed": calls,
            "items_from_checkpoint": resumed,
            "handler_calls": calls,
            "succeeded": commit.succeeded,
            "failed_permanent": commit.failed_permanent,
            "failed_transient": commit.failed_transient,
            "rows": commit.output_rows,
            "wall_s": round(time.time() - t0, 3),
            "cpu_s": round(time.process_time() - cpu0, 3),
            "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "handler": self.ctx.metrics.take(),  # and reset, at once: items may be in flight
        }
        event = hooks.TaskCommitted(
            self.backend, self.job_id, self.worker_id, task, commit, self.ctx, base
        )
        hooks.registry.before_task_manifest(event)  # e.g. I/O, HTTP and failure figures
        metrics = event.metrics
        manifest = {
            "job_id": self.job_id,
            "task_id": task.task_id,
            "batch_id": task.batch_id,
            "role": task.role,
            "phase": task.phase,
            "group": task.group,
            "input_s3": _as_url(objects.url(task.batch_key)),
            "input_range": task.batch_range,
            "output_file": _as_url(objects.url(commit.output_key)),
            "errors_file": _as_url(objects.url(commit.errors_key)) if commit.errors_key else None,
            "output_sha256": commit.output_sha256,
            "status": "SUCCESS",
            "attempts": task.attempts,
            "lease_token": token,
            "worker_id": self.worker_id,
            "node": socket.gethostname(),
            "slurm": {k: v for k, v in os.environ.items() if k in SLURM_VARS},
            "start_time": _iso(task.start_time or t0),
            "end_time": _iso(commit.end_time),
            "metrics": metrics,
            "error": None,
        }
        if not self._manifests:
            self._first_at = time.monotonic()
        self._manifests.append(json.dumps(manifest, sort_keys=True).encode())
        hooks.registry.after_task_committed(event)  # e.g. the job's time series; the log
        self.flush_manifests()

    def flush_manifests(self, force: bool = False) -> None:
        """Write the gathered task manifests as one object when due (or `force`: the worker
        leaves). A failed write keeps them for the next try."""
        if not self._manifests:
            return
        due = (
            len(self._manifests) >= MANIFEST_FLUSH_TASKS
            or time.monotonic() - self._first_at >= MANIFEST_FLUSH_S
        )
        if not (force or due):
            return
        key = self.layout.task_manifests(self.worker_id, f"{self._session}-{self._parts:06d}")
        self.backend.objects.put_bytes(key, b"".join(m + b"\n" for m in self._manifests))
        self._parts += 1
        self._manifests = []


def read_task_manifests(backend: Backend, job_id: str) -> list[dict[str, Any]]:
    """Every task manifest written for the job: the gathered JSON lines, and the one object per
    task of jobs written before (`tasks/<task_id>.json`)."""
    objects = backend.objects
    found: list[dict[str, Any]] = []
    for key in objects.list(JobLayout(job_id).task_manifests_prefix):
        if key.endswith(".jsonl"):
            text = objects.get_bytes(key)
            found.extend(json.loads(line) for line in text.split(b"\n") if line.strip())
        elif key.endswith(".json"):
            doc: Any = objects.get_json(key)
            found.append(doc)
    return found


def _index(row: Row) -> int:
    return row[0]


def _as_url(location: str) -> str:
    return location if "://" in location else Path(location).as_uri()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
