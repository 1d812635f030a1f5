"""`results` and `failures`: a job's output rows and its failed items, on the terminal or in a
file, through the Python API (`Job.dataset`, `Job.failures`).

Without `--to` or `--format` they show a preview table of the first `--limit` rows; with
`--format` alone they write that format to stdout; with `--to PATH` they write the file (its
format from `--format`, else from PATH's extension) to a temporary name beside it, renamed into
place at the end, so a failed write leaves nothing half-written. Both stream batch by batch
(the output's row groups, the failure manifests' records): a large output is never loaded whole.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from slurmctl.api import Job, check_error_types
from slurmctl.cli import Env, cli, pass_env
from slurmctl.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("parquet", "csv", "jsonl")
EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
PREVIEW_ROWS = 20


def _format_of(to: Path | None, given: str | None) -> str | None:
    if given is not None or to is None:
        return given
    found = EXTENSIONS.get(to.suffix.lower())
    if found is None:
        raise UserError(
            f"--to {to}: cannot tell the format from the extension {to.suffix or '(none)'!r}; "
            f"give --format ({'|'.join(FORMATS)}) or end the name in "
            f"{', '.join(EXTENSIONS)}"
        )
    return found


def _limited(batches: Iterable[pa.RecordBatch], limit: int | None) -> Iterator[pa.RecordBatch]:
    left = limit
    for batch in batches:
        if left is not None:
            if left <= 0:
                return
            batch = batch.slice(0, left)
            left -= batch.num_rows
        yield batch


def _write(schema: pa.Schema, batches: Iterable[pa.RecordBatch], fmt: str, out: IO[bytes]) -> int:
    """The rows to out in fmt; returns how many."""
    import pyarrow as pa

    rows = 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(out, schema) as w:
            for b in batches:
                w.write_batch(b)
                rows += b.num_rows
        return rows
    if fmt == "csv":
        import pyarrow.csv as pcsv

        nested = [f.name for f in schema if pa.types.is_nested(f.type)]
        if nested:
            raise UserError(
                f"--format csv: column {nested[0]!r} is nested ({schema.field(nested[0]).type}); "
                "CSV has no such type: use --format jsonl or parquet"
            )
        with pcsv.CSVWriter(out, schema) as cw:
            for b in batches:
                cw.write_batch(b)
                rows += b.num_rows
        return rows
    for b in batches:
        for row in b.to_pylist():
            out.write(json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n")
        rows += b.num_rows
    return rows


def _emit(
    what: str,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    total: Callable[[], int],
    to: Path | None,
    fmt: str | None,
    limit: int | None,
) -> None:
    fmt = _format_of(to, fmt)
    if to is None and fmt is None:
        _preview(what, schema, _limited(batches, limit or PREVIEW_ROWS), total)
        return
    assert fmt is not None
    chosen = _limited(batches, limit)
    if to is None:
        if fmt == "parquet" and sys.stdout.isatty():
            raise UserError("--format parquet: binary output to a terminal; give --to PATH")
        sys.stdout.flush()
        _write(schema, chosen, fmt, sys.stdout.buffer)
        return
    tmp = to.with_name(f".{to.name}.part-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            rows = _write(schema, chosen, fmt, f)
        os.replace(tmp, to)
    except OSError as e:
        raise UserError(f"--to {to}: cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f"{rows} {what} written to {to} ({fmt})")


def _preview(
    what: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], total: Callable[[], int]
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*schema.names)
    shown = 0
    for b in batches:
        for row in b.to_pylist():
            table.add_row(*(_cell(v) for v in row.values()))
            shown += 1
    Console().print(table)
    count = total()
    more = "; --to PATH or --format writes them all" if shown < count else ""
    click.echo(f"{shown} of {count} {what} shown{more}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


TO = click.Path(path_type=Path, dir_okay=False)


@cli.command("results")
@click.argument("job_id")
@click.option("--to", "to", type=TO, default=None, help="Write the rows to this file.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Output format.")
@click.option("--limit", type=click.IntRange(0), default=None, help="At most N rows.")
@click.option(
    "--verify", is_flag=True, help="Check every output file against its sha256 (then stop)."
)
@pass_env
def results_cmd(
    env: Env, job_id: str, to: Path | None, fmt: str | None, limit: int | None, verify: bool
) -> None:
    """The output rows of a COMPLETED job: a preview, or all of them to a file or stdout."""
    job = Job(job_id, env.backend, env.root)
    if verify:
        files = job.verify()
        rows = sum(f["rows"] for f in files)
        click.echo(f"job {job_id}: {len(files)} output files ({rows} rows) match their sha256")
        return
    ds = job.dataset()
    _emit("rows", ds.schema, ds.to_batches(), ds.count_rows, to, fmt, limit)


@cli.command("failures")
@click.argument("job_id")
@click.option("--errors", "errors", default=None, help="Only these error types (comma-separated).")
@click.option("--to", "to", type=TO, default=None, help="Write the failures to this file.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Output format.")
@click.option("--limit", type=click.IntRange(0), default=None, help="At most N rows.")
@pass_env
def failures_cmd(
    env: Env, job_id: str, errors: str | None, to: Path | None, fmt: str | None, limit: int | None
) -> None:
    """The items that failed for good (id, phase, error type, message, attempts, reason, ...),
    from the failure manifests of every phase."""
    types = check_error_types(errors) if errors is not None else None
    job = Job(job_id, env.backend, env.root)

    def total() -> int:  # for the preview's last line: the counts, or one more pass
        if types is None:
            return job.failure_count()
        return sum(b.num_rows for b in job.failure_batches(types))

    from slurmctl.observe.results import FAILURE_SCHEMA

    _emit("failures", FAILURE_SCHEMA(), job.failure_batches(types), total, to, fmt, limit)
