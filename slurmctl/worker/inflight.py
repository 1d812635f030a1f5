"""Several items of one task in flight (`concurrency: N`, README "Concurrency inside a worker").

An I/O-bound handler spends its time waiting on the API: one worker keeps N items in flight
instead of one, on a pool of N threads for a sync `process`, or on the worker's one asyncio event
loop (on a thread of its own) for an `async def process`. What holds for one item holds for N
because only the handler's call leaves the task's thread: the task's thread takes items in input
order, starts one whenever the worker's window has a free slot and the task may go on (no stop,
no lost lease, the breaker closed), and records every finished item itself, in completion order,
by its line index. So the checkpoint, the breaker and the rate limiter's throttle reports are fed
from the task's thread, as in the sequential loop; an item counts as done only once the
checkpoint holds it, and a killed worker redoes at most the items in flight plus
`checkpoint_every`. A stop lets the items in flight finish (or stop inside `ctx.acquire`) and
starts none.

The window (`Window`: N slots) belongs to the worker, not to a task: once every item of a task
has started, the task calls `on_drain` (the worker claims its next task, worker/prefetch.py), and
the next task's items take the slots its last ones free, so the API never waits for a task's
tail, its commit and the next claim.

`run_in_flight` is a task's item loop here. N = 1 with a sync `process` never comes here:
task.py's per-item loop is the hot path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from slurmctl.fastjson import loads_for
from slurmctl.secrets import redact
from slurmctl.worker.checkpoint import Checkpoint, Row
from slurmctl.worker.classify import Rule, classify
from slurmctl.worker.context import Context
from slurmctl.worker.handler import Handler
from slurmctl.worker.limiter import WorkerStopping
from slurmctl.worker.output import rows_of

T = TypeVar("T")

Result = tuple[list[dict[str, Any]] | None, BaseException | None]
"""An item's output rows, or the exception it failed with (a WorkerStopping: it did not run to
its end, and is not recorded)."""
Todo = tuple[int, dict[str, Any], str]
"""(line index, item, item id)."""
Started = Callable[[Todo], "cf.Future[Result]"]
"""Starts one item (on the pool, or on the loop): its future."""


class EventLoop:
    """The worker's one asyncio event loop, on a thread of its own: `async def` setup, process
    and teardown run on it, whichever thread of the worker starts them (the tasks in hand start
    their items from their own threads). Its default executor (what `ctx.acquire_async` and a
    handler's `asyncio.to_thread` use) has a thread per item in flight."""

    def __init__(self, width: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(
            cf.ThreadPoolExecutor(max_workers=max(width, 4), thread_name_prefix="slurmctl-aio")
        )
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="slurmctl-loop", daemon=True
        )
        self._thread.start()
        self.thread_id: int = self._thread.ident or 0

    def submit(self, aw: Coroutine[Any, Any, T]) -> cf.Future[T]:
        return asyncio.run_coroutine_threadsafe(aw, self.loop)

    def run(self, aw: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await aw

        return self.submit(wrapped()).result()

    def close(self) -> None:
        try:
            self.submit(self.loop.shutdown_default_executor()).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()


def call_hook(hook: Callable[[Context], object], ctx: Context, loop: EventLoop | None) -> None:
    """`setup(ctx)` or `teardown(ctx)`, awaited on the loop when it is `async def`."""
    result = hook(ctx)
    if loop is not None and inspect.isawaitable(result):
        on_loop(loop, ctx, result)


def on_loop(loop: EventLoop, ctx: Context, aw: Awaitable[T]) -> T:
    """Run aw on the loop; a blocking `ctx.acquire()` from the loop's thread is refused (it
    would stall every item in flight)."""
    ctx.loop_thread = loop.thread_id
    return loop.run(aw)


def call_sync(
    process: Callable[..., Any], item: dict[str, Any], ctx: Context, id_field: str, item_id: str
) -> Result:
    try:
        return rows_of(process(item, ctx), id_field, item_id), None
    except WorkerStopping as stop:
        return None, stop
    except Exception as exc:  # noqa: BLE001 - classified by the recording thread
        return None, exc


async def call_async(
    process: Callable[..., Coroutine[Any, Any, Any]],
    item: dict[str, Any],
    ctx: Context,
    id_field: str,
    item_id: str,
) -> Result:
    try:
        return rows_of(await process(item, ctx), id_field, item_id), None
    except WorkerStopping as stop:
        return None, stop
    except Exception as exc:  # noqa: BLE001 - classified by the recording thread
        return None, exc


class Window:
    """The worker's N item slots, shared by its tasks in hand (the one whose last items are in
    flight and the next one), and the figures `status` shows: the items in flight over time
    and each item's latency. Thread-safe: every task's thread and the items' callbacks use it."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.cond = threading.Condition()
        self.free = width
        self.items = 0
        self.item_s = 0.0
        """Items finished, and the sum of their latencies (start to finish)."""
        self.area_s = 0.0
        self.occupied_s = 0.0
        """Integral of the items in flight over time, and the time with at least one."""
        self._since = time.monotonic()

    def _tick(self, now: float) -> None:
        """Called under the lock before the count of items in flight changes."""
        held = self.width - self.free
        if held:
            self.area_s += held * (now - self._since)
            self.occupied_s += now - self._since
        self._since = now

    def busy(self) -> bool:
        """Items of some task are in flight."""
        with self.cond:
            return self.free < self.width

    def take_figures(self) -> tuple[int, float, float, float]:
        """(items, item seconds, in-flight area, occupied seconds) since the last take."""
        with self.cond:
            self._tick(time.monotonic())
            out = (self.items, self.item_s, self.area_s, self.occupied_s)
            self.items, self.item_s, self.area_s, self.occupied_s = 0, 0.0, 0.0, 0.0
        return out


class Lane:
    """One task's items in the worker's window."""

    def __init__(self, window: Window, width: int) -> None:
        self.window, self.width = window, width
        self.count = 0
        self.finished: list[tuple[Todo, cf.Future[Result]]] = []
        self.futures: set[cf.Future[Result]] = set()

    def next_event(self, want_slot: bool) -> tuple[list[tuple[Todo, cf.Future[Result]]], bool]:
        """Block until a slot is free (taken, when `want_slot`: returns True) or items of this
        task finished (returned); returns ([], False) when nothing is in flight or wanted."""
        w = self.window
        with w.cond:
            while True:
                if want_slot and w.free > 0 and self.count < self.width:
                    w._tick(time.monotonic())
                    w.free -= 1
                    self.count += 1
                    return [], True
                if self.finished:
                    out, self.finished = self.finished, []
                    return out, False
                if not want_slot and self.count == 0:
                    return [], False
                w.cond.wait()

    def give_back(self) -> None:
        with self.window.cond:
            self.window._tick(time.monotonic())
            self.window.free += 1
            self.count -= 1
            self.window.cond.notify_all()

    def started(self, one: Todo, fut: cf.Future[Result]) -> None:
        t0 = time.monotonic()
        self.futures.add(fut)

        def done(f: cf.Future[Result]) -> None:
            w = self.window
            with w.cond:
                now = time.monotonic()
                w._tick(now)
                w.free += 1
                w.items += 1
                w.item_s += now - t0
                self.count -= 1
                self.finished.append((one, f))
                w.cond.notify_all()

        fut.add_done_callback(done)


class Recorder:
    """Records finished items into the task's checkpoint: called from the task's thread only
    (the breaker and the limiter's reports under the worker's lock, shared by its tasks)."""

    def __init__(
        self,
        ckpt: Checkpoint,
        ctx: Context,
        *,
        every: int,
        min_interval_s: float,
        is_lost: Callable[[], bool],
        isolate: bool,
        on_ok: Callable[[], None],
        on_failed: Callable[[str, BaseException], None],
        rules: Sequence[Rule],
        secrets: Sequence[str],
        lock: threading.Lock,
    ) -> None:
        self.ckpt, self.ctx, self.every, self.min_interval_s = ckpt, ctx, every, min_interval_s
        self.is_lost, self.isolate = is_lost, isolate
        self.on_ok, self.on_failed, self.rules, self.secrets = on_ok, on_failed, rules, secrets
        self.lock = lock
        self.pending: list[Row] = []
        self.last_write = time.monotonic()
        self.stopped = False

    def record(self, todo: Todo, result: Result) -> None:
        idx, _, item_id = todo
        rows, exc = result
        if isinstance(exc, WorkerStopping):
            self.stopped = True  # not run to its end: the next attempt runs it
            return
        if exc is None:
            self.pending.append((idx, item_id, True, rows, None, None, None))
            with self.lock:
                self.on_ok()
        else:
            c = classify(exc, self.rules)
            with self.lock:
                self.ctx.note_error(c.type, exc)  # a `throttled` one slows the job's limiter
                self.on_failed(c.type, exc)  # the circuit breaker's window
            message = redact(c.message, self.secrets)
            sig = redact(c.signature, self.secrets)
            self.pending.append((idx, item_id, False, None, c.type, message, sig))
        if (
            self.isolate
            or (
                len(self.pending) >= self.every
                and time.monotonic() - self.last_write >= self.min_interval_s
            )
        ) and not self.is_lost():
            self.ckpt.write(self.pending)
            self.pending = []
            self.last_write = time.monotonic()

    def finish(self) -> None:
        """The tail goes to disk only if the task stops now; a lost lease writes nothing more."""
        if not self.is_lost():
            self.ckpt.write(self.pending, durable=self.stopped)


def run_window(
    lane: Lane,
    todo: Iterator[Todo],
    may_start: Callable[[], bool],
    start: Started,
    recorder: Recorder,
    on_drain: Callable[[], None],
) -> int:
    """The task's items through the worker's window, recorded as they finish; `on_drain` once
    every item has started (not after a stop). Returns how many were started."""
    started = 0
    nxt = next(todo, None)
    try:
        while True:
            if nxt is not None and (recorder.stopped or not may_start()):
                recorder.stopped, nxt = True, None
            finished, slot = lane.next_event(nxt is not None)
            if slot and nxt is not None:
                if recorder.stopped or not may_start():  # the wait for a slot may be long
                    lane.give_back()
                    recorder.stopped, nxt = True, None
                    continue
                try:
                    if recorder.isolate:
                        recorder.ckpt.begin_item(nxt[0])
                    fut = start(nxt)
                except BaseException:
                    lane.give_back()  # the slot stays the worker's for its next task
                    raise
                lane.started(nxt, fut)
                started += 1
                nxt = next(todo, None)
                if nxt is None:
                    on_drain()
            for one, fut in finished:
                lane.futures.discard(fut)
                recorder.record(one, fut.result())
            if not slot and not finished:
                return started  # nothing in flight, nothing to start
    finally:  # an error of slurmctl's own (a checkpoint write): no item outlives its attempt
        for fut in lane.futures:
            fut.cancel()  # an item on the loop stops; one on a thread runs to its end
        cf.wait(lane.futures)


def run_in_flight(
    lines: list[bytes],
    done: set[int],
    ckpt: Checkpoint,
    lost: threading.Event,
    *,
    isolate: bool,
    handler: Handler,
    ctx: Context,
    id_field: str,
    window: Window,
    checkpoint_every: int,
    should_stop: Callable[[], bool],
    on_ok: Callable[[], None],
    on_failed: Callable[[str, BaseException], None],
    on_drain: Callable[[], None],
    rules: Sequence[Rule],
    secrets: Sequence[str],
    lock: threading.Lock,
    loop: EventLoop | None,
    pool: Callable[[], cf.ThreadPoolExecutor],
) -> tuple[int, bool]:
    """A task's items not in its checkpoint, up to the window's width in flight (one while
    isolating), on the worker's event loop for an `async def process`, else on `pool()`'s
    threads; returns (calls, stopped)."""
    recorder = Recorder(
        ckpt,
        ctx,
        every=checkpoint_every,
        min_interval_s=0.0,  # the bound the docs give: in flight + checkpoint_every
        is_lost=lost.is_set,
        isolate=isolate,
        on_ok=on_ok,
        on_failed=on_failed,
        rules=rules,
        secrets=secrets,
        lock=lock,
    )
    loads = loads_for(b"\n".join(lines))
    process = handler.process

    def todo() -> Iterator[Todo]:
        for idx, line in enumerate(lines):
            if idx not in done:
                item = loads(line)
                yield idx, item, str(item[id_field])

    def may_start() -> bool:
        return not (should_stop() or lost.is_set())

    start: Started
    if handler.is_async:
        assert loop is not None
        ctx.loop_thread = loop.thread_id

        def start(one: Todo) -> cf.Future[Result]:
            return loop.submit(call_async(process, one[1], ctx, id_field, one[2]))

    else:
        threads = pool()

        def start(one: Todo) -> cf.Future[Result]:
            return threads.submit(call_sync, process, one[1], ctx, id_field, one[2])

    lane = Lane(window, 1 if isolate else window.width)
    calls = run_window(lane, todo(), may_start, start, recorder, on_drain)
    recorder.finish()
    return calls, recorder.stopped
