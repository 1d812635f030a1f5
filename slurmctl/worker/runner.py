"""The pilot loop: claim tasks until the counters say the phase has none left to run.

A worker exits by the counters (no task of its phase PENDING or RUNNING), never because a receive
came back empty: in-flight and delayed messages make empty receives normal. While other workers
hold live leases it waits, so it can take over a task whose lease expires.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from slurmctl import hooks, lifecycle
from slurmctl import secrets as secret_refs
from slurmctl.backends import Backend
from slurmctl.backends.reconcile import Turn, reconcile_turn, release_dead_holders
from slurmctl.backends.statestore import JobRecord, TaskRecord, task_counter
from slurmctl.config import JobDefinition
from slurmctl.errors import FRAMEWORK_ERROR, BackendUnavailable, HandlerImportError, UserError
from slurmctl.holders import Holder
from slurmctl.jobs import SUPERVISOR_ENV, get_job, load_definition, submit_running
from slurmctl.ratelimit.allocation import LEAVE_MARGIN_S, AllocationClock
from slurmctl.scratch import ScratchRefused, ensure_private_dir, scratch_root
from slurmctl.secrets import redact, redact_uncaught
from slurmctl.worker.breaker import Breaker
from slurmctl.worker.classify import classify
from slurmctl.worker.context import Context
from slurmctl.worker.gather import Gatherer
from slurmctl.worker.handler import Handler, load_handler
from slurmctl.worker.inflight import EventLoop, call_hook
from slurmctl.worker.limiter import DistributedRateLimiter, WorkerStopping
from slurmctl.worker.prefetch import Lanes
from slurmctl.worker.task import Outcome, TaskRunner
from slurmctl.worker.walltime import WalltimeRule

log = logging.getLogger("slurmctl.worker")

EXIT_OK = 0
EXIT_STOPPED = 143
EXIT_JOB_FAILED = 3
EXIT_UNREACHABLE = 75  # EX_TEMPFAIL: try again later
EXIT_SETUP_FAILED = 1
SETUP_TRANSIENT = frozenset({"network", "timeout", "throttled", "server"})
"""A `setup()` failing like this ends the worker only; any other failure fails the job."""
OUTAGE_LIMIT_S = 600.0
POLL_S = 1.0
SUPERVISOR_CHECK_S = 0.25
"""A local worker looks this often whether the `submit` that started it is still alive."""
LOCAL_POLL_S = 0.1
JOB_CACHE_S = 1.0
"""The job record is read at most this often by the loop, not once per task: a pause, a cancel
or a new phase is seen within it, and no item of the store takes a read per task."""
DELETES_PER_REQUEST = 10
"""SQS's most per DeleteMessageBatch."""
DELETE_EVERY_S = 5.0
"""A used-up hint's receipt waits at most this long (a quarter of the lease if shorter) to be
deleted with others, well inside its visibility timeout (the lease)."""
DEAD_EVERY_S = 1.0
"""An idle worker on the embedded backend looks for leases of dead processes this often (a
local read): a sibling killed on the same host holds up nobody for a lease TTL."""


class Worker:
    def __init__(
        self,
        backend: Backend,
        job_id: str,
        worker_id: str | None = None,
        scratch: Path | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.backend = backend
        self.job_id = job_id
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.holder = Holder.here().encode()
        """Recorded with each claim: the executor that sees this process die frees its lease."""
        self.scratch = scratch
        self.poll_s = poll_s
        self.stop_signal: int | None = None
        self.stop_reason: str | None = None
        self.limiters: dict[str, DistributedRateLimiter] = {}
        self.allocation = AllocationClock()
        self.walltime: WalltimeRule | None = None
        """Slurm workers only: no claim of a task that cannot finish before USR1."""
        self._writes: dict[str, int] = {}
        self._job_cache: tuple[float, JobRecord] | None = None
        self.breaker: Breaker | None = None
        supervisor = os.environ.get(SUPERVISOR_ENV, "")
        self._supervisor = int(supervisor) if supervisor.isdigit() else 0
        self._next_check = 0.0
        self._limiter_lock = threading.Lock()
        self.loop: EventLoop | None = None
        """The worker's one event loop, for a handler with `async def` functions."""
        self._usage_lock = threading.Lock()
        self._lanes: Lanes | None = None
        """The tasks in hand, each on a thread, with items in flight (worker/prefetch.py)."""
        self._lease_s = 0.0
        self._receipts: Gatherer[str] | None = None
        """Receipts of the hints used up (claimed or stale), deleted up to 10 a request."""

    # --- signals ----------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            log.info(
                "worker %s: %s received, stopping at a checkpoint",
                self.worker_id,
                signal.Signals(signum).name,
            )
        self.stop_signal = signum

    def should_stop(self) -> bool:
        if self._supervisor and time.monotonic() >= self._next_check:  # once per item: cheap
            self._next_check = time.monotonic() + SUPERVISOR_CHECK_S
            self.check_supervisor()
        return self.stop_signal is not None

    def check_supervisor(self) -> None:
        """A local worker whose `submit` died (killed) stops at a checkpoint: nobody would
        finalize what it does, and `status` says the job is stopped."""
        if self._supervisor and self.stop_signal is None and os.getppid() != self._supervisor:
            log.warning(
                "worker %s: the slurmctl process that started it (%d) is gone: stopping at a "
                "checkpoint",
                self.worker_id,
                self._supervisor,
            )
            self.stop_signal = signal.SIGHUP

    def task_should_stop(self) -> bool:
        """Stop the task in hand: the worker stops, or the breaker tripped (the worker then
        waits, paused, for `resume`)."""
        return self.should_stop() or (self.breaker is not None and self.breaker.tripped)

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    # --- rate limiting ----------------------------------------------------------------------
    def _limiter(self, bucket: str | None, what: str) -> DistributedRateLimiter | None:
        name = bucket or "default"
        limiter = self.limiters.get(name)
        if limiter is not None:
            return limiter
        with self._limiter_lock:  # items in flight on threads: one limiter per bucket
            return self._new_limiter(bucket, name, what)

    def _new_limiter(
        self, bucket: str | None, name: str, what: str
    ) -> DistributedRateLimiter | None:
        limiter = self.limiters.get(name)
        if limiter is None:
            b = self.backend.state.get_bucket(self.job_id, name)
            if b is None:
                if bucket is None:
                    return None  # no rate_limit in the job definition: acquire is free
                raise UserError(f"{what}: no rate-limit bucket {name!r} in the job definition")
            limiter = DistributedRateLimiter(
                self.job_id,
                b.rate,
                self.backend.state,
                bucket=name,
                burst=b.burst,
                active_workers=self._workers,
                should_stop=self.task_should_stop,
                on_paused=self._while_paused,
            )
            self.limiters[name] = limiter
        return limiter

    def _acquire(self, n: int, bucket: str | None) -> float:
        limiter = self._limiter(bucket, "ctx.acquire")
        return 0.0 if limiter is None else limiter.acquire(n, self.worker_id)

    def _throttled(self, retry_after: float | None, bucket: str | None) -> None:
        limiter = self._limiter(bucket, "ctx.throttled")
        if limiter is not None:
            limiter.throttled(retry_after)

    def _release_slots(self) -> None:
        for name, limiter in self.limiters.items():
            limiter.release_unused_tokens()
            log.info("worker %s: rate limiter %s: %s", self.worker_id, name, limiter.stats())

    def _while_paused(self) -> None:
        """Paused near the Slurm time limit: checkpoint and leave (like on a signal)."""
        if self.stop_signal is None and self.allocation.near_end():
            left = self.allocation.seconds_left() or 0.0
            self.stop_reason = (
                f"paused with {left:.0f} s of the Slurm allocation left (under "
                f"{LEAVE_MARGIN_S:.0f} s): checkpointing and leaving"
            )
            log.info("worker %s: %s", self.worker_id, self.stop_reason)
            self.stop_signal = signal.SIGUSR1

    def _record_usage(self, runner: TaskRunner) -> None:
        """The exhaustion signal, job-wide: slot waits and busy time, once per task; with items
        in flight, their latency and how many were in flight (metrics: not atomic with the
        commit). Under a lock: the tasks in hand end on their own threads."""
        with self._usage_lock:
            deltas = self._usage_deltas(runner)
        if not deltas:  # no rate limit, one item at a time: nothing to record, no write
            return
        try:
            self.backend.state.update_job(self.job_id, {}, counter_deltas=deltas)
        except Exception as e:  # noqa: BLE001 - metrics must never fail the worker
            log.warning("worker %s: could not record worker metrics: %s", self.worker_id, e)

    def _usage_deltas(self, runner: TaskRunner) -> dict[str, int]:
        usage = runner.ctx.take_usage()
        deltas: dict[str, int] = {}
        if runner.in_flight:
            items, item_s, area_s, occupied_s = runner.window.take_figures()
            deltas["inflight.items"] = items
            deltas["inflight.item_ms"] = round(item_s * 1000)
            deltas["inflight.area_ms"] = round(area_s * 1000)
            deltas["inflight.occupied_ms"] = round(occupied_s * 1000)
        if not self.limiters:
            return deltas
        deltas["worker.busy_ms"] = round(usage.busy_s * 1000)
        for name, wait in usage.wait_s.items():
            deltas[f"ratelimit.{name}.wait_ms"] = round(wait * 1000)
        deltas["ratelimit.wait_ms"] = round(usage.total_wait_s * 1000)
        for name, limiter in self.limiters.items():  # bucket writes, for the write rate
            deltas[f"ratelimit.{name}.writes"] = limiter.writes - self._writes.get(name, 0)
            self._writes[name] = limiter.writes
        return deltas

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        job = get_job(self.backend, self.job_id)
        definition = load_definition(self.backend, self.job_id)
        self._workers = job.workers
        if definition.executor == "slurm":
            options = definition.slurm
            self.walltime = WalltimeRule.of(self.allocation, options.time, options.min_remaining)
        try:
            handler = load_handler(definition.handler, definition.config_dir)
        except HandlerImportError as e:
            self._fail_job(f"handler cannot be imported on the worker: {e}")
            return EXIT_JOB_FAILED
        try:
            params = secret_refs.resolve(definition.params)
        except UserError as e:  # a secret unset where the workers run: the job's reason
            self._fail_job(f"worker {self.worker_id}: {e}")
            return EXIT_JOB_FAILED
        hidden = secret_refs.collect_secret_values(definition.params)
        redact_uncaught(hidden)  # from here on, no traceback shows a resolved secret
        ctx = Context(
            params,
            self._acquire,
            logging.getLogger("slurmctl.handler"),
            self.job_id,
            self.worker_id,
            throttled=self._throttled,
        )
        self.breaker = Breaker(self.backend, self.job_id, definition.breaker, job.workers)
        if handler.needs_loop:
            self.loop = EventLoop(definition.concurrency)
        try:  # the scratch root private to this user, verified, before anything is put in it
            runner = self._runner(definition, handler, ctx, hidden, job.created_at)
            self.info = hooks.WorkerInfo(
                self.backend, self.job_id, self.worker_id, runner.scratch_root, hidden, ctx
            )
            hooks.registry.after_worker_start(self.info)  # e.g. the JSON log, secrets redacted
        except ScratchRefused as e:
            self._fail_job(str(e))
            return EXIT_JOB_FAILED
        if handler.setup is not None and not self._setup(handler.setup, ctx, hidden, definition):
            hooks.registry.before_worker_stop(self.info)  # the log's last shipment
            return EXIT_SETUP_FAILED
        try:
            return self._loop_through_outages(runner, definition)
        except Exception as e:  # slurmctl's own code, outside a task: logged, the job's reason
            log.exception("worker %s: %s: %s", self.worker_id, type(e).__name__, e)
            self._fail_job(
                f"worker {self.worker_id}: {FRAMEWORK_ERROR}: "
                f"{redact(f'{type(e).__name__}: {e}', hidden)}"
            )
            return EXIT_JOB_FAILED
        finally:
            if self._receipts is not None:
                self._receipts.close()
            runner.close()
            self._release_slots()
            if handler.teardown is not None:
                self._teardown(handler.teardown, ctx, hidden)
            if self.loop is not None:
                self.loop.close()
            hooks.registry.before_worker_stop(self.info)  # e.g. the log's last shipment

    def _setup(
        self,
        setup: Callable[[Context], object],
        ctx: Context,
        hidden: list[str],
        definition: JobDefinition,
    ) -> bool:
        """The handler's `setup()`: an exception is logged with its traceback, the resolved
        secrets redacted (the log filters do it); a network-like one ends this worker (another
        run may succeed), any other fails the job with the redacted reason."""
        try:
            call_hook(setup, ctx, self.loop)
        except Exception as exc:  # the user's setup: classified, logged, reported
            c = classify(exc, definition.error_rules)
            reason = redact(f"handler setup() failed: {type(exc).__name__}: {exc}", hidden)
            log.error("worker %s: %s", self.worker_id, reason, exc_info=True)
            if c.type not in SETUP_TRANSIENT:
                self._fail_job(reason)
            return False
        return True

    def _teardown(
        self, teardown: Callable[[Context], object], ctx: Context, hidden: list[str]
    ) -> None:
        try:
            call_hook(teardown, ctx, self.loop)
        except Exception as exc:  # the user's teardown: logged, the work is done
            log.error(
                "worker %s: %s",
                self.worker_id,
                redact(f"handler teardown() failed: {type(exc).__name__}: {exc}", hidden),
                exc_info=True,
            )

    def _runner(
        self,
        definition: JobDefinition,
        handler: Handler,
        ctx: Context,
        hidden: list[str],
        created_at: float,
    ) -> TaskRunner:
        scratch = ensure_private_dir(self.scratch or scratch_root(definition.scratch))
        return TaskRunner(
            backend=self.backend,
            job_id=self.job_id,
            worker_id=self.worker_id,
            handler=handler,
            ctx=ctx,
            id_field=definition.id_field,
            pins=definition.output.pins(),
            lease_s=definition.lease.ttl_s,
            heartbeat_s=definition.lease.heartbeat_s,
            checkpoint_every=definition.checkpoint_every,
            max_task_failures=definition.retry.max_task_failures,
            scratch_root=scratch,
            rules=definition.error_rules,
            secrets=hidden,
            should_stop=self.task_should_stop,
            job_stamp=repr(created_at),
            breaker=self.breaker,
            concurrency=definition.concurrency,
            loop=self.loop,
            on_drain=self._prefetch,
        )

    def _loop_through_outages(self, runner: TaskRunner, definition: JobDefinition) -> int:
        """A store that stops answering (network cut, endpoint frozen) is waited for, with
        backoff, up to OUTAGE_LIMIT_S; a task in hand meanwhile is taken over once its lease
        expires, so nothing is lost by waiting."""
        outage_since: float | None = None
        delay = 1.0
        while True:
            started = time.monotonic()
            try:
                return self._loop(runner, definition)
            except (TimeoutError, ConnectionError, BackendUnavailable) as e:
                now = time.monotonic()
                if outage_since is None or now - started > 60:
                    outage_since, delay = now, 1.0
                if now - outage_since > OUTAGE_LIMIT_S:
                    log.error(
                        "worker %s: the store is unreachable: %s; giving up", self.worker_id, e
                    )
                    return EXIT_UNREACHABLE
                log.warning(
                    "worker %s: the store is unreachable (%s): retrying in %.0f s",
                    self.worker_id,
                    e,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _claim(self, wait_s: float) -> tuple[bool, TaskRecord | None]:
        """Take the next task: (a queue message came, the task claimed or None when the
        message was stale). The one place a worker claims, for the loop and `_prefetch`."""
        msgs = self.backend.queue.receive(
            self.job_id, max_messages=1, visibility_s=int(self._lease_s), wait_s=wait_s
        )
        if not msgs:
            return False, None
        msg = msgs[0]
        task = self.backend.state.claim_task(
            self.job_id,
            msg.body,
            self.worker_id,
            secrets.token_hex(8),
            self._lease_s,
            time.time(),
            holder=self.holder,
        )
        assert self._receipts is not None
        self._receipts.add(msg.receipt)  # claimed or stale: used up
        return True, task

    def _delete_receipts(self, receipts: list[str]) -> None:
        self.backend.queue.delete(self.job_id, receipts)

    def _run_claimed(self, runner: TaskRunner, task: TaskRecord) -> None:
        """One task; with items in flight, on a thread of its own, and the worker may claim
        the next one as its last items finish (`_prefetch`): back when none is in hand."""
        if not runner.in_flight:
            self._run_task(runner, task)
            return
        if self._lanes is None:
            self._lanes = Lanes(functools.partial(self._run_task, runner))
        self._lanes.start(task)
        self._lanes.wait()

    def _run_task(self, runner: TaskRunner, task: TaskRecord) -> None:
        began = time.monotonic()
        try:
            outcome = runner.run(task)
        except WorkerStopping:
            outcome = Outcome.STOPPED
        with self._usage_lock:  # the tasks in hand end on their own threads
            self._took(task.phase, outcome, time.monotonic() - began)
        self._record_usage(runner)
        log.info("worker %s: %s %s", self.worker_id, task.task_id, outcome.value)

    def _prefetch(self) -> None:
        """Every item of a task has started: claim the next task now, under the loop's gates
        (not stopping, the breaker closed, the job running, not paused, no retry backoff, the
        walltime rule), so its items take the slots the last ones free (worker/prefetch.py).
        A failure here is logged; the loop's next claim meets it again."""
        lanes = self._lanes
        if lanes is None or not lanes.may_take() or self.task_should_stop():
            return
        try:
            job = self._job()
            # the loop's poll (e.g. alerts): its thread waits while tasks follow each other
            hooks.registry.on_worker_poll(self.info)
            if job.status.terminal or job.paused or job.not_before > time.time():
                return
            if self.walltime is not None and self.walltime.refusal(job.phase) is not None:
                return  # the walltime rule: the loop asks it again, and leaves
            _, task = self._claim(0.0)
        except (TimeoutError, ConnectionError, BackendUnavailable) as e:
            log.warning("worker %s: no early claim: the store: %s", self.worker_id, e)
            return
        except Exception:  # slurmctl's own: logged with its traceback; the loop claims again
            log.exception("worker %s: the early claim of the next task failed", self.worker_id)
            return
        if task is not None:
            lanes.start(task)

    def _loop(self, runner: TaskRunner, definition: JobDefinition) -> int:
        state = self.backend.state
        lease_s = self._lease_s = definition.lease.ttl_s
        if self._receipts is None:
            every = min(DELETE_EVERY_S, lease_s / 4)
            self._receipts = Gatherer(
                "queue deletes", self._delete_receipts, DELETES_PER_REQUEST, every
            )
        reconcile_every = min(max(lease_s / 4, 2.0), 30.0)
        last_reconcile = last_dead = 0.0
        paused_logged = waiting_logged = False
        idle_wait = 0.0
        while not self.should_stop():
            self.check_supervisor()
            job = self._job()
            hooks.registry.on_worker_poll(self.info)  # e.g. alerts, at their own low pace
            if job.status.terminal:
                log.info("worker %s: job is %s, leaving", self.worker_id, job.status)
                return EXIT_OK
            if self.breaker is not None and self.breaker.tripped and not job.paused:
                log.info("worker %s: the job was resumed: the breaker closes", self.worker_id)
                self.breaker.reopen()
            if job.paused:
                if not paused_logged:
                    log.info("worker %s: job paused, waiting", self.worker_id)
                    paused_logged = True
                self._while_paused()
                time.sleep(self.poll_s / 4)
                continue
            paused_logged = False
            if job.not_before > time.time():  # a retry phase's backoff
                time.sleep(min(self.poll_s, job.not_before - time.time()))
                continue
            if not self._may_claim(job.phase):
                return EXIT_OK
            # Ask without waiting after a task (work is likely there); wait when last time idle.
            received, task = self._claim(idle_wait)
            if received:
                idle_wait = 0.0
                if task is not None:
                    self._run_claimed(runner, task)
                continue
            self._receipts.flush()  # idle: nothing more to gather for now
            counters = state.counters(self.job_id, metrics=False, running=False)  # the sum
            left = counters.get(task_counter(job.phase, "PENDING"), 0) + counters.get(
                task_counter(job.phase, "RUNNING"), 0
            )
            if left == 0 and job.submitted:
                log.info("worker %s: phase %s has no task left, leaving", self.worker_id, job.phase)
                return EXIT_OK
            if left == 0 and not submit_running(self.backend, job):
                log.info(
                    "worker %s: no task left and the submit writing them is gone, leaving "
                    "(`slurmctl resume %s` carries it on)",
                    self.worker_id,
                    self.job_id,
                )
                return EXIT_OK
            if left == 0 and not waiting_logged:
                log.info(
                    "worker %s: no task left; waiting for submit to write the rest",
                    self.worker_id,
                )
                waiting_logged = True
            # Idle while others finish: the embedded store is polled often (a local read), so the
            # last worker leaves, and finalize starts, within LOCAL_POLL_S of the last commit.
            idle_wait = self.poll_s if self.backend.kind != "local" else LOCAL_POLL_S
            if self.backend.kind == "local" and time.monotonic() - last_dead > DEAD_EVERY_S:
                # one host: a holder whose process is gone is dead, whoever started it
                last_dead = time.monotonic()
                release_dead_holders(self.backend, self.job_id, job.phase, Holder.process_gone)
            if time.monotonic() - last_reconcile > reconcile_every:
                last_reconcile = time.monotonic()
                turn = Turn(self.worker_id, reconcile_every)
                reconcile_turn(self.backend, self.job_id, job.phase, turn)
        return EXIT_STOPPED

    def _job(self) -> JobRecord:
        now = time.monotonic()
        cached = self._job_cache
        if cached is not None and now - cached[0] < JOB_CACHE_S:
            return cached[1]
        job = get_job(self.backend, self.job_id)
        self._job_cache = (now, job)
        return job

    def _may_claim(self, phase: str) -> bool:
        """The walltime rule, asked before each claim: False when a task of the phase would
        not finish before USR1 (the worker then leaves, holding no lease)."""
        refusal = self.walltime.refusal(phase) if self.walltime is not None else None
        if refusal is None:
            return True
        self.stop_reason = refusal
        log.info("worker %s: %s", self.worker_id, refusal)
        return False

    def _took(self, phase: str, outcome: Outcome, seconds: float) -> None:
        """A finished task's duration feeds the walltime estimate (a stopped one says
        nothing of how long a task takes)."""
        if self.walltime is not None and outcome in (Outcome.COMMITTED, Outcome.FAILED):
            self.walltime.durations.add(phase, seconds)

    def _fail_job(self, reason: str) -> None:
        log.error("%s", reason)
        lifecycle.fail(self.backend, self.job_id, reason)  # the first worker's reason stands
