"""The scratch checkpoint: a SQLite file per task so a resumed task skips the items done.

Written in chunks (`checkpoint_every` items per transaction, no fsync): a worker killed mid-batch
redoes at most one chunk. It can be uploaded to the object store when a worker is preempted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

# (line index, item id, ok, result json or None, error type, message, signature)
Row = tuple[int, str, int, str | None, str | None, str | None, str | None]


class Checkpoint:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS items (idx INTEGER PRIMARY KEY, item_id TEXT, ok INTEGER, "
            "result TEXT, error_type TEXT, message TEXT, signature TEXT)"
        )
        self.conn.execute("CREATE TABLE IF NOT EXISTS inflight (idx INTEGER PRIMARY KEY)")

    def done(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT idx FROM items")}

    def rows(self) -> Iterator[Row]:
        yield from self.conn.execute("SELECT * FROM items ORDER BY idx")

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
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
