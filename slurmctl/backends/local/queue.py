"""The embedded queue: one SQLite table, messages hidden by a visibility deadline like SQS."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from slurmctl.backends.local.sqlite import SQLiteDB
from slurmctl.backends.queue import Message, QueueService
from slurmctl.errors import SlurmctlError

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (job_id PRIMARY KEY);
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id NOT NULL,
    body NOT NULL, visible_at REAL NOT NULL, receipt);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (job_id, visible_at, id)
"""

POLL_S = 0.05


class SQLiteQueue(QueueService):
    def __init__(self, path: Path) -> None:
        self.db = SQLiteDB(path, SCHEMA)

    def close(self) -> None:
        self.db.close()

    def create_queue(self, job_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO queues VALUES (?)", (job_id,))

    def delete_queue(self, job_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM messages WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM queues WHERE job_id = ?", (job_id,))

    def send(self, job_id: str, bodies: Sequence[str], *, delay_s: int = 0) -> None:
        if not bodies:
            return
        visible_at = time.time() + max(0, min(delay_s, 900))
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM queues WHERE job_id = ?", (job_id,)).fetchone() is None:
                raise SlurmctlError(f"no queue for job {job_id}")
            conn.executemany(
                "INSERT INTO messages (job_id, body, visible_at) VALUES (?, ?, ?)",
                [(job_id, b, visible_at) for b in bodies],
            )

    def receive(
        self, job_id: str, *, max_messages: int = 1, visibility_s: int = 30, wait_s: float = 0.0
    ) -> list[Message]:
        deadline = time.monotonic() + wait_s
        while True:
            now = time.time()
            # Peek without the write lock: most empty polls then cost no lock at all.
            peek = self.db.conn().execute(
                "SELECT 1 FROM messages WHERE job_id = ? AND visible_at <= ? LIMIT 1", (job_id, now)
            )
            if peek.fetchone() is not None:
                got = self._take(job_id, max_messages, visibility_s, now)
                if got:
                    return got
            if time.monotonic() >= deadline:
                return []
            time.sleep(POLL_S)

    def _take(self, job_id: str, n: int, visibility_s: int, now: float) -> list[Message]:
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, body FROM messages WHERE job_id = ? AND visible_at <= ? "
                "ORDER BY visible_at, id LIMIT ?",
                (job_id, now, n),
            ).fetchall()
            out = []
            for row in rows:
                receipt = f"{row['id']}:{secrets.token_hex(8)}"
                conn.execute(
                    "UPDATE messages SET visible_at = ?, receipt = ? WHERE id = ?",
                    (now + visibility_s, receipt, row["id"]),
                )
                out.append(Message(body=row["body"], receipt=receipt))
            return out

    def delete(self, job_id: str, receipts: Sequence[str]) -> None:
        if not receipts:
            return
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM messages WHERE job_id = ? AND id = ? AND receipt = ?",
                [(job_id, int(r.split(":", 1)[0]), r) for r in receipts],
            )

    def approximate_count(self, job_id: str) -> int:
        row = (
            self.db.conn()
            .execute("SELECT COUNT(*) FROM messages WHERE job_id = ?", (job_id,))
            .fetchone()
        )
        return int(row[0])
