"""The worker's side of the shared schedule: leases of send slots, waited for one by one.

The original interface (`DistributedRateLimiter(job_id, tokens_per_sec, client)`,
`acquire_token_lease`, `release_unused_tokens`) over any state store. Each grant brings the
bucket's effective and configured rates back, so a `set-rate` or a throttle cut resizes the next
lease; a slot far ahead (a low rate shared by many workers) is waited for in short naps that
re-read the bucket, so a pause, a new rate or a Retry-After also reach a worker already holding
slots within a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from slurmctl.backends.statestore import Bucket, SlotGrant, StateStore
from slurmctl.ratelimit import gcra

PAUSED_POLL_S = 0.2
FAR_S = 0.5
"""A slot further ahead than this is waited for in naps of FAR_CHECK_S that re-read the bucket."""
FAR_CHECK_S = 0.25
REPORT_DEDUP_S = 0.25
"""A worker reports a throttle to the store at most this often (unless a Retry-After is longer)."""
log = logging.getLogger("slurmctl.ratelimit")


class WorkerStopping(BaseException):
    """Raised inside the handler's `acquire` when the worker must stop (signal, lease lost).

    A BaseException so that a handler's `except Exception` cannot swallow it.
    """


class DistributedRateLimiter:
    def __init__(
        self,
        job_id: str,
        tokens_per_sec: float,
        client: StateStore,
        *,
        bucket: str = "default",
        burst: int = gcra.MAX_HEADROOM + 1,
        active_workers: int = 1,
        should_stop: Callable[[], bool] = lambda: False,
        on_paused: Callable[[], None] = lambda: None,
    ) -> None:
        self.job_id = job_id
        self.configured = tokens_per_sec
        """The bucket's configured rate, refreshed from every grant (set-rate)."""
        self.rate = tokens_per_sec
        """The effective rate of the last grant (lower after a throttle): sizes the leases."""
        self.client = client
        self.bucket = bucket
        self.burst = burst
        """The bucket's burst: how late a slot may still be used (`gcra.late_allowed`)."""
        self.active_workers = active_workers
        self.should_stop = should_stop
        self.on_paused = on_paused
        """Called at each poll while the bucket is paused (the worker's time-limit check)."""
        self._slots: deque[float] = deque()
        self._grant: SlotGrant | None = None
        self._last_acquire = 0.0
        self._pace = 0.0
        self.waited_s = 0.0
        """Seconds spent waiting for slots (the schedule, a Retry-After hold); not pauses."""
        self.paused_s = 0.0
        self.wasted = 0
        self.grants = 0
        self.reservations = 0
        self.reserve_s = 0.0
        """Time spent in the store's reserve calls (their round trips)."""
        self.writes = 0
        """Bucket write attempts (reservations, releases, throttle reports)."""
        self._lead = 0.0
        """How far ahead to ask for slots: the store's round trip (EMA), so that the slots of a
        grant have not already passed by the time it arrives."""
        self._paused_logged = False
        self._held_logged = 0.0
        self._last_report = 0.0
        self._hold_until = 0.0
        self._lock = threading.RLock()
        self._drop_asked = False
        """Several items in flight on threads (`concurrency`) share this limiter: one acquires
        at a time (the slots come one after another anyway), the next waits for the lock."""

    def _lease_size(self) -> int:
        """A worker slower than the schedule's interval could not use consecutive slots."""
        if self._pace > 1.0 / self.rate:
            return 1
        return gcra.lease_size(self.rate, self.active_workers, rtt_s=self._lead / 1.5)

    def acquire_token_lease(self, worker_id: str, count: int) -> SlotGrant:
        """Reserve count slots (waiting while the bucket is paused or held by a Retry-After)."""
        while True:
            t0 = time.time()
            grant = self.client.reserve_slots(self.job_id, self.bucket, count, t0 + self._lead)
            rtt = time.time() - t0
            self.reserve_s += rtt
            self.reservations += 1
            self._lead = rtt * 1.5 if not self._lead else 0.8 * self._lead + 0.2 * rtt * 1.5
            self.writes += grant.writes
            if grant.configured_rate:
                self.configured = grant.configured_rate
            if grant.paused:
                self._wait_paused()
                continue
            if self._paused_logged:
                log.info("rate limiter %s resumed", self.bucket)
                self._paused_logged = False
            if grant.rate:
                self.rate = grant.rate
            if not grant.times:  # held by a Retry-After
                self._hold_until = grant.hold_until
                if grant.hold_until != self._held_logged:
                    log.info(
                        "rate limiter %s: the API asked to wait; holding for %.1f s",
                        self.bucket,
                        grant.hold_until - time.time(),
                    )
                    self._held_logged = grant.hold_until
                if self.should_stop():
                    raise WorkerStopping
                time.sleep(min(max(grant.hold_until - time.time(), 0.0), PAUSED_POLL_S))
                continue
            self.grants += 1
            self._grant = grant
            self._slots = deque(grant.times)
            return grant

    def _wait_paused(self) -> None:
        if not self._paused_logged:
            log.info("rate limiter %s paused: waiting", self.bucket)
            self._paused_logged = True
        self.on_paused()
        if self.should_stop():
            raise WorkerStopping
        time.sleep(PAUSED_POLL_S)
        self.paused_s += PAUSED_POLL_S

    def release_unused_tokens(self, count: int | None = None) -> bool:
        """Hand back the tail of the current lease (all unused slots by default)."""
        unused = len(self._slots) if count is None else min(count, len(self._slots))
        grant = self._grant
        if not unused or grant is None:
            return False
        rate = grant.rate or self.rate
        ok = self.client.release_slots(
            self.job_id, self.bucket, grant.tat, gcra.released_tat(grant.tat, unused, rate)
        )
        self.writes += 1
        for _ in range(unused):
            self._slots.pop()
        if not ok:  # others reserved since: the slots are lost to the schedule
            self.wasted += unused
        self._grant = None
        return ok

    def _drop_slots(self) -> None:
        """Give back (or, when others reserved since, forget) every slot held."""
        self.release_unused_tokens()
        self.wasted += len(self._slots)
        self._slots.clear()

    def _still_valid(self) -> bool:
        """Re-read the bucket while a far slot is waited for: is it still ours to use?"""
        b = self.client.get_bucket(self.job_id, self.bucket)
        if b is not None:
            self.burst = b.burst
        return not (
            b is None or b.paused or b.rate != self.configured or b.hold_until > time.time()
        )

    def _wait_for(self, slot: float, late: float) -> str:
        """Sleep until slot: "ok"; "late" when this process woke too late to use it safely
        (descheduled under load: see gcra.headroom); "changed" when the bucket changed meanwhile
        (paused, a new rate, a Retry-After): the slots held are not used."""
        while True:
            if self.should_stop():
                raise WorkerStopping
            if self._drop_asked:  # throttled meanwhile (another item in flight)
                return "changed"
            delay = slot - time.time()
            if delay <= FAR_S:
                if delay > 0:
                    time.sleep(delay)
                return "ok" if time.time() - slot <= late else "late"
            time.sleep(FAR_CHECK_S)
            if not self._still_valid():
                return "changed"

    def acquire(self, n: int = 1, worker_id: str = "") -> float:
        """Block until n send slots have come; returns the seconds waited (pauses excepted)."""
        with self._lock:
            return self._acquire(n, worker_id)

    def _acquire(self, n: int, worker_id: str) -> float:
        start, paused0 = time.monotonic(), self.paused_s
        now = time.time()
        if self._last_acquire:
            self._pace = 0.8 * self._pace + 0.2 * (now - self._last_acquire)
        got = 0
        while got < n:
            if self.should_stop():
                raise WorkerStopping
            late = gcra.late_allowed(self.configured, self.burst)  # what the headroom absorbs
            now = time.time()
            while self._slots and self._slots[0] < now - late:
                self._slots.popleft()  # too late to use it safely: see gcra.headroom
                self.wasted += 1
            if not self._slots:
                self.acquire_token_lease(worker_id, max(n - got, self._lease_size()))
                continue
            outcome = self._wait_for(self._slots[0], late)
            if outcome == "changed":
                self._drop_asked = False
                self._drop_slots()
                continue
            self._slots.popleft()
            if outcome == "late":
                self.wasted += 1
                continue
            got += 1
        self._last_acquire = time.time()
        waited = max(0.0, time.monotonic() - start - (self.paused_s - paused0))
        self.waited_s += waited
        return waited

    def throttled(self, retry_after: float | None = None) -> Bucket | None:
        """The API throttled this worker: cut the bucket's rate for the whole job (and hold it
        for retry_after seconds); this worker's own slots are given back."""
        if not self._lock.acquire(blocking=False):
            # another item in flight waits for a slot under the lock: report at once (the caller
            # may be the event loop, it must not wait); that item drops the slots held at its
            # next look
            self._drop_asked = True
            return self._throttled(retry_after, drop=False)
        try:
            return self._throttled(retry_after)
        finally:
            self._lock.release()

    def _throttled(self, retry_after: float | None, drop: bool = True) -> Bucket | None:
        now = time.time()
        held = retry_after is not None and now + retry_after > self._hold_until + 0.05
        if now - self._last_report < REPORT_DEDUP_S and not held:
            return None
        self._last_report = now
        if drop:
            self._drop_slots()
        b = self.client.throttle_bucket(self.job_id, self.bucket, now, retry_after)
        self.writes += 1
        if b is not None:
            self.configured, self.burst = b.rate, b.burst
            self.rate = min(b.effective_rate(now), gcra.paced_rate(b.rate, b.burst))
            self._hold_until = b.hold_until
            log.info(
                "rate limiter %s: throttled by the API; effective rate now %.3g/s%s",
                self.bucket,
                self.rate,
                f", held for {b.hold_until - now:.1f} s" if b.hold_until > now else "",
            )
        return b

    def stats(self) -> dict[str, float]:
        return {
            "waited_s": round(self.waited_s, 3),
            "paused_s": round(self.paused_s, 3),
            "grants": self.grants,
            "writes": self.writes,
            "wasted": self.wasted,
            "reserve_ms_mean": round(1000 * self.reserve_s / max(self.reservations, 1), 2),
        }
