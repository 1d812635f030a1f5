"""Writes a worker may gather: several small requests of one kind sent as one, a little later.

Two of a task's requests need not be made at once, one per task: the delete of the queue
message that brought it (a hint; the state store holds the truth) and the per-task metrics
counters (sums for `status`, the dashboard and `/metrics`; nothing decides on them). A
`Gatherer` holds such entries and hands them to its `send` together: when `max_entries` are
held, once the oldest has waited `max_age_s` (a daemon thread sees to it, so a long task or an
idle worker holds nothing for longer) and at `close` (the worker leaving). What a SIGKILLed
worker held is lost: a message not deleted comes back after its visibility timeout and its
receiver finds the task claimed or finished (the hint is discarded, nothing written); metrics
not sent are missing from the sums (at most `max_age_s` of one worker's).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from slurmctl.errors import BackendUnavailable

log = logging.getLogger("slurmctl.worker")

T = TypeVar("T")

SEND_ERRORS = (TimeoutError, ConnectionError, BackendUnavailable)
"""A send that fails like this is logged and dropped: what it carried is a hint or a metric."""


class Gatherer(Generic[T]):
    """Entries sent together by `send` (called without the lock held, one call at a time)."""

    def __init__(
        self, what: str, send: Callable[[list[T]], None], max_entries: int, max_age_s: float
    ) -> None:
        self.what = what
        self._send = send
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._entries: list[T] = []
        self._oldest = 0.0
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.sends = 0
        """Requests made, for the tests and the logs."""

    def add(self, entry: T) -> None:
        with self._lock:
            if not self._entries:
                self._oldest = time.monotonic()
            self._entries.append(entry)
            full = len(self._entries) >= self.max_entries or self._closed  # closed: at once
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name=f"slurmctl-gather-{self.what}", daemon=True
                )
                self._thread.start()
        if full:
            self.flush()
        else:
            self._wake.set()

    def flush(self) -> None:
        """Send what is held now (nothing held: no request)."""
        with self._sending:
            with self._lock:
                entries, self._entries = self._entries, []
            if not entries:
                return
            self.sends += 1
            try:
                self._send(entries)
            except SEND_ERRORS as e:
                log.warning("%s: %d not sent (%s): dropped", self.what, len(entries), e)

    def close(self) -> None:
        """Send what is held and stop the thread (the worker leaves or releases)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                wait = self._oldest + self.max_age_s - time.monotonic() if self._entries else None
            if wait is not None and wait <= 0:
                try:
                    self.flush()
                except Exception:  # slurmctl's own: logged with its traceback, the next try
                    log.exception("%s: sending failed", self.what)
                continue
            self._wake.wait(wait)
            self._wake.clear()
