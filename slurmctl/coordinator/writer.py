"""Writing a submit's task records: stored, counted and queued chunk by chunk, in input order.

Counting in order is what makes streaming submit exact: the job's `task_count` says how many
tasks, from the first, are stored and counted, so a submit killed at any line and carried on by
`resume` counts every task exactly once, and workers may run the first tasks meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from slurmctl.backends import Backend
from slurmctl.backends.statestore import ITEMS_PENDING, ITEMS_TOTAL, TaskRecord, task_counter
from slurmctl.errors import JobStateError

PHASE = "initial"


class TaskWriter:
    """Stores the task records, counts them and queues their ids, chunk by chunk in input order.

    A chunk is counted (the job's `task_count` moves, with the task and item counters, in one
    conditional update on the `task_count` read) only after every chunk before it, so
    `task_count` is how many tasks, from the first, are stored and counted: a submit killed at
    any line and carried on counts each task exactly once (tasks already stored are not stored
    again: `put_tasks` inserts the missing ones only). Only counted tasks are queued, so a
    worker never claims a task the counters do not know yet.

    With threads > 1 (AWS) the stores' puts and the queue's sends run on a small pool, at most
    2 * threads chunks in flight: submit is bounded by DynamoDB and SQS, not by one thread.
    """

    def __init__(self, backend: Backend, job_id: str, threads: int) -> None:
        self.backend, self.job_id = backend, job_id
        job = backend.state.get_job(job_id)
        self.counted = job.task_count if job else 0
        self.items = job.item_count if job else 0
        self.next = 0
        """Index of the next task added."""
        self.pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="slurmctl-tasks")
            if threads > 1
            else None
        )
        self.window: deque[tuple[int, list[TaskRecord], Future[int]]] = deque()
        self.sends: list[Future[None]] = []
        self.limit = 2 * threads
        self.cond = threading.Condition()
        """Guards window, sends, counted and failed: chunks are counted by whichever pool
        thread finishes the oldest put, at once (not at the next add: a slow input must not
        keep stored tasks from the workers)."""
        self.failed: BaseException | None = None
        self._started = False

    def add(self, tasks: list[TaskRecord]) -> None:
        if not tasks:
            return
        start, self.next = self.next, self.next + len(tasks)
        if self.pool is None:
            self.backend.state.put_tasks(tasks)
            self._count(start, tasks)
            return
        with self.cond:
            while len(self.window) >= self.limit and self.failed is None:
                self.cond.wait()
            self._raise()
        put = self.pool.submit(self.backend.state.put_tasks, tasks)
        with self.cond:
            self.window.append((start, tasks, put))
        put.add_done_callback(self._on_put)
        if not self._started:  # the first chunk is waited for: the workers start once counted
            self._drain()

    def _on_put(self, _: Future[int]) -> None:
        with self.cond:
            try:
                while self.window and self.failed is None and self.window[0][2].done():
                    start, tasks, put = self.window[0]
                    put.result()
                    self._count(start, tasks)
                    self.window.popleft()
            except BaseException as e:  # noqa: BLE001 - raised in the submit's thread
                self.failed = e
            self.cond.notify_all()

    def _drain(self) -> None:
        """Wait until every chunk added so far is counted (or one failed)."""
        with self.cond:
            while self.window and self.failed is None:
                self.cond.wait()
            self._raise()

    def _raise(self) -> None:
        if self.failed is not None:
            raise self.failed

    def _count(self, start: int, tasks: list[TaskRecord]) -> None:
        end = start + len(tasks)
        fresh = tasks[max(0, self.counted - start) :] if end > self.counted else []
        if fresh:
            items = sum(t.items for t in fresh)
            moved = self.backend.state.update_job(
                self.job_id,
                {
                    "task_count": end,
                    "item_count": self.items + items,
                    "updated_at": time.time(),
                },
                expect={"submitted": False, "task_count": self.counted},
                counter_deltas={
                    task_counter(PHASE, "PENDING"): len(fresh),
                    ITEMS_TOTAL: items,
                    ITEMS_PENDING: items,
                },
            )
            if not moved:
                raise JobStateError(f"job {self.job_id}: another submit is writing its tasks")
            self.counted, self.items = end, self.items + items
        ids = [t.task_id for t in tasks]  # counted now or before: queued (again) either way
        if self.pool is None or not self._started:
            self.backend.queue.send(self.job_id, ids)
        else:
            self.sends.append(self.pool.submit(self.backend.queue.send, self.job_id, ids))
            self.sends = [f for f in self.sends if not f.done() or f.exception() is not None]

    def started(self, on_durable: Callable[[], None]) -> bool:
        """Call on_durable once, when the first tasks are counted and queued; True then."""
        if self._started or self.counted == 0:
            return False
        self._started = True
        on_durable()
        return True

    def close(self) -> None:
        """Every chunk stored, counted and queued."""
        if self.pool is None:
            return
        self._drain()
        with self.cond:
            sends = list(self.sends)
        for f in sends:
            f.result()

    def abandon(self) -> None:
        if self.pool is not None:
            with self.cond:
                for _, _, put in self.window:
                    put.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
