"""One attempt at one task: read the batch, run the handler per item with a scratch checkpoint,
write the attempt-unique output, and make it count with the fenced commit.

This module is the attempt's control flow (lease, checkpoint, resume, items, stop, commit, a
framework error); the parts it drives live beside it: the lease heartbeat (heartbeat.py), items
in flight (inflight.py), the objects the attempt stores and its task manifest (outputs.py)."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from slurmctl import faults, lifecycle
from slurmctl.backends import Backend
from slurmctl.backends.batches import read_batch
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.statestore import TaskCommit, TaskRecord
from slurmctl.errors import FRAMEWORK_ERROR, BackendUnavailable, IntegrityError
from slurmctl.fastjson import loads_for
from slurmctl.jobs import oom_killed
from slurmctl.layout import JobLayout
from slurmctl.output_schema import Pin
from slurmctl.scratch import private_dirs
from slurmctl.secrets import redact
from slurmctl.worker.breaker import Breaker
from slurmctl.worker.checkpoint import Checkpoint, CheckpointRefused, Row, Stamp
from slurmctl.worker.classify import Rule, classify
from slurmctl.worker.context import Context
from slurmctl.worker.handler import Handler
from slurmctl.worker.heartbeat import Heartbeat
from slurmctl.worker.inflight import EventLoop, Window, run_in_flight
from slurmctl.worker.limiter import WorkerStopping
from slurmctl.worker.output import rows_of
from slurmctl.worker.outputs import Outputs

log = logging.getLogger("slurmctl.worker")

CHECKPOINT_MIN_INTERVAL_S = 0.05
"""A checkpoint commit costs a fraction of a millisecond: with a fast handler, wait for this much
work before the next one. A killed worker redoes at most `checkpoint_every` items or this long
of work, whichever is more."""


class Outcome(Enum):
    COMMITTED = "committed"
    STOPPED = "stopped"
    """The worker was asked to stop: checkpoint uploaded, lease released."""
    LEASE_LOST = "lease_lost"
    FAILED = "failed"


@dataclass
class TaskRunner:
    backend: Backend
    job_id: str
    worker_id: str
    handler: Handler
    ctx: Context
    id_field: str
    lease_s: float
    heartbeat_s: float
    checkpoint_every: int
    scratch_root: Path
    max_task_failures: int = 3
    rules: Sequence[Rule] = ()
    secrets: Sequence[str] = ()
    should_stop: Callable[[], bool] = lambda: False
    job_stamp: str = ""
    """The job's identity beyond its id (its creation time), recorded in every checkpoint."""
    pins: dict[str, Pin] = field(default_factory=dict)
    """`output.schema`: the pinned column types."""
    breaker: Breaker | None = None
    concurrency: int = 1
    """Items in flight (worker/inflight.py); 1 with a sync `process`: the per-item loop here."""
    loop: EventLoop | None = None
    """The worker's event loop, for an `async def` handler."""
    on_drain: Callable[[], None] = lambda: None
    """Called from a task's thread once every item of the task has started (items in flight):
    the worker claims its next task meanwhile (worker/prefetch.py)."""
    layout: JobLayout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = JobLayout(self.job_id)
        self._heartbeat = Heartbeat(self.backend, self.job_id, self.lease_s, self.heartbeat_s)
        self.in_flight = self.concurrency > 1 or self.handler.is_async
        """Items run by worker/inflight.py, finishing out of order."""
        self._outputs = Outputs(
            self.backend,
            self.job_id,
            self.worker_id,
            self.ctx,
            self.id_field,
            self.layout,
            self.pins,
            self.secrets,
            self.in_flight,
        )
        self._pool: cf.ThreadPoolExecutor | None = None
        self.window = Window(self.concurrency)
        """The worker's item slots, shared by its tasks in hand."""
        self._record_lock = threading.Lock()
        """The breaker and the limiter's reports, fed by the threads of the tasks in hand."""
        self._commit_lock = threading.Lock()
        """A worker's tasks in hand write their outputs and commit one at a time: the output
        schema it keeps, the task manifest and its observers see one task at once, as before."""
        if self.in_flight:  # items on threads or the loop; the manifest is read on the task's
            self.ctx.metrics.make_threadsafe()

    def close(self) -> None:
        """The worker leaves: the task manifests not written yet are, and the item threads end
        (they are idle between tasks)."""
        try:
            self._outputs.flush_manifests(force=True)
        except Exception:
            log.exception("worker %s: task manifests not written", self.worker_id)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def task_dir(self, task_id: str) -> Path:
        return self.scratch_root / f"job_{self.job_id}" / f"task_{task_id}"

    def scratch_dir(self, task_id: str, token: str) -> Path:
        """One folder per attempt: two attempts of a task never share a file."""
        return self.task_dir(task_id) / token

    def _make_scratch(self, task_id: str, token: str) -> Path:
        return private_dirs(self.scratch_root, f"job_{self.job_id}", f"task_{task_id}", token)

    # --- the attempt --------------------------------------------------------------------------
    def run(self, task: TaskRecord) -> Outcome:
        token = task.lease_token or ""
        lost = self._heartbeat.begin(task.task_id, token)
        try:
            return self._attempt(task, token, lost)
        except (WorkerStopping, TimeoutError, ConnectionError, BackendUnavailable):
            raise  # a stop, or the store unreachable: the worker's loop waits for it
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, the task's reason
            return self._framework_error(task, token, exc)
        finally:
            self._heartbeat.end(token)

    def _framework_error(self, task: TaskRecord, token: str, exc: Exception) -> Outcome:
        """An exception in slurmctl's own code (encoding the output, a checkpoint, ...), not the
        handler's: logged at ERROR with its traceback, never a silent worker death taken for a
        lost worker. The task is tried again from scratch (a scratch folder removed under the
        worker, a full disk) up to `retry.max_task_failures` times; then the task and the job
        FAIL with the exception as their reason (a bug meets every task the same way)."""
        c = classify(exc, ())
        reason = redact(f"{task.task_id}: {FRAMEWORK_ERROR}: {c.message}", self.secrets)
        seen = self._framework_errors(task.task_id, reason)
        if seen < self.max_task_failures:
            log.error(
                "%s (classified %s; %d of %d: trying the task again)",
                reason,
                c.type,
                seen,
                self.max_task_failures,
                exc_info=exc,
            )
            shutil.rmtree(self.scratch_dir(task.task_id, token), ignore_errors=True)
            if self.backend.state.release_task(self.job_id, task.task_id, token):
                self.backend.queue.send(self.job_id, [task.task_id])
            return Outcome.FAILED
        log.error(
            "%s (classified %s; %d times: failing the job)", reason, c.type, seen, exc_info=exc
        )
        self.backend.state.fail_task(self.job_id, task.task_id, token, reason, time.time())
        lifecycle.fail(self.backend, self.job_id, reason)  # a first task's reason stands
        return Outcome.FAILED

    def _framework_errors(self, task_id: str, reason: str) -> int:
        """Record one more framework error of the task (an object per task: a rare event);
        returns how many it has had."""
        key = self.layout.root + f"framework-errors/{task_id}.json"
        try:
            seen: Any = self.backend.objects.get_json(key)
        except ObjectNotFound:
            seen = []
        seen = [*seen, {"at": time.time(), "worker_id": self.worker_id, "reason": reason}]
        self.backend.objects.put_json(key, seen)
        return len(seen)

    def _attempt(self, task: TaskRecord, token: str, lost: threading.Event) -> Outcome:
        if task.attempts > 1:  # taken over: it may be what killed its last worker, and this one
            with self._commit_lock:  # another task in hand may be writing its manifest
                self._outputs.flush_manifests(force=True)
        t0, cpu0 = time.time(), time.process_time()
        try:
            batch = read_batch(self.backend.objects, task)
        except (ObjectNotFound, IntegrityError) as e:
            self.backend.state.fail_task(self.job_id, task.task_id, token, str(e), time.time())
            log.error("%s: batch unusable: %s", task.task_id, e)
            return Outcome.FAILED
        # split on newlines only: a CR is JSON whitespace, it may sit inside a valid line
        lines = batch.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        scratch = self.scratch_dir(task.task_id, token)
        stamp = Stamp(self.job_stamp, task.batch_sha256, token)
        ckpt = self._checkpoint(scratch / "checkpoint.sqlite", stamp, task.task_id, token)
        try:
            self._resume(task, ckpt, scratch)
            done = ckpt.done()
            calls, stopped = self._items(task, lines, done, ckpt, lost)
            if lost.is_set():
                ckpt.close()
                shutil.rmtree(scratch, ignore_errors=True)  # this attempt writes nothing more
                return Outcome.LEASE_LOST
            if stopped:
                self._leave(task, token, ckpt, lost)
                return Outcome.STOPPED
            faults.inject_error("output")
            with self._commit_lock:
                commit = self._outputs.write(task, token, ckpt, lines)
        finally:
            ckpt.close()
        commit = TaskCommit(**{**commit.__dict__, "end_time": time.time()})
        with self._commit_lock:
            if not self.backend.state.commit_task(self.job_id, task.task_id, token, commit):
                log.warning(
                    "%s: commit refused: the lease moved on; output discarded", task.task_id
                )
                shutil.rmtree(scratch, ignore_errors=True)
                return Outcome.LEASE_LOST
            self._after_commit(task, token, commit, t0, cpu0, calls, len(done))
        shutil.rmtree(self.task_dir(task.task_id), ignore_errors=True)  # and dead attempts' files
        return Outcome.COMMITTED

    def _after_commit(
        self,
        task: TaskRecord,
        token: str,
        commit: TaskCommit,
        t0: float,
        cpu0: float,
        calls: int,
        resumed: int,
    ) -> None:
        try:
            self._outputs.after_commit(task, token, commit, t0, cpu0, calls, resumed)
        except (TimeoutError, ConnectionError, BackendUnavailable):
            raise
        except Exception:  # the output counts already: a missing manifest must not fail the job
            log.exception("%s: committed, but its task manifest was not written", task.task_id)

    def _checkpoint(self, path: Path, stamp: Stamp, task_id: str, token: str) -> Checkpoint:
        """This attempt's checkpoint (new: the folder is named by the attempt's token); a file
        found there that is not stamped for this attempt is refused and replaced."""
        make_parent = functools.partial(self._make_scratch, task_id, token)
        try:
            return Checkpoint(path, stamp, make_parent=make_parent)
        except CheckpointRefused as e:
            log.warning("%s: %s; starting a new one", task_id, e)
            path.unlink(missing_ok=True)
            return Checkpoint(path, stamp, make_parent=make_parent)

    def _resume(self, task: TaskRecord, ckpt: Checkpoint, scratch: Path) -> None:
        """Take over the rows of an earlier attempt of this task: one that died on this node
        (its folder is still here), else the one uploaded by a worker that left on a signal.
        Either must be this job's checkpoint of this very batch (`Checkpoint.adopt`)."""
        mine = scratch.name
        task_dir = self.task_dir(task.task_id)
        for path in _earlier_checkpoints(task_dir, mine):
            if ckpt.adopt(path):
                log.info(
                    "%s: resuming from attempt %s's checkpoint", task.task_id, path.parent.name
                )
                return
            log.warning(
                "%s: checkpoint %s is not this job's of this batch: ignored", task.task_id, path
            )
        if not task.checkpoint_key:
            return
        incoming = self._make_scratch(task.task_id, mine) / "checkpoint.incoming.sqlite"
        try:
            self.backend.objects.get_file(
                task.checkpoint_key, incoming, sha256=task.checkpoint_sha256
            )
        except (ObjectNotFound, IntegrityError) as e:
            log.warning("%s: uploaded checkpoint unusable (%s): starting over", task.task_id, e)
            return
        try:
            if ckpt.adopt(incoming):
                log.info("%s: resuming from the uploaded checkpoint", task.task_id)
            else:
                log.warning(
                    "%s: uploaded checkpoint is not this job's of this batch: starting over",
                    task.task_id,
                )
        finally:
            incoming.unlink(missing_ok=True)

    def _items(
        self,
        task: TaskRecord,
        lines: list[bytes],
        done: set[int],
        ckpt: Checkpoint,
        lost: threading.Event,
    ) -> tuple[int, bool]:
        """Run the handler on every item not in the checkpoint; returns (calls, stopped)."""
        process, ctx, id_field = self.handler.process, self.ctx, self.id_field
        loads = loads_for(b"\n".join(lines))  # one check for long integers, not one per item
        on_ok, on_failed = (
            (self.breaker.ok, self.breaker.failed) if self.breaker else (_no_ok, _no_failed)
        )
        if self.in_flight and self.window.busy():
            ctx.name_task(task.task_id)  # the previous task's tail in flight: accounting goes on
        else:
            ctx.task_id = task.task_id
        pending: list[Row] = []
        calls = 0
        stopped = False
        isolate = task.worker_losses >= self.max_task_failures
        last_write = time.monotonic()
        if isolate:
            self._isolate(task, lines, done, ckpt)
        if self.in_flight and (self.handler.is_async or not isolate):
            return run_in_flight(
                lines,
                done,
                ckpt,
                lost,
                isolate=isolate,
                handler=self.handler,
                ctx=ctx,
                id_field=id_field,
                window=self.window,
                checkpoint_every=self.checkpoint_every,
                should_stop=self.should_stop,
                on_ok=on_ok,
                on_failed=on_failed,
                on_drain=self.on_drain,
                rules=self.rules,
                secrets=self.secrets,
                lock=self._record_lock,
                loop=self.loop,
                pool=self._item_pool,
            )
        should_stop, is_lost, every = self.should_stop, lost.is_set, self.checkpoint_every
        append = pending.append  # the loop runs once per item: names bound once
        for idx, line in enumerate(lines):
            if idx in done:
                continue
            if should_stop() or is_lost():
                stopped = True
                break
            item = loads(line)
            item_id = str(item[id_field])
            calls += 1
            if isolate:
                ckpt.begin_item(idx)
            try:
                result = process(item, ctx)
                out = [result] if type(result) is dict and id_field in result else None
                if out is None:
                    out = rows_of(result, id_field, item_id)
            except WorkerStopping:
                stopped = True
                break
            except Exception as exc:  # noqa: BLE001 - every handler failure is classified and kept
                c = classify(exc, self.rules)
                ctx.note_error(c.type, exc)  # a `throttled` one slows the job's rate limiter
                on_failed(c.type, exc)  # the circuit breaker's window
                message = redact(c.message, self.secrets)
                append(
                    (idx, item_id, False, None, c.type, message, redact(c.signature, self.secrets))
                )
            else:
                append((idx, item_id, True, out, None, None, None))
                on_ok()
            if (
                isolate
                or (
                    len(pending) >= every
                    and time.monotonic() - last_write >= CHECKPOINT_MIN_INTERVAL_S
                )
            ) and not is_lost():
                ckpt.write(pending)
                pending = []
                append = pending.append
                last_write = time.monotonic()
        # the tail goes to disk only if the task stops now; a lost lease writes nothing more
        if not lost.is_set():
            ckpt.write(pending, durable=stopped)
        return calls, stopped

    def _item_pool(self) -> cf.ThreadPoolExecutor:
        """The worker's item threads for a sync `process` in flight: made at the first task
        (under the lock: the tasks in hand start items from their own threads)."""
        with self._record_lock:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="slurmctl-item"
                )
            return self._pool

    def _isolate(
        self, task: TaskRecord, lines: list[bytes], done: set[int], ckpt: Checkpoint
    ) -> None:
        """The task's workers died `max_task_failures` times: run its items one by one, and fail
        as poison the item that was in flight when the last worker died (as `oom`, transient,
        when Slurm killed the worker for its memory: the retry phase may get more)."""
        log.warning(
            "%s: lost its worker %d times: isolating items one by one",
            task.task_id,
            task.worker_losses,
        )
        idx = ckpt.inflight()
        if idx is None or idx in done:
            return
        item_id = str(json.loads(lines[idx])[self.id_field])
        if oom_killed(self.backend, self.job_id, task.task_id):  # Slurm killed it for memory
            kind, what, how = "oom", "killed for its memory", "transient: retried"
        else:
            kind, what, how = "poison", "died", "failed permanently"
        message = (
            f"{kind}: the worker {what} while this item was in flight ({task.worker_losses} deaths)"
        )
        ckpt.write(
            [(idx, item_id, False, None, kind, message, f"{kind}: worker {what} on this item")]
        )
        done.add(idx)
        log.error("%s: item %s is %s: %s", task.task_id, item_id, kind, how)

    def _leave(self, task: TaskRecord, token: str, ckpt: Checkpoint, lost: threading.Event) -> None:
        """Stopping on a signal: upload the checkpoint so any node can resume, release the lease."""
        if lost.is_set():
            return  # another attempt holds the task: nothing of this one is uploaded
        scratch = self._make_scratch(task.task_id, token)
        snap = ckpt.snapshot(scratch / "checkpoint.upload.sqlite")
        key = self.layout.checkpoint(task.task_id)
        info = self.backend.objects.put_file(key, snap)
        snap.unlink(missing_ok=True)
        sha = info.sha256 if info else None
        if self.backend.state.release_task(
            self.job_id, task.task_id, token, checkpoint_key=key, checkpoint_sha256=sha
        ):
            self.backend.queue.send(self.job_id, [task.task_id])
            log.info("%s: checkpoint uploaded, lease released", task.task_id)


def _no_ok() -> None:
    pass


def _no_failed(error_type: str, exc: BaseException) -> None:
    pass


def _earlier_checkpoints(task_dir: Path, mine: str) -> list[Path]:
    """Checkpoints of the task's other attempts on this node, newest first (a folder removed
    meanwhile, by an attempt that ended, is skipped)."""
    found: list[tuple[float, Path]] = []
    if task_dir.is_dir():
        for path in task_dir.glob("*/checkpoint.sqlite"):
            if path.parent.name == mine:
                continue
            try:
                found.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
    return [p for _, p in sorted(found, reverse=True)]
