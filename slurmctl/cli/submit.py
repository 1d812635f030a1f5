"""`submit` and `try`: the commands that take a job definition file."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from slurmctl import secrets as secret_refs
from slurmctl.api import create
from slurmctl.backends.spec import BackendSpec
from slurmctl.backends.statestore import JobRecord
from slurmctl.cli import EXIT_FAILED, Env, cli, pass_env
from slurmctl.cli.progress import stderr
from slurmctl.cli.run import finished, print_outcome, run_job
from slurmctl.cli.stream import StreamingRun
from slurmctl.config import JobDefinition, load_job_definition
from slurmctl.coordinator.inputs import Part
from slurmctl.coordinator.scan import InputScanner, InputSource
from slurmctl.coordinator.submit import check_existing, open_input, plan
from slurmctl.errors import BackendUnavailable, ConfigError, UserError
from slurmctl.executors.slurm import preflight
from slurmctl.executors.slurm.limits import SiteLimits
from slurmctl.executors.slurm.limits import describe as describe_limits
from slurmctl.executors.slurm.limits import size as size_under
from slurmctl.output_schema import JobSchema, with_rules
from slurmctl.ratelimit import gcra
from slurmctl.worker.classify import classify
from slurmctl.worker.context import Context
from slurmctl.worker.handler import Handler, load_handler
from slurmctl.worker.inflight import EventLoop, call_hook, on_loop
from slurmctl.worker.output import encode, rows_of

CONFIG = click.Path(path_type=Path, dir_okay=False)


def _duration(seconds: float) -> str:
    s = round(seconds)
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
    )


@cli.command("submit")
@click.argument("config", type=CONFIG)
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; write nothing.")
@click.option(
    "--follow", is_flag=True, help="Wait for the end of a Slurm job (local always waits)."
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@pass_env
def submit_cmd(env: Env, config: Path, dry_run: bool, follow: bool, no_progress: bool) -> None:
    """Submit the job CONFIG defines, and run it (local executor: in the foreground)."""
    definition = load_job_definition(config)
    for name in secret_refs.unresolved_refs(definition.params):
        click.echo(f"note: params reference {name}; it must be set where the workers run", err=True)
    limits = preflight(definition)  # before anything is written: a refused job leaves nothing
    # behind
    if dry_run:
        existing = _existing(env, definition)  # a changed definition or input: refused here too
        p = plan(definition)
        click.echo(f"job {p.job_id} (dry run: nothing written)")
        if existing is not None:
            then = "report it" if existing.status.terminal else "carry on where it stopped"
            click.echo(
                f"  existing      {existing.status}, same definition and input: would {then}"
            )
        click.echo(f"  input lines   {p.lines}")
        click.echo(f"  items         {p.items}")
        reasons = ", ".join(f"{n} {k}" for k, n in sorted(p.reasons.items()))
        click.echo(f"  quarantined   {p.quarantined}" + (f" ({reasons})" if reasons else ""))
        click.echo(f"  batches       {p.batches} of up to {definition.batch_size} items")
        click.echo(f"  tasks         {p.batches}")
        click.echo(f"  workers       {p.workers} ({definition.executor} executor)")
        if limits is not None:
            _print_limits(limits, p.workers, definition)
        if p.shortest_s is not None:
            click.echo(
                f"  shortest run  {_duration(p.shortest_s)} at {p.rate:g} requests/s "
                "(one request per item)"
            )
        else:
            click.echo("  shortest run  no rate limit configured")
        click.echo(f"  throughput    {_reachable(definition)}")
        return
    job_id = env.job_id = definition.effective_job_id()
    stream = StreamingRun(env, progress=not no_progress, follow=follow)
    try:
        with _bytes_bar(not no_progress, "batching") as (on_size, on_bytes):
            backend = env.use(BackendSpec.for_definition(definition, env.root))
            stream.existed = backend.state.get_job(job_id) is not None
            _, result = create(
                backend,
                definition,
                env.root,
                progress=on_bytes,
                input_size=on_size,
                on_durable=stream.start,
                on_refused=stream.stop,
            )
        if stream.started:  # the workers run since the first tasks were durable
            if finished(stream.finish()):
                sys.exit(print_outcome(env, result.job_id))
            return
    except KeyboardInterrupt:
        stream.interrupted()
        raise
    except BaseException:  # e.g. a full disk: the workers it started stop at a checkpoint too
        stream.abort()
        raise
    job_id = result.job_id
    if not result.created:
        if result.status.terminal:
            click.echo(f"job {job_id} already {result.status}; `slurmctl status {job_id}` shows it")
            sys.exit(print_outcome(env, job_id))
        click.echo(f"job {job_id} exists: carrying on where it stopped")
    else:
        click.echo(f"job {job_id} submitted")
    if finished(run_job(env, job_id, progress=not no_progress, follow=follow)):
        sys.exit(print_outcome(env, job_id))


def _print_limits(limits: SiteLimits, workers: int, definition: JobDefinition) -> None:
    """The site's limits `submit` read, and what they cap in this job's workers."""
    for i, line in enumerate(describe_limits(limits)):
        click.echo(f"  {'slurm limits' if i == 0 else '':<13} {line}")
    sizing = size_under(workers, definition.slurm, limits)
    for i, note in enumerate(sizing.capped or ["nothing"]):
        click.echo(f"  {'capped' if i == 0 else '':<13} {note}")


def _reachable(definition: JobDefinition) -> str:
    """The items/s the definition can reach: workers x concurrency / expected latency, capped by
    the rate limit; without `expected_latency_s`, the rule."""
    w, n, latency = definition.workers, definition.concurrency, definition.expected_latency_s
    limit = definition.rate_limit.tokens_per_sec if definition.rate_limit else None
    if latency is None:
        return (
            f"{w} workers x concurrency {n} / the API's latency per item "
            "(set expected_latency_s to see the figure)"
        )
    reach = w * n / latency
    how = f"{w} workers x concurrency {n} / {latency:g} s expected latency = {reach:.4g} items/s"
    if limit is None:
        return f"{how} (no rate limit)"
    if reach >= limit:
        return f"{limit:g} items/s, the rate limit ({how})"
    need = math.ceil(limit * latency / w)
    return (
        f"{reach:.4g} items/s, {reach / limit:.0%} of the rate limit {limit:g}/s "
        f"({how}; concurrency {need} reaches it)"
    )


def _existing(env: Env, definition: JobDefinition) -> JobRecord | None:
    """For a dry run: the job already under this id (checked against this definition and
    input), without creating a state root or any AWS resource that is not there."""
    spec = BackendSpec.for_definition(definition, env.root)
    if spec.kind == "local" and not (env.root / "state.sqlite").exists():
        return None
    try:
        backend = env.use(spec)
    except BackendUnavailable:
        return None
    return check_existing(backend, definition, definition.effective_job_id())


class _bytes_bar:
    """A progress bar over the input's bytes while batching (a terminal only)."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self.progress: Any = None
        self.task: Any = None
        self.pending = 0

    def __enter__(self) -> tuple[Any, Any]:
        if not self.enabled:
            return None, None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=stderr,
            transient=True,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=None)

        def on_size(size: int) -> None:
            self.progress.update(self.task, total=size)

        def on_bytes(n: int) -> None:
            self.pending += n
            if self.pending >= 1 << 20:
                self.progress.advance(self.task, self.pending)
                self.pending = 0

        return on_size, on_bytes

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)


class _LocalPacer:
    """`try` writes no state: the rate limit is kept in memory, with the same arithmetic."""

    def __init__(self, rate: float | None, burst: int) -> None:
        self.rate, self.burst, self.tat = rate, burst, 0.0
        self.lock = threading.Lock()  # items in flight on threads share it

    def __call__(self, n: int, bucket: str | None) -> float:
        if not self.rate:
            return 0.0
        with self.lock:
            times, self.tat = gcra.reserve(self.tat, time.time(), n, self.rate, self.burst)
        wait = max(0.0, times[-1] - time.time())
        time.sleep(wait)
        return wait


@cli.command("try")
@click.argument("config", type=CONFIG)
@click.option("--items", "count", default=5, show_default=True, type=click.IntRange(1))
@pass_env
def try_cmd(env: Env, config: Path, count: int) -> None:
    """Run the handler on the first items of the input, in this process; write no state.

    Checks what `submit` and the workers would: the id field, the secrets, the return of
    `process` (a row, a list of rows or None; a coroutine only from an `async def process`)
    and the column types across the tried items. Items run as on a worker: `concurrency` of
    them in flight, on threads or on an event loop for an `async def process`. Exits 1 when
    any tried item failed, 2 on a user's mistake."""
    import tempfile

    definition = load_job_definition(config)
    handler = load_handler(definition.handler, definition.config_dir)
    try:
        params = secret_refs.resolve(definition.params, base_dir=definition.config_dir)
    except UserError as e:
        raise ConfigError(f"{config}: {e}") from None
    hidden = secret_refs.collect_secret_values(definition.params, base_dir=definition.config_dir)
    limit = definition.rate_limit
    pacer = _LocalPacer(limit.tokens_per_sec if limit else None, limit.burst if limit else 1)
    ctx = Context(params, pacer, logging.getLogger("slurmctl.handler"), "try", "try")
    source = _FirstLines(open_input(definition), count + TRY_LOOKAHEAD)
    columns = _TriedColumns(definition)
    ok = failed = 0
    loop = EventLoop(definition.concurrency) if handler.needs_loop else None
    try:
        if handler.setup is not None:
            call_hook(handler.setup, ctx, loop)
        try:
            with tempfile.TemporaryDirectory(prefix="slurmctl-try-") as tmp:
                scanner = InputScanner(source, definition.id_field, Path(tmp), None)
                items = []
                for n, line in enumerate(scanner.items()):
                    if n >= count:
                        break
                    items.append(json.loads(line))
                results = _run_tried(handler, items, ctx, definition.concurrency, loop)
                for item, (out, exc) in zip(items, results, strict=True):
                    item_id = str(item[definition.id_field])
                    kind, text = _judge(out, exc, item_id, definition, columns)
                    if kind == "ok":
                        ok += 1
                    else:
                        failed += 1
                    click.echo(f"{item_id}\t{kind}\t{secret_refs.redact(text, hidden)}")
                _check_id_field(config, definition.id_field, scanner, source, ok + failed)
        finally:
            if handler.teardown is not None:
                call_hook(handler.teardown, ctx, loop)
    finally:
        if loop is not None:
            loop.close()
    click.echo(f"{ok} ok, {failed} failed; metrics {json.dumps(ctx.metrics.snapshot())}")
    if failed:
        sys.exit(EXIT_FAILED)


Tried = tuple[Any, Exception | None]
"""What `process` returned for an item, or what it raised."""


def _call(process: Any, item: dict[str, Any], ctx: Context) -> Tried:
    try:
        return process(item, ctx), None
    except Exception as exc:  # noqa: BLE001 - shown to the user, classified
        return None, exc


async def _call_async(process: Any, item: dict[str, Any], ctx: Context) -> Tried:
    try:
        return await process(item, ctx), None
    except Exception as exc:  # noqa: BLE001 - shown to the user, classified
        return None, exc


def _run_tried(
    handler: Handler,
    items: list[dict[str, Any]],
    ctx: Context,
    width: int,
    loop: EventLoop | None,
) -> list[Tried]:
    """The items run as a worker runs them: one by one, on `width` threads, or `width` of them
    in flight on the event loop for an `async def process`; results in input order."""
    process = handler.process
    if handler.is_async:
        assert loop is not None
        gate = asyncio.Semaphore(width)

        async def one(item: dict[str, Any]) -> Tried:
            async with gate:
                return await _call_async(process, item, ctx)

        async def every() -> list[Tried]:
            return list(await asyncio.gather(*(one(item) for item in items)))

        return on_loop(loop, ctx, every())
    if width == 1:
        return [_call(process, item, ctx) for item in items]
    ctx.metrics.make_threadsafe()
    with cf.ThreadPoolExecutor(max_workers=width, thread_name_prefix="slurmctl-item") as pool:
        return list(pool.map(lambda item: _call(process, item, ctx), items))


def _judge(
    out: Any,
    exc: Exception | None,
    item_id: str,
    definition: JobDefinition,
    columns: _TriedColumns,
) -> tuple[str, str]:
    """("ok", the rows as JSON) or (the failure's type, its message), as the worker would: the
    worker's contract check (a ContractViolation is `validation`) and its encoding under the
    output schema, which the tried items fix and widen as committed tasks would."""
    if exc is None:
        try:
            rows = rows_of(out, definition.id_field, item_id)
        except Exception as e:  # noqa: BLE001 - a ContractViolation, shown to the user
            exc = e
    if exc is not None:
        c = classify(exc, definition.error_rules)
        return f"{c.type}{' (permanent)' if c.permanent else ''}", c.message
    conflict = columns.add(rows, f"item {item_id}")
    if conflict is not None:
        return "schema (permanent)", conflict
    return "ok", json.dumps(out, default=str)


TRY_LOOKAHEAD = 1000
"""`try` reads at most this many lines past the items it tries (bad lines are skipped)."""


class _TriedColumns:
    """The output schema as the tried items fix it (`output.schema` pins included)."""

    def __init__(self, definition: JobDefinition) -> None:
        self.pins = definition.output.pins()
        self.id_field = definition.id_field
        self.schema = with_rules(JobSchema(), self.pins, self.id_field)

    def add(self, rows: list[dict[str, Any]], who: str) -> str | None:
        """None when the rows fit (the schema widened by them); else the `schema` message."""
        if not rows:
            return None
        encoded = encode(rows, [0] * len(rows), self.schema, self.pins, self.id_field, who)
        if encoded.failed:
            return next(iter(encoded.failed.values()))
        self.schema = encoded.schema
        return None


class _FirstLines:
    """The input's first lines (or rows) only: `try` never reads a whole large input."""

    def __init__(self, source: InputSource, limit: int) -> None:
        self.source, self.limit = source, limit
        self.name = source.name
        self.first: bytes | None = None
        self.files = list(getattr(source, "files", ()))
        self._read = 0

    def size(self) -> int:
        return self.source.size()

    def lines(self) -> Iterator[bytes]:
        return self._first(self.source.lines())

    def parts(self, work_dir: Path, id_field: str, tap: Any = None) -> Iterator[Part]:
        of = getattr(self.source, "parts", None)
        if of is None:
            yield Part(self.name, "line", lines=self.lines())
            return
        for part in of(work_dir, id_field, tap):
            if part.lines is not None:
                part.lines = self._first(part.lines)
            elif part.rows is not None:
                part.rows = self._first(part.rows)
            yield part

    def _first(self, records: Iterator[Any]) -> Iterator[Any]:
        try:
            for record in records:
                if self._read >= self.limit:
                    return
                self._read += 1
                if self.first is None and isinstance(record, bytes) and record.strip():
                    self.first = record
                yield record
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()


def _check_id_field(
    config: Path, id_field: str, scanner: InputScanner, source: _FirstLines, tried: int
) -> None:
    """No item to try because no line has the id field: the definition's mistake (exit 2)."""
    if tried or not scanner.stats.reasons.get("missing id"):
        return
    keys = ""
    try:
        first = json.loads(source.first or b"")
        if isinstance(first, dict):
            keys = f" (the first line has {', '.join(map(str, first)) or 'no keys'})"
    except ValueError:
        pass
    raise ConfigError(
        f"{config}: id_field: no usable {id_field!r} field in the first "
        f"{scanner.stats.lines} input lines{keys}"
    )
