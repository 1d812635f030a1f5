"""Structured worker logs: JSON lines in scratch, shipped to the object store.

Each worker writes `<scratch>/job_<job_id>/logs/<worker_id>.jsonl`, one JSON object a line:
`ts`, `level`, `logger`, `event`, `job_id`, `worker_id`, `task_id`, `batch_id`, `phase` (and
`exc` for a traceback). Every text goes through `secrets.redact` with the job's secret values
(docs/architecture.md invariant 8). The file is shipped to `jobs/<job_id>/logs/<worker_id>.jsonl`
with a task's output when `SHIP_INTERVAL_S` has passed since the last shipment, and when the
worker exits; past `PART_BYTES` the file is shipped once more as a numbered part and started
afresh, so a shipment never uploads more than a part.

`WorkerLogObserver` plugs this into the worker through the hooks (`slurmctl.hooks`): installed
at the worker's start, shipped after each task's commit, closed when the worker leaves.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.errors import SlurmctlError
from slurmctl.hooks import Hooks, TaskCommitted, WorkerInfo
from slurmctl.layout import JobLayout
from slurmctl.scratch import ScratchRefused, open_private, private_dirs
from slurmctl.secrets import redact

SHIP_INTERVAL_S = float(os.environ.get("SLURMCTL_LOG_SHIP_S", "30"))
PART_BYTES = 8 << 20
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TASK_RE = re.compile(r"^(?:r(\d+)-)?task-(\d+)$")


def phase_and_batch(task_id: str | None) -> tuple[str | None, str | None]:
    """`r2-task-000007` -> ("retry_2", "r2-batch-000007")."""
    m = _TASK_RE.match(task_id or "")
    if not m:
        return None, None
    retry = m.group(1)
    phase = f"retry_{retry}" if retry else "initial"
    return phase, (f"r{retry}-" if retry else "") + f"batch-{m.group(2)}"


class RedactFilter(logging.Filter):
    """Replaces secret values in a record's message (installed on every handler)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = redact(record.getMessage(), self.secrets)
            record.msg, record.args = message, None
            if record.exc_info:
                text = redact(logging.Formatter().formatException(record.exc_info), self.secrets)
                record.exc_info, record.exc_text = None, text
        return True


def _open_log(path: Path, mode: int) -> TextIO:
    """The worker log, 0600 and never through a symlink (one planted in its place could copy a
    file of the user into the shipped log object)."""
    try:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | mode)
    except OSError as e:
        raise ScratchRefused(f"worker log {path}: {e.strerror}: refusing it") from None
    return os.fdopen(fd, "a", encoding="utf-8")


def _read_log(path: Path) -> bytes:
    with os.fdopen(open_private(path, os.O_RDONLY), "rb") as f:
        return f.read()


class JsonLinesHandler(logging.Handler):
    def __init__(
        self, path: Path, job_id: str, worker_id: str, secrets: Sequence[str], ctx: Any = None
    ) -> None:
        super().__init__()
        self.path = path
        self.job_id = job_id
        self.worker_id = worker_id
        self.secrets = list(secrets)
        self.ctx = ctx
        """The handler context: its `task_id` names the task being (or last) run."""
        self.stream = _open_log(path, os.O_APPEND)
        self.size = os.fstat(self.stream.fileno()).st_size

    def line(self, record: logging.LogRecord) -> str:
        task_id = getattr(record, "task_id", None) or getattr(self.ctx, "task_id", None)
        phase, batch_id = phase_and_batch(task_id)
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": redact(record.getMessage(), self.secrets),
            "job_id": self.job_id,
            "worker_id": self.worker_id,
            "task_id": task_id,
            "batch_id": batch_id,
            "phase": phase,
        }
        exc = record.exc_text
        if record.exc_info and not exc:
            exc = logging.Formatter().formatException(record.exc_info)
        if exc:
            entry["exc"] = redact(exc, self.secrets)
        return json.dumps(entry, ensure_ascii=False) + "\n"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.line(record)
            self.stream.write(text)
            self.stream.flush()
            self.size += len(text.encode())
        except Exception:  # noqa: BLE001 - logging must never fail the worker
            self.handleError(record)

    def reopen(self) -> None:
        self.stream.close()
        self.stream = _open_log(self.path, os.O_TRUNC)
        self.size = 0

    def close(self) -> None:
        self.acquire()
        try:
            if not self.stream.closed:
                self.stream.close()
        finally:
            self.release()
        super().close()


class WorkerLog:
    """The worker's JSON-lines log: installed at start, shipped now and then and at exit."""

    def __init__(
        self,
        backend: Backend,
        job_id: str,
        worker_id: str,
        scratch_root: Path,
        secrets: Sequence[str],
        ctx: Any = None,
    ) -> None:
        self.backend = backend
        self.job_id = job_id
        self.worker_id = worker_id
        self.key = JobLayout(job_id).logs(worker_id)
        self.path = (
            private_dirs(scratch_root, f"job_{job_id}", "logs") / f"{_safe(worker_id)}.jsonl"
        )
        self.secrets = list(secrets)
        self.part = self._next_part()
        self._continue_shipped()
        self.handler = JsonLinesHandler(self.path, job_id, worker_id, secrets, ctx)
        self.redactor = RedactFilter(secrets)
        self.last_ship = time.monotonic()
        self._ship_lock = threading.Lock()

    def part_key(self, part: int) -> str:
        return self.key.removesuffix(".jsonl") + f".part{part:04d}.jsonl"

    def _next_part(self) -> int:
        """Parts already shipped by an earlier run under this worker id (usually none)."""
        part = 0
        while self.backend.objects.head(self.part_key(part + 1)) is not None:
            part += 1
        return part

    def _continue_shipped(self) -> None:
        """A worker id used again (a resumed local run): carry on the shipped log, not over it."""
        if self.path.exists():
            return
        try:
            data = self.backend.objects.get_bytes(self.key)
        except (ObjectNotFound, SlurmctlError):
            return
        with _open_log(self.path, os.O_TRUNC) as f:
            f.buffer.write(data)

    def install(self, logger: logging.Logger | None = None) -> WorkerLog:
        root = logger or logging.getLogger()
        for h in root.handlers:  # the text log on stderr gets the same redaction
            h.addFilter(self.redactor)
        root.addHandler(self.handler)
        return self

    def ship(self, force: bool = False) -> None:
        """Upload the log if SHIP_INTERVAL_S passed (or force); never raises."""
        if not force and time.monotonic() - self.last_ship < SHIP_INTERVAL_S:
            return
        with self._ship_lock:
            self.last_ship = time.monotonic()
            h = self.handler
            h.acquire()
            try:
                if h.stream.closed:
                    return
                h.stream.flush()
                data = _read_log(self.path)
                rotate = h.size >= PART_BYTES
                if rotate:
                    h.reopen()
            finally:
                h.release()
            try:
                if rotate:
                    self.part += 1
                    self.backend.objects.put_bytes(self.part_key(self.part), data)
                    data = b""
                self.backend.objects.put_bytes(self.key, data)
            except Exception as e:  # noqa: BLE001 - a failed shipment is retried at the next
                logging.getLogger("slurmctl.observe").warning("log not shipped: %s", e)

    def close(self) -> None:
        self.ship(force=True)
        root = logging.getLogger()
        root.removeHandler(self.handler)
        for h in root.handlers:
            h.removeFilter(self.redactor)
        self.handler.close()


def install_worker_log(
    backend: Backend,
    job_id: str,
    worker_id: str,
    scratch_root: Path,
    secrets: Sequence[str],
    ctx: Any = None,
) -> WorkerLog:
    """At the worker's start: the JSON log, and redaction on every handler."""
    worker_log = WorkerLog(backend, job_id, worker_id, scratch_root, secrets, ctx).install()
    logging.getLogger("slurmctl.worker").info(
        "worker %s started on %s (pid %d)", worker_id, socket.gethostname(), os.getpid()
    )
    return worker_log


class WorkerLogObserver(Hooks):
    """The worker's JSON log through the hooks: one per worker, shipped as tasks commit."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, str], WorkerLog] = {}

    def after_worker_start(self, worker: WorkerInfo) -> None:
        self.logs[(worker.job_id, worker.worker_id)] = install_worker_log(
            worker.backend,
            worker.job_id,
            worker.worker_id,
            worker.scratch_root,
            worker.secrets,
            worker.ctx,
        )

    def after_task_committed(self, task: TaskCommitted) -> None:
        worker_log = self.logs.get((task.job_id, task.worker_id))
        if worker_log is not None:
            worker_log.ship()  # when SHIP_INTERVAL_S has passed since the last shipment

    def before_worker_stop(self, worker: WorkerInfo) -> None:
        worker_log = self.logs.pop((worker.job_id, worker.worker_id), None)
        if worker_log is not None:
            worker_log.close()  # the last shipment


def _safe(worker_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]", "_", worker_id)


def level_number(level: str) -> int:
    return LEVELS.index(level.upper()) if level.upper() in LEVELS else 0


def _lines(
    backend: Backend, key: str, task_id: str | None, floor: int, worker_id: str | None
) -> Iterator[dict[str, Any]]:
    try:
        data = backend.objects.get_bytes(key)
    except ObjectNotFound:
        return
    for raw in data.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if task_id is not None and task_id not in (entry.get("task_id"), entry.get("batch_id")):
            continue
        if worker_id is not None and entry.get("worker_id") != worker_id:
            continue
        if level_number(str(entry.get("level", "INFO"))) >= floor:
            yield entry


def read_logs(
    backend: Backend,
    job_id: str,
    task_id: str | None = None,
    level: str = "DEBUG",
    worker_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The shipped lines of every worker of the job, merged in time order, filtered.

    Each worker's log is in time order already: a merge that parses lines as it goes (the
    shipped bytes of each worker are read once).
    """
    floor = level_number(level)
    prefix = JobLayout(job_id).root + "logs/"
    keys = [k for k in backend.objects.list(prefix) if k.endswith(".jsonl")]
    streams = [_lines(backend, k, task_id, floor, worker_id) for k in keys]
    yield from heapq.merge(*streams, key=lambda e: str(e.get("ts", "")))
