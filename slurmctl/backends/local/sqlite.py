"""Shared SQLite plumbing: one connection per thread, WAL, `BEGIN IMMEDIATE` transactions; the
database file is created 0600 in a 0700 folder (the state is the user's only)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slurmctl.scratch import open_private, private_folder

BUSY_TIMEOUT_MS = 60_000


class SQLiteDB:
    """Many processes share the file safely: WAL lets readers run beside the one writer."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._local = threading.local()
        self._schema = schema
        private_folder(path.parent)  # the state root: 0700
        os.close(open_private(path, os.O_RDWR | os.O_CREAT))  # 0600; SQLite's -wal/-shm copy it
        with self.transaction() as conn:
            for stmt in schema.split(";"):
                if stmt.strip():
                    conn.execute(stmt)

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: taken up front so two writers never deadlock on an upgrade."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
