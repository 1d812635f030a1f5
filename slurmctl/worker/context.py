"""The `ctx` a handler receives: params, the rate limiter, metrics and a logger."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from slurmctl.errors import PermanentError, UserError
from slurmctl.ratelimit.signals import retry_after_of
from slurmctl.worker.http import HttpSession

DEFAULT_BUCKET = "default"


class Metrics:
    """Counters and timers the handler keeps; summed into the task manifest."""

    def __init__(self, extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.counters: dict[str, int] = {}
        self.timers: dict[str, float] = {}
        self._extra = extra
        self._lock: threading.Lock | None = None

    def incr(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _add_time(self, name: str, seconds: float) -> None:
        self.timers[name] = self.timers.get(name, 0.0) + seconds
        self.counters[f"{name}.calls"] = self.counters.get(f"{name}.calls", 0) + 1

    @contextmanager
    def timer(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._add_time(name, time.perf_counter() - t0)

    def make_threadsafe(self) -> None:
        """Items in flight (on threads, or on the loop while a task's thread takes the
        figures): every update under one lock. A worker running one item at a time never calls
        this, its updates stay a plain dict write."""
        lock = self._lock = threading.Lock()
        incr, add_time = self.incr, self._add_time

        def locked_incr(name: str, n: int = 1) -> None:
            with lock:
                incr(name, n)

        def locked_add_time(name: str, seconds: float) -> None:
            with lock:
                add_time(name, seconds)

        self.incr = locked_incr  # type: ignore[method-assign]
        self._add_time = locked_add_time  # type: ignore[method-assign]

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "counters": dict(self.counters),
            "timers_s": {k: round(v, 6) for k, v in self.timers.items()},
        }
        extra = self._extra() if self._extra is not None else {}
        return {**out, **extra}

    def reset(self) -> None:
        self.counters.clear()
        self.timers.clear()

    def take(self) -> dict[str, Any]:
        """The snapshot, and reset, in one step: an update from an item in flight meanwhile
        lands in this task's figures or the next one's, never in neither."""
        if self._lock is None:
            out = self.snapshot()
            self.reset()
            return out
        with self._lock:
            out = self.snapshot()
            self.reset()
        return out


Acquire = Callable[[int, str | None], float]
Throttled = Callable[[float | None, str | None], None]


@dataclass
class Usage:
    """One task's time, for the exhaustion signal: waiting for slots, by bucket, and in all."""

    wait_s: dict[str, float] = field(default_factory=dict)
    busy_s: float = 0.0

    @property
    def total_wait_s(self) -> float:
        return sum(self.wait_s.values())


def no_throttle(retry_after: float | None, bucket: str | None) -> None:
    return None


class Context:
    def __init__(
        self,
        params: Mapping[str, Any],
        acquire: Acquire,
        log: logging.Logger,
        job_id: str = "",
        worker_id: str = "",
        throttled: Throttled = no_throttle,
    ) -> None:
        self.params = params
        self.metrics = Metrics(self._ratelimit_snapshot)
        self.log = log
        self.job_id = job_id
        self.worker_id = worker_id
        self._task_id: str | None = None
        self._acquire = acquire
        self.http = HttpSession(self.metrics)
        """A urllib-based HTTP session counting requests, bytes and latency into metrics."""
        self._throttled = throttled
        self._last_bucket: str | None = None
        self._task_t0 = time.monotonic()
        self._wait: dict[str, float] = {}
        self._lock = threading.Lock()
        self.loop_thread: int | None = None
        """The thread of the worker's event loop (an `async def` handler): a blocking
        `ctx.acquire()` there would stall every item in flight, so it is refused."""

    @property
    def task_id(self) -> str | None:
        return self._task_id

    @task_id.setter
    def task_id(self, value: str | None) -> None:
        """The task runner names the task it starts: the per-task wait accounting starts too."""
        self._task_id = value
        self._task_t0 = time.monotonic()
        self._wait = {}

    def name_task(self, value: str | None) -> None:
        """The next task starts while the previous one's last items are in flight (prefetch):
        `task_id` names it, the wait accounting goes on (the worker takes it per task)."""
        self._task_id = value

    def acquire(self, n: int = 1, bucket: str | None = None) -> float:
        """Block until the job-wide rate limiter grants n send slots; returns seconds waited."""
        if n < 1:
            raise UserError(f"ctx.acquire: n must be at least 1, got {n}")
        if self.loop_thread is not None and threading.get_ident() == self.loop_thread:
            raise PermanentError(
                "ctx.acquire() blocks the event loop of an async handler: "
                "use `await ctx.acquire_async()`"
            )
        waited = self._acquire(n, bucket)
        name = bucket or DEFAULT_BUCKET
        with self._lock:
            self._last_bucket = bucket
            self._wait[name] = self._wait.get(name, 0.0) + waited
        return waited

    async def acquire_async(self, n: int = 1, bucket: str | None = None) -> float:
        """`acquire` for an `async def` handler: waits in a thread of the loop's executor, so
        the other items in flight go on; returns seconds waited."""
        return await asyncio.to_thread(self.acquire, n, bucket)

    def throttled(self, retry_after: float | None = None, bucket: str | None = None) -> None:
        """Tell the limiter the API throttled a request (HTTP 429, S3 SlowDown): the bucket's
        rate is cut for every worker of the job and recovers gradually; a retry_after (seconds)
        holds every worker's requests that long. Defaults to the bucket last acquired from."""
        if retry_after is not None and retry_after < 0:
            raise UserError(f"ctx.throttled: retry_after must be >= 0, got {retry_after}")
        self._throttled(retry_after, bucket if bucket is not None else self._last_bucket)

    def note_error(self, error_type: str, exc: BaseException) -> None:
        """The task runner reports each classified item failure: a `throttled` one reaches the
        limiter as if the handler had called `ctx.throttled` (with the exception's Retry-After).
        Never raises: the item's failure is what counts."""
        if error_type != "throttled":
            return
        try:
            self.throttled(retry_after_of(exc))
        except Exception as e:  # noqa: BLE001 - a failed report must not fail the task
            self.log.warning("could not report throttling to the rate limiter: %s", e)

    @property
    def waited_s(self) -> float:
        """Seconds this task has spent waiting for rate-limit slots (all buckets)."""
        return sum(self._wait.values())

    def take_usage(self) -> Usage:
        """This task's wait and busy time so far; the accounting starts again from now."""
        usage = Usage(dict(self._wait), time.monotonic() - self._task_t0)
        self._task_t0 = time.monotonic()
        self._wait = {}
        return usage

    def _ratelimit_snapshot(self) -> dict[str, Any]:
        if not self._wait:
            return {}
        busy = time.monotonic() - self._task_t0
        wait = self.waited_s
        return {
            "ratelimit": {
                "wait_s": round(wait, 6),
                "busy_s": round(busy, 6),
                "wait_share": round(wait / busy, 4) if busy > 0 else 0.0,
                "wait_s_by_bucket": {k: round(v, 6) for k, v in self._wait.items()},
            }
        }


def no_limit(n: int, bucket: str | None) -> float:
    return 0.0
