"""The scratch checkpoint: a SQLite file per task so a resumed task skips the items done.

Written in chunks (`checkpoint_every` items per row and transaction, no fsync): a worker killed
mid-batch redoes at most one chunk. The file is created on the first durable write only: a task
that finishes before its first checkpoint is due (a fast handler) never touches SQLite, its rows
go from memory to the output. It can be uploaded to the object store when a worker is preempted.
Chunks are pickled: the file is ours, and a copy fetched from the object store is verified
against the sha256 its worker recorded when it released the task.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# (line index, item id, ok, output rows or None, error type, message, signature)
Row = tuple[int, str, bool, list[dict[str, Any]] | None, str | None, str | None, str | None]


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._memory: list[Row] = []
        if path.exists():
            self._db()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")  # a commit appends: no journal file churn
            conn.execute("PRAGMA synchronous=OFF")  # survives the process dying, not the node
            conn.execute("CREATE TABLE IF NOT EXISTS chunks (first INTEGER PRIMARY KEY, rows BLOB)")
            conn.execute("CREATE TABLE IF NOT EXISTS inflight (idx INTEGER PRIMARY KEY)")
            self._conn = conn
        return self._conn

    def rows(self) -> Iterator[Row]:
        if self._conn is not None:
            for (blob,) in self._conn.execute("SELECT rows FROM chunks ORDER BY first"):
                yield from pickle.loads(blob)
        yield from self._memory

    def done(self) -> set[int]:
        return {row[0] for row in self.rows()}

    def write(self, rows: Sequence[Row], *, durable: bool = True) -> None:
        """Record rows; durable ones survive the worker dying, the others only feed the output."""
        if not durable:
            self._memory.extend(rows)
            return
        rows = [*self._memory, *rows]
        self._memory = []
        if not rows:
            return
        conn = self._db()
        conn.execute("BEGIN")
        conn.execute(
            "INSERT OR REPLACE INTO chunks VALUES (?, ?)",
            (rows[0][0], pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)),
        )
        conn.execute("DELETE FROM inflight")
        conn.execute("COMMIT")

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
