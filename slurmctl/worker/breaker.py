"""The circuit breaker: a job whose recent items fail at a high share with one error type pauses
itself, so a dead API costs a few hundred requests instead of every item times every attempt.

The window is job-wide at a low write cost. Each worker keeps its own window of the last
`breaker.window` outcomes. A worker whose window looks suspicious (half the trip share or more
failing with one type) publishes what it saw since its last publish as counter deltas
(`breaker.n`, `breaker.f.<type>`), at most every PUBLISH_S, and reads the job's breaker counters
back; differences between the snapshots it read give the job-wide counts of the last `window`
items. A healthy job publishes nothing. The job pauses (the pause transition of
`slurmctl pause`, conditional, so exactly one worker records it) when:

- the worker's own window is full and over the share (it trips at once), or
- the job-wide counts of at least `window` items, plus its own unpublished ones, are over it.

Every worker learns of a trip from the rate-limit buckets (paused: no slot is issued) or from the
`breaker.trips` counter at its next read, and stops its task at a checkpoint. `slurmctl resume`
closes the breaker: it lifts the pause and zeroes the window counters (`reset_breaker`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Protocol

from slurmctl import hooks, lifecycle
from slurmctl.backends import Backend
from slurmctl.jobs import BREAKER_PREFIX
from slurmctl.worker.classify import http_status

log = logging.getLogger("slurmctl.worker")

PUBLISH_S = 0.2
"""A suspicious worker publishes its window deltas (one counter write, one read) this often, or
sooner once it holds a chunk of `window / (4 x workers)` unpublished items while hot: a fast
handler against a dead API then trips the job within a quarter window of the job-wide count,
at about a dozen writes per trip whatever the item rate."""
HOT_CHECK_S = 0.025
"""A hot worker (its own window failing at the trip share) reads the job record this often, so
it stops within a fraction of a second of another worker's trip (a read, not a write)."""
WATCH_S = 5.0
"""After a suspicious failure, a worker keeps publishing (successes too) for this long."""
IGNORED = frozenset({"throttled"})
"""Not the breaker's business: throttling slows the job's rate limiter down instead."""
COUNTER_N = "breaker.n"
COUNTER_TRIPS = "breaker.trips"
FAILED_PREFIX = "breaker.f."


class BreakerSettings(Protocol):
    """What the job definition's `breaker:` section offers."""

    @property
    def enabled(self) -> bool: ...
    @property
    def window(self) -> int: ...
    @property
    def share(self) -> float: ...


def failure_label(error_type: str, exc: BaseException) -> str:
    """`server: HTTPError 503`: the error type, the exception's class and its HTTP status."""
    status = http_status(exc)
    return f"{error_type}: {type(exc).__name__}" + (f" {status}" if status else "")


class Breaker:
    def __init__(
        self, backend: Backend, job_id: str, settings: BreakerSettings, workers: int = 1
    ) -> None:
        self.backend = backend
        self.chunk = max(5, settings.window // (4 * max(1, workers)))
        self.job_id = job_id
        self.enabled = settings.enabled
        self.size = settings.window
        self.share = settings.share
        self.tripped = False
        """This worker saw the breaker trip (its own trip or another worker's)."""
        self.reason: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._window: deque[str | None] = deque()
        self._failed: Counter[str] = Counter()
        self._quiet = 0
        """Successes seen while the window held no failure (kept as a count: the fast path)."""
        self._watching = False
        self._hot = False
        self._last_check = 0.0
        self._watch_until = 0.0
        self._last_publish = 0.0
        self._pending_n = 0
        self._pending_f: Counter[str] = Counter()
        self._snapshots: deque[tuple[int, Counter[str]]] = deque()
        self._store_n = 0
        self._store_f: Counter[str] = Counter()
        self._trips_seen: int | None = None
        self._labels: dict[str, str] = {}

    def reopen(self) -> None:
        """The job was resumed: start a new window."""
        self.tripped = False
        self.reason = None
        self._reset()

    # --- per item ---------------------------------------------------------------------------
    def ok(self) -> None:
        if not self.enabled or self.tripped:
            return
        if not self._failed and not self._watching:
            self._quiet += 1  # nothing suspicious: no deque work, no store write
            return
        self._push(None)
        self._hot = max(self._failed.values(), default=0) >= self.share * len(self._window)
        self._after_item()

    def failed(self, error_type: str, exc: BaseException) -> None:
        if not self.enabled or self.tripped or error_type in IGNORED:
            return
        self._labels[error_type] = failure_label(error_type, exc)
        if self._quiet:
            self._window.extend([None] * min(self._quiet, self.size))
            while len(self._window) > self.size:
                self._window.popleft()
            self._quiet = 0
        self._push(error_type)
        top, count = self._failed.most_common(1)[0]
        self._hot = count >= self.share * len(self._window)
        if count >= self.share * len(self._window) / 2:
            self._watching = True
            self._watch_until = time.monotonic() + WATCH_S
        if len(self._window) >= self.size and count >= self.share * len(self._window):
            self._trip(count, len(self._window), top)
            return
        self._after_item()

    def _push(self, error_type: str | None) -> None:
        window = self._window
        if len(window) >= self.size:
            old = window.popleft()
            if old is not None:
                self._failed[old] -= 1
                if not self._failed[old]:
                    del self._failed[old]
        window.append(error_type)
        self._pending_n += 1
        if error_type is not None:
            self._failed[error_type] += 1
            self._pending_f[error_type] += 1

    def _after_item(self) -> None:
        n = self._store_n + self._pending_n
        if n >= self.size:
            failed = self._store_f + self._pending_f
            if failed:
                top, count = failed.most_common(1)[0]
                if count >= self.share * n:
                    self._trip(count, n, top)
                    return
        now = time.monotonic()
        if self._hot and now - self._last_check >= HOT_CHECK_S:
            self._last_check = now
            job = self.backend.state.get_job(self.job_id)
            if job is not None and job.paused:
                log.info("the job was paused (%s): stopping this task", job.error or "pause")
                self.tripped = True
                return
        if now - self._last_publish < PUBLISH_S and not (
            self._hot and self._pending_n >= self.chunk
        ):
            return
        if self._watching and now > self._watch_until and not self._pending_f:
            self._watching = False  # calm again: the job-wide counts read are stale from now
            self._snapshots.clear()
            self._store_n, self._store_f = 0, Counter()
        if self._watching and self._pending_n:
            self._publish(now)

    # --- the job-wide window ----------------------------------------------------------------
    def _publish(self, now: float) -> None:
        self._last_publish = now
        deltas = {COUNTER_N: self._pending_n}
        deltas.update({FAILED_PREFIX + t: c for t, c in self._pending_f.items()})
        state = self.backend.state
        state.update_job(self.job_id, {}, counter_deltas=deltas)
        self._pending_n, self._pending_f = 0, Counter()
        counters = state.counters(self.job_id, running=False)  # its own counters only
        trips = counters.get(COUNTER_TRIPS, 0)
        if self._trips_seen is None:
            self._trips_seen = trips
        elif trips > self._trips_seen:
            log.info("the breaker tripped on another worker: stopping this task")
            self.tripped = True
            return
        n = counters.get(COUNTER_N, 0)
        f = Counter(
            {
                k.removeprefix(FAILED_PREFIX): v
                for k, v in counters.items()
                if k.startswith(FAILED_PREFIX) and v > 0
            }
        )
        if not self._snapshots and n <= 2 * self.size:
            self._snapshots.append((0, Counter()))  # the counters started with this episode
        self._snapshots.append((n, f))
        while len(self._snapshots) > 1 and n - self._snapshots[1][0] >= self.size:
            self._snapshots.popleft()
        base_n, base_f = self._snapshots[0]
        self._store_n, self._store_f = n - base_n, f - base_f
        self._after_item()

    def _trip(self, count: int, n: int, error_type: str) -> None:
        self.tripped = True
        label = self._labels.get(error_type, error_type)
        self.reason = f"{BREAKER_PREFIX}{count} of the last {n} items failed: {label}"
        if lifecycle.pause(self.backend, self.job_id, reason=self.reason, by="breaker"):
            self.backend.state.update_job(self.job_id, {}, counter_deltas={COUNTER_TRIPS: 1})
            log.warning("%s", self.reason)
            hooks.registry.after_job_paused(self.backend, self.job_id, self.reason)  # an alert
        else:
            log.info("the job is paused already; this worker stops its task (%s)", self.reason)


def reset_breaker(backend: Backend, job_id: str) -> None:
    """`resume` closes the breaker: its window counters start again from zero."""
    counters = backend.state.counters(job_id)
    deltas = {
        k: -v for k, v in counters.items() if (k == COUNTER_N or k.startswith(FAILED_PREFIX)) and v
    }
    if deltas:
        backend.state.update_job(job_id, {}, counter_deltas=deltas)
