"""The scratch checkpoint: a SQLite file per attempt so a resumed task skips the items done.

Written in chunks (`checkpoint_every` items per row and transaction, no fsync): a worker killed
mid-batch redoes at most one chunk. The file is created on the first durable write only: a task
that finishes before its first checkpoint is due (a fast handler) never touches SQLite, its rows
go from memory to the output. It can be uploaded to the object store when a worker is preempted.

Each file belongs to one attempt and says so: its `stamp` table records the job, the batch's
sha256 and the attempt's lease token, and a file whose stamp is not the attempt's is refused. A
later attempt takes over an earlier one's rows only by `adopt`, which copies them into its own
file after checking the job and the batch (so a leftover of another job with the same id, or of
another batch, is never trusted). Nothing is unpickled: the item outcomes are JSON and the output
rows an Arrow IPC stream of every key of every row (`worker/output.py`'s `table_of`), the types
the output's Parquet stores. An output value Arrow cannot
store fails its item as `schema` (permanent) instead of the whole attempt.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from slurmctl.errors import IntegrityError
from slurmctl.scratch import create_private
from slurmctl.worker.output import signature, table_of, why_unstorable

# (line index, item id, ok, output rows or None, error type, message, signature)
Row = tuple[int, str, bool, list[dict[str, Any]] | None, str | None, str | None, str | None]

UNSTORABLE = (pa.ArrowException, OverflowError, TypeError, ValueError, UnicodeError)
"""What Arrow raises for a value it cannot store."""


class CheckpointRefused(IntegrityError):
    """A checkpoint file stamped for another job, batch or attempt."""


@dataclass(frozen=True)
class Stamp:
    job: str
    """The job's identity beyond its id (its creation time): a new job with the same id differs."""
    batch_sha256: str
    attempt: str
    """The lease token of the attempt that writes the file."""


def to_table(rows: Sequence[Row]) -> tuple[pa.Table, list[Row]]:
    """The output rows of `rows` as one table; items whose rows Arrow cannot store (alone, or
    beside the items before them: the first item of a column decides its type) become `schema`
    failures in the returned rows."""
    results = [r for row in rows if row[2] and row[3] for r in row[3]]
    try:
        return table_of(results), list(rows)
    except UNSTORABLE:
        pass
    kept: list[dict[str, Any]] = []
    out: list[Row] = []
    for row in rows:
        if row[2] and row[3]:
            problem = _unstorable([*kept, *row[3]])
            if problem is not None:
                out.append(_schema_failure(row, problem))
                continue
            kept.extend(row[3])
        out.append(row)
    return table_of(kept), out


def _runs(rows: Sequence[Row]) -> list[tuple[pa.Table, list[Row]]]:
    """`rows` in consecutive runs whose outputs fit one table each: a checkpoint keeps what a
    type conflict between items would refuse, so that the output decides it for the whole task
    (as `to_table` does from memory); an item that no table can hold fails as `schema` here."""
    results = [r for row in rows if row[2] and row[3] for r in row[3]]
    try:
        return [(table_of(results), list(rows))]
    except UNSTORABLE:
        pass
    runs: list[tuple[list[dict[str, Any]], list[Row]]] = [([], [])]
    for row in rows:
        if row[2] and row[3]:
            problem = _unstorable(row[3])
            if problem is not None:
                runs[-1][1].append(_schema_failure(row, problem))
                continue
            if _unstorable([*runs[-1][0], *row[3]]) is not None:
                runs.append(([], []))
            runs[-1][0].extend(row[3])
        runs[-1][1].append(row)
    return [(table_of(results), part) for results, part in runs if part]


def _unstorable(results: list[dict[str, Any]]) -> str | None:
    try:
        table_of(results)  # every key of every row (worker/output.py)
    except UNSTORABLE as e:
        return why_unstorable(results) or f"output value cannot be stored: {type(e).__name__}: {e}"
    return None


def _schema_failure(row: Row, message: str) -> Row:
    return (row[0], row[1], False, None, "schema", message, signature(message))


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _decode(outcomes: bytes, blob: bytes | None) -> list[Row]:
    results = pa.ipc.open_stream(blob).read_all().to_pylist() if blob else []
    rows: list[Row] = []
    at = 0
    for idx, item_id, ok, n, etype, message, sig in orjson.loads(outcomes):
        rows.append((idx, item_id, ok, results[at : at + n] if ok else None, etype, message, sig))
        at += n
    return rows


class Checkpoint:
    def __init__(
        self, path: Path, stamp: Stamp, make_parent: Callable[[], object] | None = None
    ) -> None:
        self.path = path
        self.stamp = stamp
        self._make_parent = make_parent or (lambda: path.parent.mkdir(parents=True, exist_ok=True))
        self._conn: sqlite3.Connection | None = None
        self._memory: list[Row] = []
        if path.exists():
            try:
                found = read_stamp(self._db())
            except sqlite3.DatabaseError as e:
                self.close()
                raise CheckpointRefused(
                    f"checkpoint {path}: not a checkpoint ({e}): refused"
                ) from None
            if found != stamp:
                self.close()
                raise CheckpointRefused(
                    f"checkpoint {path} is stamped {found}, not {stamp}: refused"
                )

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            fresh = not self.path.exists()
            if fresh:
                self._make_parent()
                create_private(self.path)  # 0600, no symlink followed; SQLite's -wal inherits it
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")  # a commit appends: no journal file churn
            conn.execute("PRAGMA synchronous=OFF")  # survives the process dying, not the node
            conn.execute(
                "CREATE TABLE IF NOT EXISTS chunks (first INTEGER PRIMARY KEY, outcomes BLOB, "
                "rows BLOB)"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS inflight (idx INTEGER PRIMARY KEY)")
            conn.execute("CREATE TABLE IF NOT EXISTS stamp (job, batch_sha256, attempt)")
            if fresh:
                s = self.stamp
                conn.execute(
                    "INSERT INTO stamp VALUES (?, ?, ?)", (s.job, s.batch_sha256, s.attempt)
                )
            self._conn = conn
        return self._conn

    def adopt(self, source: Path) -> bool:
        """Take over the rows of an earlier attempt's file (uploaded, or left on this node);
        False (nothing taken) when it is not this job's checkpoint of this batch."""
        try:
            src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        except sqlite3.Error:
            return False
        try:
            found = read_stamp(src)
            if found is None or (found.job, found.batch_sha256) != (
                self.stamp.job,
                self.stamp.batch_sha256,
            ):
                return False
            conn = self._db()
            conn.execute("BEGIN")
            conn.execute("DELETE FROM chunks")
            conn.execute("DELETE FROM inflight")
            conn.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?)",
                src.execute("SELECT first, outcomes, rows FROM chunks"),
            )
            conn.executemany(
                "INSERT INTO inflight VALUES (?)", src.execute("SELECT idx FROM inflight")
            )
            conn.execute("COMMIT")
            return True
        except sqlite3.Error:
            return False
        finally:
            src.close()

    def rows(self) -> Iterator[Row]:
        if self._conn is not None:
            for outcomes, blob in self._conn.execute(
                "SELECT outcomes, rows FROM chunks ORDER BY first"
            ):
                yield from _decode(outcomes, blob)
        yield from self._memory

    def done(self) -> set[int]:
        return {row[0] for row in self.rows()}

    def write(self, rows: Sequence[Row], *, durable: bool = True) -> list[Row]:
        """Record rows; durable ones survive the worker dying, the others only feed the output.
        Returns the rows recorded (an unstorable output turned into a `schema` failure)."""
        if not durable:
            self._memory.extend(rows)
            return list(rows)
        rows = [*self._memory, *rows]
        self._memory = []
        if not rows:
            return []
        runs = _runs(rows)
        conn = self._db()
        conn.execute("BEGIN")
        for table, part in runs:
            outcomes = orjson.dumps(
                [
                    (idx, item_id, ok, len(result or ()) if ok else 0, etype, message, sig)
                    for idx, item_id, ok, result, etype, message, sig in part
                ]
            )
            conn.execute(
                "INSERT INTO chunks VALUES (?, ?, ?)",
                (part[0][0], outcomes, _ipc(table) if table.num_rows else None),
            )
        conn.execute("DELETE FROM inflight")
        conn.execute("COMMIT")
        return [row for _, part in runs for row in part]

    def begin_item(self, idx: int) -> None:
        """Isolation mode: mark the item in flight before the handler sees it, so the next
        attempt knows which item was running when its worker died."""
        conn = self._db()
        conn.execute("BEGIN")
        conn.execute("DELETE FROM inflight")
        conn.execute("INSERT INTO inflight VALUES (?)", (idx,))
        conn.execute("COMMIT")

    def inflight(self) -> int | None:
        if self._conn is None:
            return None
        row = self._conn.execute("SELECT idx FROM inflight").fetchone()
        return int(row[0]) if row else None

    def snapshot(self, dest: Path) -> Path:
        """A consistent copy of the checkpoint (for upload) while it stays open."""
        self.write([])  # memory rows become durable first
        dest.unlink(missing_ok=True)
        create_private(dest)
        target = sqlite3.connect(dest)
        try:
            self._db().backup(target)
        finally:
            target.close()
        return dest

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def read_stamp(conn: sqlite3.Connection) -> Stamp | None:
    try:
        row = conn.execute("SELECT job, batch_sha256, attempt FROM stamp").fetchone()
    except sqlite3.Error:  # no stamp table: not a checkpoint of this format
        return None
    return Stamp(*row) if row else None
