"""The scratch checkpoint: a SQLite file per task so a resumed task skips the items done.

Written in chunks (`checkpoint_every` items per row and transaction, no fsync): a worker killed
mid-batch redoes at most one chunk. It can be uploaded to the object store when a worker is
preempted. Chunks are pickled: the file is ours, and a copy fetched from the object store is
verified against the sha256 its worker recorded when it released the task.
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
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")  # a commit appends: no journal file churn
        self.conn.execute("PRAGMA synchronous=OFF")  # survives the process dying, not the node
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS chunks (first INTEGER PRIMARY KEY, rows BLOB)"
        )
        self.conn.execute("CREATE TABLE IF NOT EXISTS inflight (idx INTEGER PRIMARY KEY)")

    def rows(self) -> Iterator[Row]:
        for (blob,) in self.conn.execute("SELECT rows FROM chunks ORDER BY first"):
            yield from pickle.loads(blob)

    def done(self) -> set[int]:
        return {row[0] for row in self.rows()}

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        self.conn.execute("BEGIN")
        self.conn.execute(
            "INSERT OR REPLACE INTO chunks VALUES (?, ?)",
            (rows[0][0], pickle.dumps(list(rows), protocol=pickle.HIGHEST_PROTOCOL)),
        )
        self.conn.execute("DELETE FROM inflight")
        self.conn.execute("COMMIT")

    def begin_item(self, idx: int) -> None:
        """Isolation mode: mark the item in flight before the handler sees it, so the next
        attempt knows which item was running when its worker died."""
        self.conn.execute("BEGIN")
        self.conn.execute("DELETE FROM inflight")
        self.conn.execute("INSERT INTO inflight VALUES (?)", (idx,))
        self.conn.execute("COMMIT")

    def inflight(self) -> int | None:
        row = self.conn.execute("SELECT idx FROM inflight").fetchone()
        return int(row[0]) if row else None

    def snapshot(self, dest: Path) -> Path:
        """A consistent copy of the checkpoint (for upload) while it stays open."""
        dest.unlink(missing_ok=True)
        target = sqlite3.connect(dest)
        try:
            self.conn.backup(target)
        finally:
            target.close()
        return dest

    def close(self) -> None:
        self.conn.close()
