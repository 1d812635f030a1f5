"""The embedded state store: SQLite in WAL mode.

It implements the store primitives of `statestore.StateStore`; the task protocol itself is written
once in `protocol.py`. A write (`_write`) is one `BEGIN IMMEDIATE` transaction: read the record,
check the write's condition with `protocol.holds`, write it and move the counters, so no other
writer can come in between the check and the write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import astuple, fields, replace
from pathlib import Path
from typing import Any

from slurmctl.backends import protocol
from slurmctl.backends.local.sqlite import SQLiteDB
from slurmctl.backends.protocol import Cond, Kind, Write
from slurmctl.backends.statestore import (
    TASK_FIELDS,
    Bucket,
    JobRecord,
    SlotGrant,
    StateStore,
    TaskRecord,
    Versioned,
)
from slurmctl.ratelimit import gcra
from slurmctl.states import JobStatus, TaskStatus

_JOB_COLS = [f.name for f in fields(JobRecord)]
_TASK_COLS = ", ".join(f'"{c}"' for c in TASK_FIELDS)  # quoted: "group" is an SQL keyword

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs ({", ".join(_JOB_COLS)}, PRIMARY KEY (job_id));
CREATE TABLE IF NOT EXISTS tasks ({_TASK_COLS}, PRIMARY KEY (job_id, task_id))
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks (job_id, phase, task_id)
    WHERE status IN ('PENDING', 'RUNNING');
CREATE TABLE IF NOT EXISTS counters (job_id, name, value INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (job_id, name, rate REAL, burst INTEGER, tat REAL,
    paused INTEGER, effective REAL DEFAULT 0, changed_at REAL DEFAULT 0,
    hold_until REAL DEFAULT 0, PRIMARY KEY (job_id, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_leases (job_id PRIMARY KEY, holder, expires REAL);
CREATE TABLE IF NOT EXISTS versioned (job_id, name, version INTEGER NOT NULL, value BLOB,
    PRIMARY KEY (job_id, name)) WITHOUT ROWID
"""

_UNFINISHED = "status IN ('PENDING', 'RUNNING')"
_TABLES: dict[Kind, tuple[str, tuple[str, ...]]] = {
    "job": ("jobs", ("job_id",)),
    "task": ("tasks", ("job_id", "task_id")),
    "lease": ("job_leases", ("job_id",)),
    "doc": ("versioned", ("job_id", "name")),
}
"""Where each kind of record a Write targets lives, and its key columns."""
_SQL_OPS = {"eq": "IS", "lt": "<", "le": "<="}
_BUCKET_COLS = [f.name for f in fields(Bucket)]


def _job(row: sqlite3.Row) -> JobRecord:
    d = dict(row)
    d["status"] = JobStatus(d["status"])
    d["paused"] = bool(d["paused"])
    d["submitted"] = bool(d["submitted"])
    return JobRecord(**d)


def _task(row: sqlite3.Row) -> TaskRecord:
    d = dict(row)
    d["status"] = TaskStatus(d["status"])
    return TaskRecord(**d)


def _where(c: Cond, args: list[Any]) -> str:
    """A protocol condition as SQL on an existing row (its parameters appended to args); `IS`
    compares NULL as `protocol.holds` compares None, and a comparison with NULL is false."""
    if c.op in ("absent", "present"):
        return "0" if c.op == "absent" else "1"
    if c.op in ("all", "any"):
        joiner = " AND " if c.op == "all" else " OR "
        return "(" + joiner.join(_where(p, args) for p in c.parts) + ")"
    args.append(c.value)
    return f'"{c.field}" {_SQL_OPS[c.op]} ?'


def _changed(cur: sqlite3.Cursor, w: Write) -> bool:
    """Whether the conditional statement found its row (an UPDATE or DELETE changed it)."""
    return cur.rowcount == 1 if w.sets or w.delete else cur.fetchone() is not None


def _bump(conn: sqlite3.Connection, job_id: str, deltas: Mapping[str, int]) -> None:
    conn.executemany(
        "INSERT INTO counters (job_id, name, value) VALUES (?, ?, ?) "
        "ON CONFLICT (job_id, name) DO UPDATE SET value = value + excluded.value",
        [(job_id, name, d) for name, d in deltas.items() if d],
    )


class SQLiteStateStore(StateStore):
    def __init__(self, path: Path) -> None:
        self.db = SQLiteDB(path, SCHEMA)
        self._add_new_columns()

    def _add_new_columns(self) -> None:
        """A state root written by an older slurmctl gains the columns added since."""
        with self.db.transaction() as conn:
            for table, cols in (
                ("jobs", _JOB_COLS),
                ("tasks", TASK_FIELDS),
                ("buckets", _BUCKET_COLS),
            ):
                have = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
                for col in cols:
                    if col not in have:
                        default = " DEFAULT 0" if table == "buckets" else ""
                        conn.execute(f'ALTER TABLE {table} ADD COLUMN "{col}"{default}')

    def close(self) -> None:
        self.db.close()

    # --- the write primitive ------------------------------------------------------------------
    def _write(self, w: Write) -> bool:
        table, keys = _TABLES[w.ref.kind]
        key_values = (w.ref.job_id, w.ref.name)[: len(keys)]
        where = " AND ".join(f'"{k}" = ?' for k in keys)
        if protocol.holds(w.cond, None):  # it may create the record: read, check, write
            return self._upsert(w, table, keys, key_values, where)
        args: list[Any] = []
        cond = _where(w.cond, args)
        if w.delete:
            sql, params = f"DELETE FROM {table} WHERE {where} AND {cond}", (*key_values, *args)
        elif w.sets:
            assign = ", ".join(f'"{k}" = ?' for k in w.sets)
            sql = f"UPDATE {table} SET {assign} WHERE {where} AND {cond}"
            params = (*w.sets.values(), *key_values, *args)
        else:
            sql, params = f"SELECT 1 FROM {table} WHERE {where} AND {cond}", (*key_values, *args)
        if not w.deltas:  # one statement is its own transaction
            return _changed(self.db.conn().execute(sql, params), w)
        with self.db.transaction() as conn:
            if not _changed(conn.execute(sql, params), w):
                return False
            _bump(conn, w.ref.job_id, w.deltas)
            return True

    def _upsert(
        self, w: Write, table: str, keys: tuple[str, ...], key_values: tuple[str, ...], where: str
    ) -> bool:
        with self.db.transaction() as conn:
            row = conn.execute(f"SELECT * FROM {table} WHERE {where}", key_values).fetchone()
            if not protocol.holds(w.cond, dict(row) if row else None):
                return False
            if w.delete:
                conn.execute(f"DELETE FROM {table} WHERE {where}", key_values)
            elif row is None:
                values = {**dict(zip(keys, key_values, strict=True)), **w.sets}
                cols = ", ".join(f'"{c}"' for c in values)
                conn.execute(
                    f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(values))})",
                    tuple(values.values()),
                )
            elif w.sets:
                assign = ", ".join(f'"{k}" = ?' for k in w.sets)
                conn.execute(
                    f"UPDATE {table} SET {assign} WHERE {where}", (*w.sets.values(), *key_values)
                )
            _bump(conn, w.ref.job_id, w.deltas)
            return True

    # --- jobs -------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> JobRecord | None:
        row = self.db.conn().execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self) -> list[JobRecord]:
        rows = self.db.conn().execute("SELECT * FROM jobs ORDER BY created_at, job_id")
        return [_job(r) for r in rows]

    def delete_job(self, job_id: str) -> None:
        with self.db.transaction() as conn:
            for table in ("tasks", "counters", "buckets", "job_leases", "versioned", "jobs"):
                conn.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))

    def job_lease(self, job_id: str) -> tuple[str, float] | None:
        row = (
            self.db.conn()
            .execute("SELECT holder, expires FROM job_leases WHERE job_id = ?", (job_id,))
            .fetchone()
        )
        return (str(row["holder"]), float(row["expires"])) if row else None

    # --- tasks ------------------------------------------------------------------------------
    def put_tasks(self, tasks: Sequence[TaskRecord]) -> int:
        with self.db.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO tasks VALUES ({', '.join('?' * len(TASK_FIELDS))})",
                [astuple(t) for t in tasks],
            )
            return conn.total_changes - before

    def delete_tasks(self, job_id: str, phase: str) -> int:
        with self.db.transaction() as conn:
            cur = conn.execute("DELETE FROM tasks WHERE job_id = ? AND phase = ?", (job_id, phase))
            return cur.rowcount

    def get_task(self, job_id: str, task_id: str) -> TaskRecord | None:
        row = (
            self.db.conn()
            .execute("SELECT * FROM tasks WHERE job_id = ? AND task_id = ?", (job_id, task_id))
            .fetchone()
        )
        return _task(row) if row else None

    def unfinished_tasks(self, job_id: str, phase: str | None = None) -> Iterator[TaskRecord]:
        sql = f"SELECT * FROM tasks INDEXED BY tasks_unfinished WHERE job_id = ? AND {_UNFINISHED}"
        args: tuple[Any, ...] = (job_id,)
        if phase is not None:
            sql += " AND phase = ?"
            args += (phase,)
        yield from (
            _task(r) for r in self.db.conn().execute(sql + " ORDER BY phase, task_id", args)
        )

    def iter_tasks(
        self, job_id: str, *, phase: str | None = None, status: TaskStatus | None = None
    ) -> Iterator[TaskRecord]:
        last = ""
        while True:
            sql = "SELECT * FROM tasks WHERE job_id = ? AND task_id > ?"
            args: tuple[Any, ...] = (job_id, last)
            if phase is not None:
                sql += " AND phase = ?"
                args += (phase,)
            if status is not None:
                sql += " AND status = ?"
                args += (str(status),)
            rows = self.db.conn().execute(sql + " ORDER BY task_id LIMIT 1000", args).fetchall()
            if not rows:
                return
            yield from (_task(r) for r in rows)
            last = rows[-1]["task_id"]

    def get_versioned(self, job_id: str, name: str) -> Versioned | None:
        row = (
            self.db.conn()
            .execute(
                "SELECT version, value FROM versioned WHERE job_id = ? AND name = ?", (job_id, name)
            )
            .fetchone()
        )
        return Versioned(int(row["version"]), bytes(row["value"])) if row else None

    def counters(
        self, job_id: str, *, metrics: bool = True, running: bool = True
    ) -> dict[str, int]:
        # one table read however many counters, RUNNING counted apart (a claim's counter
        # moves cost nothing inside its transaction): `metrics` and `running` change nothing
        rows = self.db.conn().execute(
            "SELECT name, value FROM counters WHERE job_id = ?", (job_id,)
        )
        return {r["name"]: r["value"] for r in rows}

    # --- rate limiting ----------------------------------------------------------------------
    def put_bucket(self, bucket: Bucket) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                f"INSERT INTO buckets ({', '.join(_BUCKET_COLS)}) "
                f"VALUES ({', '.join('?' * len(_BUCKET_COLS))}) ON CONFLICT (job_id, name) "
                "DO UPDATE SET rate = excluded.rate, burst = excluded.burst",
                astuple(bucket),
            )

    @staticmethod
    def _bucket(row: sqlite3.Row) -> Bucket:
        d = {k: row[k] for k in _BUCKET_COLS}
        d["paused"] = bool(d["paused"])
        for k in ("effective", "changed_at", "hold_until"):
            d[k] = float(d[k] or 0.0)
        return Bucket(**d)

    @staticmethod
    def _row(conn: sqlite3.Connection, job_id: str, name: str) -> Bucket | None:
        row = conn.execute(
            "SELECT * FROM buckets WHERE job_id = ? AND name = ?", (job_id, name)
        ).fetchone()
        return SQLiteStateStore._bucket(row) if row else None

    def get_bucket(self, job_id: str, name: str) -> Bucket | None:
        return self._row(self.db.conn(), job_id, name)

    def list_buckets(self, job_id: str) -> list[Bucket]:
        rows = self.db.conn().execute(
            "SELECT * FROM buckets WHERE job_id = ? ORDER BY name", (job_id,)
        )
        return [self._bucket(r) for r in rows]

    def reserve_slots(self, job_id: str, name: str, n: int, now: float) -> SlotGrant:
        with self.db.transaction() as conn:
            b = self._row(conn, job_id, name)
            if b is None:
                raise KeyError(f"no rate-limit bucket {name!r} for job {job_id}")
            if b.paused:
                return SlotGrant(paused=True, tat=b.tat, configured_rate=b.rate)
            p = gcra.plan(b.tat, now, n, b.rate, b.burst, b.backoff)
            if p.times:
                conn.execute(
                    "UPDATE buckets SET tat = ? WHERE job_id = ? AND name = ?",
                    (p.tat, job_id, name),
                )
            return SlotGrant(
                times=p.times,
                tat=p.tat,
                rate=p.rate,
                configured_rate=b.rate,
                hold_until=p.hold_until,
                writes=int(bool(p.times)),
            )

    def release_slots(self, job_id: str, name: str, grant_tat: float, new_tat: float) -> bool:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE buckets SET tat = ? WHERE job_id = ? AND name = ? AND tat = ?",
                (new_tat, job_id, name, grant_tat),
            )
            return cur.rowcount == 1

    def set_buckets_paused(self, job_id: str, paused: bool) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE buckets SET paused = ? WHERE job_id = ?", (int(paused), job_id))

    def set_bucket_rate(
        self, job_id: str, name: str, rate: float, burst: int | None = None
    ) -> Bucket | None:
        with self.db.transaction() as conn:
            before = self._row(conn, job_id, name)
            if before is None:
                return None
            conn.execute(
                "UPDATE buckets SET rate = ?, burst = ?, effective = 0, changed_at = 0 "
                "WHERE job_id = ? AND name = ?",
                (float(rate), before.burst if burst is None else int(burst), job_id, name),
            )
            return before

    def throttle_bucket(
        self, job_id: str, name: str, now: float, retry_after: float | None = None
    ) -> Bucket | None:
        with self.db.transaction() as conn:
            b = self._row(conn, job_id, name)
            if b is None:
                return None
            after = gcra.throttle(b.rate, b.backoff, now, retry_after)
            if after != b.backoff:
                conn.execute(
                    "UPDATE buckets SET effective = ?, changed_at = ?, hold_until = ? "
                    "WHERE job_id = ? AND name = ?",
                    (after.effective, after.changed_at, after.hold_until, job_id, name),
                )
            return replace(
                b,
                effective=after.effective,
                changed_at=after.changed_at,
                hold_until=after.hold_until,
            )
