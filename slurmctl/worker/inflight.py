"""Several items of one task in flight (`concurrency: N`, README "Concurrency inside a worker").

An I/O-bound handler spends its time waiting on the API: one worker keeps N items in flight
instead of one, on a pool of N threads for a sync `process`, or on the worker's one asyncio event
loop for an `async def process`. What holds for one item holds for N because only the handler's
call leaves the task's thread: the task's thread takes items in input order, starts one whenever
fewer than N are in flight and the task may go on (no stop, no lost lease, the breaker closed),
and records every finished item itself, in completion order, by its line index. So the
checkpoint, the breaker and the rate limiter's throttle reports are fed from that one thread, as
in the sequential loop; an item counts as done only once the checkpoint holds it, and a killed
worker redoes at most the items in flight plus `checkpoint_every`. A stop lets the items in
flight finish (or stop inside `ctx.acquire`) and starts none.

`run_in_flight` is a task's item loop here. N = 1 with a sync `process` never comes here:
task.py's per-item loop is the hot path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
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


class EventLoop:
    """The worker's one asyncio event loop: `async def` setup, process and teardown run on it, in
    the thread that runs the worker's tasks. Its default executor (what `ctx.acquire_async` and a
    handler's `asyncio.to_thread` use) has a thread per item in flight."""

    def __init__(self, width: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(
            cf.ThreadPoolExecutor(max_workers=max(width, 4), thread_name_prefix="slurmctl-aio")
        )

    def run(self, aw: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await aw

        return self.loop.run_until_complete(wrapped())

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()


def call_hook(hook: Callable[[Context], object], ctx: Context, loop: EventLoop | None) -> None:
    """`setup(ctx)` or `teardown(ctx)`, awaited on the loop when it is `async def`."""
    result = hook(ctx)
    if loop is not None and inspect.isawaitable(result):
        on_loop(loop, ctx, result)


def on_loop(loop: EventLoop, ctx: Context, aw: Awaitable[T]) -> T:
    """Run aw on the loop; meanwhile a blocking `ctx.acquire()` from the loop's thread is
    refused (it would stall every item in flight)."""
    ctx.loop_thread = threading.get_ident()
    try:
        return loop.run(aw)
    finally:
        ctx.loop_thread = None


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


class Recorder:
    """Records finished items into the task's checkpoint: called from the task's thread only."""

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
    ) -> None:
        self.ckpt, self.ctx, self.every, self.min_interval_s = ckpt, ctx, every, min_interval_s
        self.is_lost, self.isolate = is_lost, isolate
        self.on_ok, self.on_failed, self.rules, self.secrets = on_ok, on_failed, rules, secrets
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
            self.on_ok()
        else:
            c = classify(exc, self.rules)
            self.ctx.note_error(c.type, exc)  # a `throttled` one slows the job's rate limiter
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


def run_threads(
    pool: cf.ThreadPoolExecutor,
    width: int,
    todo: Iterable[Todo],
    may_start: Callable[[], bool],
    call: Callable[[dict[str, Any], str], Result],
    recorder: Recorder,
) -> int:
    """Up to `width` items in flight on the pool; returns how many were started."""
    inflight: dict[cf.Future[Result], Todo] = {}
    started = 0

    def collect() -> None:
        done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            recorder.record(inflight.pop(fut), fut.result())

    for one in todo:
        while len(inflight) >= width:
            collect()
        if recorder.stopped or not may_start():
            recorder.stopped = True
            break
        if recorder.isolate:
            recorder.ckpt.begin_item(one[0])
        inflight[pool.submit(call, one[1], one[2])] = one
        started += 1
    while inflight:
        collect()
    return started


async def run_async(
    width: int,
    todo: Iterable[Todo],
    may_start: Callable[[], bool],
    call: Callable[[dict[str, Any], str], Coroutine[Any, Any, Result]],
    recorder: Recorder,
) -> int:
    """Up to `width` items in flight on the running loop; returns how many were started."""
    inflight: dict[asyncio.Future[Result], Todo] = {}
    started = 0

    async def collect() -> None:
        done, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
        for fut in done:
            recorder.record(inflight.pop(fut), fut.result())

    try:
        for one in todo:
            while len(inflight) >= width:
                await collect()
            if recorder.stopped or not may_start():
                recorder.stopped = True
                break
            if recorder.isolate:
                recorder.ckpt.begin_item(one[0])
            inflight[asyncio.ensure_future(call(one[1], one[2]))] = one
            started += 1
        while inflight:
            await collect()
    finally:  # an error of slurmctl's own (a checkpoint write): no item outlives its attempt
        for fut in inflight:
            fut.cancel()
        if inflight:
            await asyncio.wait(inflight)
    return started


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
    concurrency: int,
    checkpoint_every: int,
    should_stop: Callable[[], bool],
    on_ok: Callable[[], None],
    on_failed: Callable[[str, BaseException], None],
    rules: Sequence[Rule],
    secrets: Sequence[str],
    loop: EventLoop | None,
    pool: Callable[[], cf.ThreadPoolExecutor],
) -> tuple[int, bool]:
    """A task's items not in its checkpoint, up to `concurrency` in flight (one while
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

    width = 1 if isolate else concurrency
    if handler.is_async:
        assert loop is not None
        calls = on_loop(
            loop,
            ctx,
            run_async(
                width,
                todo(),
                may_start,
                lambda item, item_id: call_async(process, item, ctx, id_field, item_id),
                recorder,
            ),
        )
    else:
        calls = run_threads(
            pool(),
            width,
            todo(),
            may_start,
            lambda item, item_id: call_sync(process, item, ctx, id_field, item_id),
            recorder,
        )
    recorder.finish()
    return calls, recorder.stopped
