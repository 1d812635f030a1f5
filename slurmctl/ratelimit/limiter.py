"""The worker's side of the shared schedule: leases of send slots, waited for one by one.

The PRD's shape (`DistributedRateLimiter(job_id, tokens_per_sec, client)`,
`acquire_token_lease`, `release_unused_tokens`) over any state store.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from slurmctl.backends.statestore import SlotGrant, StateStore
from slurmctl.ratelimit import gcra

PAUSED_POLL_S = 0.2
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
        active_workers: int = 1,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.job_id = job_id
        self.rate = tokens_per_sec
        self.client = client
        self.bucket = bucket
        self.active_workers = active_workers
        self.should_stop = should_stop
        self._slots: deque[float] = deque()
        self._grant: SlotGrant | None = None
        self._last_acquire = 0.0
        self._pace = 0.0
        self.waited_s = 0.0
        self.wasted = 0
        self._lead = 0.0
        """How far ahead to ask for slots: the store's round trip (EMA), so that the slots of a
        grant have not already passed by the time it arrives."""
        self._paused_logged = False

    def _lease_size(self) -> int:
        """A worker slower than the schedule's interval could not use consecutive slots."""
        if self._pace > 1.0 / self.rate:
            return 1
        return gcra.lease_size(self.rate, self.active_workers)

    def acquire_token_lease(self, worker_id: str, count: int) -> SlotGrant:
        """Reserve count slots (waiting while the bucket is paused)."""
        while True:
            t0 = time.time()
            grant = self.client.reserve_slots(self.job_id, self.bucket, count, t0 + self._lead)
            rtt = time.time() - t0
            self._lead = rtt * 1.5 if not self._lead else 0.8 * self._lead + 0.2 * rtt * 1.5
            if not grant.paused:
                if self._paused_logged:
                    log.info("rate limiter %s resumed", self.bucket)
                    self._paused_logged = False
                self._grant = grant
                self._slots = deque(grant.times)
                return grant
            if not self._paused_logged:
                log.info("rate limiter %s paused: waiting", self.bucket)
                self._paused_logged = True
            if self.should_stop():
                raise WorkerStopping
            time.sleep(PAUSED_POLL_S)
            self.waited_s += PAUSED_POLL_S

    def release_unused_tokens(self, count: int | None = None) -> bool:
        """Hand back the tail of the current lease (all unused slots by default)."""
        unused = len(self._slots) if count is None else min(count, len(self._slots))
        grant = self._grant
        if not unused or grant is None:
            return False
        ok = self.client.release_slots(
            self.job_id, self.bucket, grant.tat, gcra.released_tat(grant.tat, unused, self.rate)
        )
        for _ in range(unused):
            self._slots.pop()
        self._grant = None
        return ok

    def acquire(self, n: int = 1, worker_id: str = "") -> float:
        """Block until n send slots have come; returns the seconds waited."""
        now = time.time()
        if self._last_acquire:
            self._pace = 0.8 * self._pace + 0.2 * (now - self._last_acquire)
        waited = 0.0
        interval = 1.0 / self.rate
        for _ in range(n):
            while True:
                if self.should_stop():
                    raise WorkerStopping
                now = time.time()
                while self._slots and self._slots[0] < now - interval:
                    self._slots.popleft()  # too late to use it safely: see gcra.HEADROOM
                    self.wasted += 1
                if self._slots:
                    break
                self.acquire_token_lease(worker_id, max(n, self._lease_size()))
            slot = self._slots.popleft()
            delay = slot - time.time()
            if delay > 0:
                time.sleep(delay)
                waited += delay
        self._last_acquire = time.time()
        self.waited_s += waited
        return waited
