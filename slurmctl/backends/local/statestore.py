"""The embedded state store: SQLite in WAL mode, every transition one `BEGIN IMMEDIATE`
transaction that also moves the counters."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import astuple, fields, replace
from pathlib import Path
from typing import Any

from slurmctl.backends.local.sqlite import SQLiteDB
from slurmctl.backends.statestore import (
    ITEMS_FAILED_PERMANENT,
    ITEMS_FAILED_TRANSIENT,
    ITEMS_PENDING,
    ITEMS_SUCCEEDED,
    JOB_FIELDS,
    OUTPUT_ROWS,
    TASK_FIELDS,
    WORKERS_LOST,
    Bucket,
    JobRecord,
    SlotGrant,
    StateStore,
    TaskCommit,
    TaskRecord,
    Versioned,
    task_counter,
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
_QUOTED_TASK_COLS = ", ".join(f'"{c}"' for c in TASK_FIELDS)  # "group" is a keyword
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

    # --- jobs -------------------------------------------------------------------------------
    def create_job(self, job: JobRecord) -> bool:
        with self.db.transaction() as conn:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO jobs VALUES ({', '.join('?' * len(_JOB_COLS))})",
                astuple(job),
            )
            return cur.rowcount == 1

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self.db.conn().execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self) -> list[JobRecord]:
        rows = self.db.conn().execute("SELECT * FROM jobs ORDER BY created_at, job_id")
        return [_job(r) for r in rows]

    def update_job(
        self,
        job_id: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
        counter_deltas: Mapping[str, int] | None = None,
    ) -> bool:
        expect = expect or {}
        unknown = (set(changes) | set(expect)) - JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        where = " AND ".join(["job_id = ?", *(f"{k} IS ?" for k in expect)])
        with self.db.transaction() as conn:
            if changes:
                sets = ", ".join(f"{k} = ?" for k in changes)
                cur = conn.execute(
                    f"UPDATE jobs SET {sets} WHERE {where}",
                    (*changes.values(), job_id, *expect.values()),
                )
            else:
                cur = conn.execute(f"SELECT 1 FROM jobs WHERE {where}", (job_id, *expect.values()))
                cur = cur if cur.fetchone() else None  # type: ignore[assignment]
            if cur is None or (changes and cur.rowcount != 1):
                return False
            _bump(conn, job_id, counter_deltas or {})
            return True

    def delete_job(self, job_id: str) -> None:
        with self.db.transaction() as conn:
            for table in ("tasks", "counters", "buckets", "job_leases", "versioned", "jobs"):
                conn.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))

    def acquire_job_lease(self, job_id: str, holder: str, ttl_s: float, now: float) -> bool:
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT holder, expires FROM job_leases WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row and row["holder"] != holder and row["expires"] > now:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO job_leases VALUES (?, ?, ?)", (job_id, holder, now + ttl_s)
            )
            return True

    def job_lease(self, job_id: str) -> tuple[str, float] | None:
        row = (
            self.db.conn()
            .execute("SELECT holder, expires FROM job_leases WHERE job_id = ?", (job_id,))
            .fetchone()
        )
        return (str(row["holder"]), float(row["expires"])) if row else None

    def release_job_lease(self, job_id: str, holder: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM job_leases WHERE job_id = ? AND holder = ?", (job_id, holder))

    # --- tasks ------------------------------------------------------------------------------
    def put_tasks(self, tasks: Sequence[TaskRecord]) -> int:
        with self.db.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO tasks VALUES ({', '.join('?' * len(TASK_FIELDS))})",
                [astuple(t) for t in tasks],
            )
            return conn.total_changes - before

    def replace_task(
        self, task: TaskRecord, *, expect_status: TaskStatus, counter_deltas: Mapping[str, int]
    ) -> bool:
        with self.db.transaction() as conn:
            cur = conn.execute(
                f"UPDATE tasks SET ({_QUOTED_TASK_COLS}) = ({', '.join('?' * len(TASK_FIELDS))}) "
                "WHERE job_id = ? AND task_id = ? AND status = ?",
                (*astuple(task), task.job_id, task.task_id, str(expect_status)),
            )
            if cur.rowcount != 1:
                return False
            _bump(conn, task.job_id, counter_deltas)
            return True

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

    def claim_task(
        self,
        job_id: str,
        task_id: str,
        worker_id: str,
        token: str,
        lease_s: float,
        now: float,
        *,
        holder: str | None = None,
    ) -> TaskRecord | None:
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT status, phase, lease_expires FROM tasks WHERE job_id = ? AND task_id = ?",
                (job_id, task_id),
            ).fetchone()
            if row is None:
                return None
            status, phase = row["status"], row["phase"]
            taking_over = status == TaskStatus.RUNNING and (row["lease_expires"] or 0) < now
            if status != TaskStatus.PENDING and not taking_over:
                return None
            conn.execute(
                "UPDATE tasks SET status = 'RUNNING', lease_token = ?, worker_id = ?, holder = ?, "
                "lease_expires = ?, attempts = attempts + 1, "
                "worker_losses = worker_losses + ?, start_time = COALESCE(start_time, ?) "
                "WHERE job_id = ? AND task_id = ?",
                (token, worker_id, holder, now + lease_s, int(taking_over), now, job_id, task_id),
            )
            if not taking_over:
                _bump(
                    conn,
                    job_id,
                    {task_counter(phase, "PENDING"): -1, task_counter(phase, "RUNNING"): 1},
                )
            claimed = conn.execute(
                "SELECT * FROM tasks WHERE job_id = ? AND task_id = ?", (job_id, task_id)
            ).fetchone()
            return _task(claimed)

    def heartbeat(self, job_id: str, task_id: str, token: str, lease_s: float, now: float) -> bool:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE tasks SET lease_expires = ? WHERE job_id = ? AND task_id = ? "
                "AND status = 'RUNNING' AND lease_token = ?",
                (now + lease_s, job_id, task_id, token),
            )
            return cur.rowcount == 1

    def _fenced(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        task_id: str,
        token: str,
        sets: Mapping[str, Any],
    ) -> str | None:
        """Update the task if token holds its lease; returns its phase, None when fenced off."""
        row = conn.execute(
            "SELECT phase FROM tasks WHERE job_id = ? AND task_id = ? AND status = 'RUNNING' "
            "AND lease_token = ?",
            (job_id, task_id, token),
        ).fetchone()
        if row is None:
            return None
        assign = ", ".join(f"{k} = ?" for k in sets)
        conn.execute(
            f"UPDATE tasks SET {assign} WHERE job_id = ? AND task_id = ?",
            (*sets.values(), job_id, task_id),
        )
        return str(row["phase"])

    def release_task(
        self,
        job_id: str,
        task_id: str,
        token: str,
        *,
        checkpoint_key: str | None = None,
        checkpoint_sha256: str | None = None,
    ) -> bool:
        sets: dict[str, Any] = {
            "status": "PENDING",
            "lease_token": None,
            "lease_expires": None,
            "worker_id": None,
        }
        if checkpoint_key:
            sets |= {"checkpoint_key": checkpoint_key, "checkpoint_sha256": checkpoint_sha256}
        with self.db.transaction() as conn:
            phase = self._fenced(conn, job_id, task_id, token, sets)
            if phase is None:
                return False
            _bump(
                conn,
                job_id,
                {task_counter(phase, "RUNNING"): -1, task_counter(phase, "PENDING"): 1},
            )
            return True

    def release_dead(self, job_id: str, task_id: str, token: str) -> bool:
        sets = {"status": "PENDING", "lease_token": None, "lease_expires": None, "worker_id": None}
        with self.db.transaction() as conn:
            phase = self._fenced(conn, job_id, task_id, token, sets)
            if phase is None:
                return False
            conn.execute(
                "UPDATE tasks SET worker_losses = worker_losses + 1 "
                "WHERE job_id = ? AND task_id = ?",
                (job_id, task_id),
            )
            moves = {task_counter(phase, "RUNNING"): -1, task_counter(phase, "PENDING"): 1}
            _bump(conn, job_id, {**moves, WORKERS_LOST: 1})
            return True

    def commit_task(self, job_id: str, task_id: str, token: str, commit: TaskCommit) -> bool:
        sets: dict[str, Any] = {
            "status": "SUCCESS",
            "lease_expires": None,
            "output_key": commit.output_key,
            "output_sha256": commit.output_sha256,
            "output_rows": commit.output_rows,
            "errors_key": commit.errors_key,
            "errors_sha256": commit.errors_sha256,
            "succeeded": commit.succeeded,
            "failed_permanent": commit.failed_permanent,
            "failed_transient": commit.failed_transient,
            "end_time": commit.end_time,
        }
        done = commit.succeeded + commit.failed_permanent + commit.failed_transient
        with self.db.transaction() as conn:
            phase = self._fenced(conn, job_id, task_id, token, sets)
            if phase is None:
                return False
            _bump(
                conn,
                job_id,
                {
                    task_counter(phase, "RUNNING"): -1,
                    task_counter(phase, "SUCCESS"): 1,
                    ITEMS_PENDING: -done,
                    ITEMS_SUCCEEDED: commit.succeeded,
                    ITEMS_FAILED_PERMANENT: commit.failed_permanent,
                    ITEMS_FAILED_TRANSIENT: commit.failed_transient,
                    OUTPUT_ROWS: commit.output_rows,
                },
            )
            return True

    def fail_task(self, job_id: str, task_id: str, token: str, error: str, now: float) -> bool:
        sets = {"status": "FAILED", "lease_expires": None, "error": error, "end_time": now}
        with self.db.transaction() as conn:
            phase = self._fenced(conn, job_id, task_id, token, sets)
            if phase is None:
                return False
            _bump(
                conn, job_id, {task_counter(phase, "RUNNING"): -1, task_counter(phase, "FAILED"): 1}
            )
            return True

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

    def counters(self, job_id: str) -> dict[str, int]:
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

    # --- versioned documents (the job's output schema) ----------------------------------------
    def get_versioned(self, job_id: str, name: str) -> Versioned | None:
        row = (
            self.db.conn()
            .execute(
                "SELECT version, value FROM versioned WHERE job_id = ? AND name = ?", (job_id, name)
            )
            .fetchone()
        )
        return Versioned(int(row["version"]), bytes(row["value"])) if row else None

    def put_versioned(self, job_id: str, name: str, value: bytes, expect_version: int) -> bool:
        with self.db.transaction() as conn:
            if expect_version == 0:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO versioned VALUES (?, ?, 1, ?)", (job_id, name, value)
                )
            else:
                cur = conn.execute(
                    "UPDATE versioned SET version = version + 1, value = ? "
                    "WHERE job_id = ? AND name = ? AND version = ?",
                    (value, job_id, name, expect_version),
                )
            return cur.rowcount == 1
