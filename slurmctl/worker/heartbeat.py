"""The lease heartbeat of a worker's running task.

A task's lease expires unless its holder extends it; the handler may block for long (an API
call, a slot wait), so the extension cannot ride on the item loop. One daemon thread per worker
extends the leases of the tasks the worker holds now (`begin` / `end` around each attempt: two
while the next task starts as the last items of the previous one finish) and tells each attempt,
through its `lost` event, when its lease is gone: another worker took the task
over, or no heartbeat got through for a whole lease. Kept apart from the attempt (task.py) because
it runs on its own thread and shares only that one slot with it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from slurmctl import faults
from slurmctl.backends import Backend
from slurmctl.errors import BackendUnavailable

log = logging.getLogger("slurmctl.worker")

Beating = tuple[str, str, threading.Event, float]
"""(task id, lease token, the attempt's `lost` event, when the lease was last renewed)."""


@dataclass
class Heartbeat:
    backend: Backend
    job_id: str
    lease_s: float
    heartbeat_s: float
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _beating: dict[str, Beating] = field(default_factory=dict, init=False)
    """By lease token: the attempts in hand."""
    _thread: threading.Thread | None = field(default=None, init=False)

    def begin(self, task_id: str, token: str) -> threading.Event:
        """Extend the lease of this attempt from now on (the thread starts at the first task);
        returns the event set when the lease is lost."""
        lost = threading.Event()
        with self._lock:
            self._beating[token] = (task_id, token, lost, time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
        return lost

    def end(self, token: str) -> None:
        """The attempt ended: its lease is no longer extended."""
        with self._lock:
            self._beating.pop(token, None)

    def _run(self) -> None:
        """One thread per worker extends the leases of the tasks it holds. A store error is
        retried with backoff; when no heartbeat got through for a whole lease, the lease has
        lapsed (another worker may hold the task): the task stops as lost."""
        failures = 0
        while True:
            time.sleep(
                backoff(failures, self.heartbeat_s) if failures else min(self.heartbeat_s, 1.0)
            )
            with self._lock:
                beating = list(self._beating.values())
            if not beating:
                failures = 0
                continue
            for current in beating:
                failures = self._beat(current, failures)

    def _beat(self, current: Beating, failures: int) -> int:
        """Extend one lease when due; returns the failures in a row so far."""
        task_id, token, lost, renewed = current
        if lost.is_set() or (not failures and time.monotonic() - renewed < self.heartbeat_s):
            return failures
        asked = time.monotonic()
        try:
            faults.inject("heartbeat")
            alive = self.backend.state.heartbeat(
                self.job_id, task_id, token, self.lease_s, time.time()
            )
        except Exception as e:  # noqa: BLE001 - a store error must not end the heartbeats
            failures += 1
            self._failed(current, e, failures)
            return failures
        with self._lock:
            if self._beating.get(token) is not current:
                return 0  # the task ended meanwhile: its commit decided
            self._beating[token] = (task_id, token, lost, asked)
        if not alive:
            log.warning("lease on %s lost: another worker took the task over", task_id)
            lost.set()
        return 0

    def _failed(self, current: Beating, e: Exception, failures: int) -> None:
        task_id, _, lost, renewed = current
        silent = time.monotonic() - renewed
        store_error = isinstance(e, (TimeoutError, ConnectionError, BackendUnavailable))
        if silent >= self.lease_s:
            log.warning(
                "%s: lease lapsed: no heartbeat got through for %.1f s (%s: %s): stopping the task",
                task_id,
                silent,
                type(e).__name__,
                e,
                exc_info=not store_error,
            )
            lost.set()
            return
        log.warning(
            "%s: heartbeat failed (%s: %s): retry %d in %.2f s",
            task_id,
            type(e).__name__,
            e,
            failures,
            backoff(failures, self.heartbeat_s),
            exc_info=not store_error,  # an unexpected error: its traceback, once per failure
        )


def backoff(failures: int, cap_s: float) -> float:
    """Seconds before heartbeat retry `failures`: 0.1, 0.2, 0.4 ... up to cap_s."""
    return float(min(0.05 * 2 ** min(failures, 16), cap_s))
