"""The next task claimed while the last items of the current one are in flight.

A worker with items in flight (`concurrency` > 1, or an `async def process`) would otherwise let
its window empty at the end of every task: the tail's latency, the output, the commit and the
next claim pass without a request going out, about N / `batch_size` of the rate. Instead, once
every item of a task has started, the task's thread asks the worker for its next task
(`Worker._prefetch`: the same claim and the same gates as the loop, so no claim while stopping,
paused or the breaker open), and that task runs on a thread of its own: its items take the
window's slots as the previous task's last ones free them (worker/inflight.py).

A task is claimed early only when every task in hand has started all its items, so one is
filling the window at a time and the others are finishing: two tasks in hand when the window is
smaller than a batch, about N / `batch_size` + 1 when it is larger (`concurrency: 256` with
batches of 100 holds three or four), and never more than MAX_IN_HAND. Each has its own lease,
heartbeat, checkpoint and fenced commit, so every rule of one task holds for each: a worker
killed with several in hand loses their leases and each task resumes from its checkpoint; a stop
reaches all (none starts an item, each checkpoints and releases its lease).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from slurmctl.backends.statestore import TaskRecord

log = logging.getLogger("slurmctl.worker")

MAX_IN_HAND = 16
"""Tasks a worker holds at once, at most: batches under N / 15 items leave slots unused."""
JOIN_POLL_S = 0.5
"""The waiting thread (the main one) wakes this often: signals are handled promptly."""


class Lanes:
    """The tasks a worker holds, each run on a thread of its own by `run`."""

    def __init__(self, run: Callable[[TaskRecord], None]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._filling: set[threading.Thread] = set()
        """The tasks in hand that have items left to start."""

    def in_hand(self) -> int:
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    def may_take(self) -> bool:
        """Called by a task whose items have all started: a task may be claimed now when every
        task in hand has started all its items, fewer than MAX_IN_HAND are in hand and no
        task's thread has failed."""
        with self._lock:
            self._filling.discard(threading.current_thread())
            return (
                not self._errors
                and not self._filling
                and sum(t.is_alive() for t in self._threads) < MAX_IN_HAND
            )

    def start(self, task: TaskRecord) -> None:
        thread = threading.Thread(
            target=self._one, args=(task,), name=f"slurmctl-task-{task.task_id}", daemon=True
        )
        with self._lock:  # started under the lock: `wait` never sees it before it runs
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            self._filling.add(thread)
            thread.start()

    def _one(self, task: TaskRecord) -> None:
        try:
            self._run(task)
        except BaseException as e:  # noqa: BLE001 - raised again in the waiting thread
            with self._lock:
                self._errors.append(e)
        finally:
            with self._lock:
                self._filling.discard(threading.current_thread())

    def wait(self) -> None:
        """Until no task is in hand (a task may start the next one meanwhile); then the first
        error of a task's thread is raised here (a store outage: the worker's loop waits)."""
        while True:
            with self._lock:
                alive = [t for t in self._threads if t.is_alive()]
                if not alive:
                    self._threads = []
                    errors, self._errors = self._errors, []
                    break
            alive[0].join(JOIN_POLL_S)
        if errors:
            raise errors[0]
