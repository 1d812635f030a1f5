"""The DynamoDB state store: one table, one sparse GSI, the store primitives of `StateStore`.

The transitions themselves (claim, heartbeat, release, commit, fail, the job lease) are decided in
`protocol.py`, written once for every store; this module applies the conditional writes they
produce (`_write`), with what only DynamoDB needs: the condition compiled to a
ConditionExpression, the counter shard a write moves (a task's own, `crc32(task_id) % 16`; a
job's, shard 0) in the same TransactWriteItems (a phase's RUNNING deltas folded onto its
PENDING, so a claim and a release move none and are one UpdateItem; `counters` tells RUNNING
apart from the index), the unfinished-task GSI keys kept in step with
the task (removed when it finishes, its lease expiry in the sort key while it runs), the task
retention stamps when a job's status changes, and a lost answer (a timeout after sending)
resolved by reading the record again. The layout is in `dynamo.py` (and docs/aws.md, with the
cost of each access).

No write lands on one key per task: task items and their index entries are spread over the
job's K task shards, and a counter-only job update (the per-task metrics) is one plain UpdateItem
on a random metrics shard, with no ConditionCheck on the job record. The metrics shards are not
the counter shards that commits move: those stay small (1 KB: 2 WCU in a
transaction) however long the job runs and however big the time series grows.
"""

from __future__ import annotations

import base64
import heapq
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slurmctl.backends import protocol
from slurmctl.backends.aws import retention
from slurmctl.backends.aws.buckets import RateBuckets
from slurmctl.backends.aws.dynamo import (
    GSI,
    JOBS_GSI_PK,
    SHARDS,
    SHARDS_FIELD,
    Expr,
    Item,
    Table,
    bucket_key,
    condition,
    counter_keys,
    decode,
    expiry_text,
    index_attrs,
    index_pk,
    job_from,
    job_key,
    job_pk,
    key,
    key_of,
    metrics_key,
    old_layout,
    shard_key,
    shard_of,
    task_from,
    task_item,
    task_key,
    task_pk,
    task_shards_for,
)
from slurmctl.backends.aws.session import AwsConnectionError, AwsTimeout, Service
from slurmctl.backends.protocol import Kind, Ref, Write
from slurmctl.backends.records import (
    fold_running,
    is_protocol_counter,
    split_running,
    unfinished_by_phase,
)
from slurmctl.backends.statestore import (
    CLAIM_ROUNDS,
    JobRecord,
    StateStore,
    TaskRecord,
    Versioned,
)
from slurmctl.errors import JobStateError
from slurmctl.states import UNFINISHED, JobStatus, TaskStatus

AMBIGUOUS_ROUNDS = 3
"""How often a write whose answer was lost is re-read and tried again before the error stands."""
INDEX_STEP = 0.5
"""A RUNNING task's index entry holds its lease expiry rounded down to a multiple of
INDEX_STEP x lease_s: never later than the lease (the reconciler's range finds every expired
one), and a heartbeat (every lease.heartbeat_s, 30 s of a 120 s lease by default) moves it
(2 WCU: the old entry removed, the new one added) only when the expiry enters the next step,
every other heartbeat by default, instead of every one. With heartbeats under half the lease
the entry never looks expired while they come on time."""
INDEXED_MAX = 4096
"""Index expiries remembered per (job, task, token) by the process that heartbeats them."""
PUT_THREADS = 4
"""Conditional puts in flight at once per chunk (boto3 clients are thread-safe): submit's 8
writer threads (coordinator/submit.py WRITER_THREADS) x 4 fill the client's 32 connections."""
UNINDEXED = {"gsi_pk": None, "gsi_sk": None}
"""Removing the GSI key attributes takes a finished task out of the sparse index."""


_KEYS: dict[Kind, Callable[[Ref], Item]] = {
    "job": lambda r: job_key(r.job_id),
    "lease": lambda r: key(job_pk(r.job_id), "LEASE"),
    "doc": lambda r: key(job_pk(r.job_id), f"DOC#{r.name}"),
}
"""Where each kind of record lives. A versioned document is `JOB#<job_id>` / `DOC#<name>`, so
`delete_job`'s query of the job's partition finds it; its value is stored as base64 text (every
attribute of the table stays text or a number). A task's key depends on its job's shard count:
`DynamoStateStore._key`."""


class DynamoStateStore(RateBuckets, StateStore):
    def __init__(self, ddb: Service, table: str) -> None:
        self.t = Table(ddb, table)
        self._shards: dict[str, int] = {}
        self._indexed: dict[tuple[str, str, str], float] = {}
        """The index expiry this process last wrote for a lease it holds (heartbeats)."""

    # --- the layout ---------------------------------------------------------------------------
    def task_shards(self, job_id: str) -> int | None:
        """The job's task shard count K, None when there is no such job. Set when the job is
        created, never changed; cached, and refreshed by every `get_job`, so no task operation
        reads the job record. A job of the previous layout (no K) is refused (JobStateError)."""
        k = self._shards.get(job_id)
        if k is None:
            item = self.t.get(job_key(job_id))
            if item is None:
                return None
            if SHARDS_FIELD not in item:
                raise old_layout(job_id)
            k = self._shards[job_id] = int(item[SHARDS_FIELD]["N"])
        return k

    def _need_shards(self, job_id: str) -> int:
        k = self.task_shards(job_id)
        if k is None:
            raise JobStateError(f"job {job_id}: no such job in table {self.t.name!r}")
        return k

    def _key(self, ref: Ref) -> Item:
        if ref.kind == "task":
            return task_key(ref.job_id, ref.name, self._need_shards(ref.job_id))
        return _KEYS[ref.kind](ref)

    def close(self) -> None:
        self.t.ddb.close()

    # --- the write primitive ------------------------------------------------------------------
    def _write(
        self,
        w: Write,
        index_at: float | None = None,
        move_index: bool = True,
        shards: int | None = None,
    ) -> bool:
        """One conditional write. A task or lease write whose answer was lost (a timeout, a
        dropped connection: it may have been applied) is resolved by reading the record again:
        applied, refused (its condition no longer holds), or still to do (tried again)."""
        lost: Exception | None = None
        for _ in range(AMBIGUOUS_ROUNDS):
            try:
                return self._write_once(w, index_at, move_index, shards)
            except (AwsTimeout, AwsConnectionError) as e:
                if w.ref.kind == "job":  # a job's counter deltas cannot be told apart: report
                    raise
                lost = e
            now = self._view(w.ref)
            if protocol.applied(w, now):
                return True
            if not protocol.holds(w.cond, now):
                return False
        assert lost is not None
        raise lost

    def _write_once(
        self,
        w: Write,
        index_at: float | None = None,
        move_index: bool = True,
        shards: int | None = None,
    ) -> bool:
        # A phase's PENDING and RUNNING tasks are one stored count: a claim or a release moves
        # no counter (one conditional UpdateItem, not a transaction with a counter shard);
        # `counters()` tells RUNNING apart from the index.
        deltas = fold_running(w.deltas)
        if w.ref.kind == "job" and w.cond == protocol.PRESENT and not w.sets and not w.delete:
            # Counters only (metrics, breaker): one plain ADD on a random shard, no check of
            # the job record, so no item takes a write per task (a deleted job's stray shard
            # is removed with the others by delete_job). The job's existence is what the store
            # read once, for its shard count.
            if self.task_shards(w.ref.job_id) is None:
                return False
            if not deltas:
                return True
            shard = random.randrange(SHARDS)
            k = metrics_key(w.ref.job_id, shard)
            if any(is_protocol_counter(name) for name in deltas):  # counters(metrics=False)
                k = shard_key(w.ref.job_id, shard)
            return self._transact([self.t.counters_op(k, deltas)])
        if w.ref.kind == "task" and self.task_shards(w.ref.job_id) is None:
            return False  # no job, no task: a conditional write on it can only fail
        k = self._key(w.ref)
        e = Expr()
        cond = condition(e, w.cond)
        sets = {f: v for f, v in w.sets.items() if f not in ("job_id", "task_id")}
        if w.ref.kind == "task" and move_index:
            sets |= self._index(w.ref, sets, index_at)
        if w.ref.kind == "doc" and isinstance(sets.get("value"), bytes):
            sets["value"] = base64.b64encode(sets["value"]).decode()
        creating = w.cond == protocol.ABSENT
        if creating:  # a new record: nothing to REMOVE; a job is listed through the GSI
            sets = {f: v for f, v in sets.items() if v is not None}
            if w.ref.kind == "job":
                shards = shards or task_shards_for(int(sets.get("workers") or 1))
                sets |= {"gsi_pk": JOBS_GSI_PK, "gsi_sk": w.ref.job_id, SHARDS_FIELD: shards}
        if w.delete:
            op = {"Delete": e.args(TableName=self.t.name, Key=k, ConditionExpression=cond)}
        elif sets:
            op = self.t.update_op(k, e.update(sets), e, cond)
        else:
            op = {"ConditionCheck": e.args(TableName=self.t.name, Key=k, ConditionExpression=cond)}
        ops = [op]
        if deltas:
            shard = shard_of(w.ref.name) if w.ref.kind == "task" else 0
            ops.append(self.t.counters_op(shard_key(w.ref.job_id, shard), deltas))
        status = w.sets.get("status") if w.ref.kind == "job" and not creating else None
        terminal = status is not None and JobStatus(status).terminal
        if status is not None:
            retention.before_status(self.t, w.ref.job_id, terminal)
        done = self._transact(ops)
        if done and status is not None:
            retention.after_status(self.t, w.ref.job_id, terminal)
        return done

    def _index(
        self, ref: Ref, sets: dict[str, Any], index_at: float | None = None
    ) -> dict[str, Any]:
        """The index keys a task write leaves: none once finished; a RUNNING task's sort key
        holds its lease expiry (a claim, a heartbeat: fenced on RUNNING; `index_at` when the
        caller rounded it, INDEX_STEP), a PENDING one none."""
        status = sets.get("status")
        if status in protocol.FINISHED:
            return dict(UNINDEXED)
        if status is None and "lease_expires" not in sets:
            return {}
        status = TaskStatus.RUNNING if status is None else status
        expires = sets.get("lease_expires") if index_at is None else index_at
        return index_attrs(ref.job_id, ref.name, self._need_shards(ref.job_id), status, expires)

    def _index_at(self, lease_s: float, expires: float) -> float:
        step = lease_s * INDEX_STEP
        return math.floor(expires / step) * step if step > 0 else expires

    def _remember(self, job_id: str, task_id: str, token: str, at: float) -> None:
        if len(self._indexed) >= INDEXED_MAX:
            self._indexed.clear()  # leases this process no longer heartbeats, mostly
        self._indexed[(job_id, task_id, token)] = at

    # --- claims and heartbeats: the index entry by steps of the lease -----------------------
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
        """As `StateStore.claim_task`, the index entry's expiry rounded down (INDEX_STEP)."""
        for _ in range(CLAIM_ROUNDS):
            rec = self.get_task(job_id, task_id)
            step = protocol.claim(rec, worker_id, token, lease_s, now, holder)
            if step is None:
                return None
            write, claimed = step
            at = self._index_at(lease_s, float(now + lease_s))
            if self._write(write, at):
                self._remember(job_id, task_id, token, at)
                return claimed
        return None

    def heartbeat(self, job_id: str, task_id: str, token: str, lease_s: float, now: float) -> bool:
        """Extend the lease; the index entry moves only when the rounded expiry changes (one
        task WCU, no index WCU, for most heartbeats)."""
        w = protocol.heartbeat(job_id, task_id, token, lease_s, now)
        at = self._index_at(lease_s, float(now + lease_s))
        held = (job_id, task_id, token)
        if self._indexed.get(held) == at:  # the entry already says this: leave it
            return self._write(w, move_index=False)
        done = self._write(w, at)
        if done:
            self._remember(job_id, task_id, token, at)
        return done

    def _transact(self, ops: list[dict[str, Any]]) -> bool:
        """A lone Update or Delete is a plain conditional call (half a transaction's cost)."""
        if len(ops) == 1 and ("Update" in ops[0] or "Delete" in ops[0]):
            op, req = next(iter(ops[0].items()))
            call = "update_item" if op == "Update" else "delete_item"
            return self.t.conditional(call, **{k: v for k, v in req.items() if k != "TableName"})
        return self.t.transact(ops) is None

    # --- jobs -------------------------------------------------------------------------------
    def create_job(self, job: JobRecord, *, expected_tasks: int | None = None) -> bool:
        """As `StateStore.create_job`; the job's K from its workers and expected tasks."""
        shards = task_shards_for(job.workers, expected_tasks)
        return self._write(protocol.create_job(job), shards=shards)

    def get_job(self, job_id: str) -> JobRecord | None:
        item = self.t.get(job_key(job_id))
        # Each read of the record refreshes the cached shard count (a job deleted and submitted
        # again, by another process, with more workers has another K).
        if item and SHARDS_FIELD in item:
            self._shards[job_id] = int(item[SHARDS_FIELD]["N"])
        else:
            self._shards.pop(job_id, None)
        return job_from(item) if item else None

    def list_jobs(self) -> list[JobRecord]:
        # Every job record's key is in the GSI under gsi_pk JOBS; the records are read consistently.
        keys = [
            key_of(i)
            for i in self.t.query(
                IndexName=GSI,
                KeyConditionExpression="gsi_pk = :p",
                ExpressionAttributeValues={":p": {"S": JOBS_GSI_PK}},
            )
        ]
        jobs = [job_from(i) for i in self.t.batch_get(keys).values()]
        return sorted(jobs, key=lambda j: (j.created_at, j.job_id))

    def delete_job(self, job_id: str) -> None:
        keys: list[Item] = []
        buckets = []
        try:
            shards = self.task_shards(job_id) or 0
        except JobStateError:  # the previous layout: its tasks are under the job's own key
            shards = 0
        self._shards.pop(job_id, None)
        for pk in [job_pk(job_id), *(task_pk(job_id, k) for k in range(shards))]:
            for item in self.t.query(
                KeyConditionExpression="pk = :p",
                ExpressionAttributeValues={":p": {"S": pk}},
                ProjectionExpression="pk, sk",
                ConsistentRead=True,
            ):
                keys.append(key_of(item))
                if item["sk"]["S"].startswith("BUCKET#"):
                    buckets.append(item["sk"]["S"].removeprefix("BUCKET#"))
        keys += counter_keys(job_id)
        keys += [bucket_key(job_id, name) for name in buckets]
        self.t.batch_delete(keys)

    def job_lease(self, job_id: str) -> tuple[str, float] | None:
        item = self.t.get(key(job_pk(job_id), "LEASE"))
        if item is None:
            return None
        return str(decode(item["holder"])), float(decode(item["expires"], "float"))

    # --- tasks ------------------------------------------------------------------------------
    def put_tasks(self, tasks: Sequence[TaskRecord]) -> int:
        first = {(t.job_id, t.task_id): t for t in reversed(tasks)}  # the first one wins
        unique = list(first.values())[::-1]
        return sum(self.put_chunk(unique[i : i + 100]) for i in range(0, len(unique), 100))

    def put_chunk(self, chunk: Sequence[TaskRecord]) -> int:
        """The put-task primitive: up to 100 tasks of one job, each one conditional PutItem
        (put if absent), spread over the job's task shards, PUT_THREADS at a time; safe to call
        from several threads at once. Returns how many were new.

        Not a transaction: TransactWriteItems bills every item twice (2 WCU where a single
        conditional put costs 1), and a chunk need not land all at once: a submit that dies
        half-way has written some tasks of some chunk either way, and the next put of the
        same tasks (resume) adds only those missing."""
        if not chunk:
            return 0
        shards = self._need_shards(chunk[0].job_id)

        def one(t: TaskRecord) -> bool:
            return self.t.conditional(
                "put_item",
                Item=task_item(t, shards),
                ConditionExpression="attribute_not_exists(pk)",
            )

        if len(chunk) == 1:
            return int(one(chunk[0]))
        with ThreadPoolExecutor(min(PUT_THREADS, len(chunk))) as pool:
            return sum(pool.map(one, chunk))

    def delete_tasks(self, job_id: str, phase: str) -> int:
        shards = self._need_shards(job_id)
        keys = [task_key(job_id, t.task_id, shards) for t in self.iter_tasks(job_id, phase=phase)]
        self.t.batch_delete(keys)
        return len(keys)

    def get_task(self, job_id: str, task_id: str) -> TaskRecord | None:
        shards = self.task_shards(job_id)
        if shards is None:
            return None
        item = self.t.get(task_key(job_id, task_id, shards))
        return task_from(job_id, item) if item else None

    # --- the unfinished-task index ----------------------------------------------------------
    def _index_keys(self, job_id: str, between: tuple[str, str] | None = None) -> list[Item]:
        """The task keys in the index, every shard, in task id order; with `between`, only the
        entries whose sort key lies in that range (both ends included)."""
        shards = self.task_shards(job_id)
        out: list[Item] = []
        for k in range(shards or 0):
            cond = "gsi_pk = :p"
            values = {":p": {"S": index_pk(job_id, k)}}
            if between is not None:
                cond += " AND gsi_sk BETWEEN :lo AND :hi"
                values |= {":lo": {"S": between[0]}, ":hi": {"S": between[1]}}
            out += [
                key_of(i)
                for i in self.t.query(
                    IndexName=GSI, KeyConditionExpression=cond, ExpressionAttributeValues=values
                )
            ]
        return sorted(out, key=lambda i: i["sk"]["S"])

    def _records(
        self, job_id: str, keys: list[Item], keep: Callable[[TaskRecord], bool]
    ) -> Iterator[TaskRecord]:
        """The records behind index keys, read consistently 100 at a time: GSIs are eventually
        consistent, so what changed since the index saw it is checked again by `keep`."""
        for start in range(0, len(keys), 100):
            chunk = keys[start : start + 100]
            got = self.t.batch_get(chunk)
            for k in chunk:
                item = got.get((k["pk"]["S"], k["sk"]["S"]))
                if item is not None:
                    task = task_from(job_id, item)
                    if keep(task):
                        yield task

    def unfinished_tasks(self, job_id: str, phase: str | None = None) -> Iterator[TaskRecord]:
        return self._records(
            job_id,
            self._index_keys(job_id),
            lambda t: t.status in UNFINISHED and phase in (None, t.phase),
        )

    def expired_tasks(self, job_id: str, phase: str, now: float) -> Iterator[TaskRecord]:
        """One key range per shard: the RUNNING entries whose expiry is before now."""
        keys = self._index_keys(job_id, ("R#", f"R#{expiry_text(now)}"))
        return self._records(
            job_id,
            keys,
            lambda t: (
                t.status == TaskStatus.RUNNING and t.phase == phase and (t.lease_expires or 0) < now
            ),
        )

    def running_tasks(self, job_id: str, phase: str) -> Iterator[TaskRecord]:
        keys = self._index_keys(job_id, ("R#", "R$"))
        return self._records(
            job_id, keys, lambda t: t.status == TaskStatus.RUNNING and t.phase == phase
        )

    def live_tasks(self, job_id: str, now: float) -> Iterator[TaskRecord]:
        """One key range per shard: the RUNNING entries (as many as there are workers), never
        every unfinished task. Every one: an entry's expiry may lag its lease's (INDEX_STEP)."""
        keys = self._index_keys(job_id, ("R#", "R$"))
        return self._records(
            job_id,
            keys,
            lambda t: t.status == TaskStatus.RUNNING and (t.lease_expires or 0) > now,
        )

    def pending_tasks(self, job_id: str, phase: str) -> Iterator[TaskRecord]:
        keys = self._index_keys(job_id, ("P#", "P$"))
        return self._records(
            job_id, keys, lambda t: t.status == TaskStatus.PENDING and t.phase == phase
        )

    def iter_tasks(
        self, job_id: str, *, phase: str | None = None, status: TaskStatus | None = None
    ) -> Iterator[TaskRecord]:
        shards = self.task_shards(job_id)
        if not shards:
            return iter(())
        pages = [self._shard_tasks(job_id, k, phase, status) for k in range(shards)]
        return heapq.merge(*pages, key=lambda t: t.task_id)

    def _shard_tasks(
        self, job_id: str, shard: int, phase: str | None, status: TaskStatus | None
    ) -> Iterable[TaskRecord]:
        e = Expr()
        kwargs: dict[str, Any] = {}
        filters = {k: v for k, v in (("phase", phase), ("status", status)) if v is not None}
        if filters:
            kwargs["FilterExpression"] = " AND ".join(e.eq(k, v) for k, v in filters.items())
        cond = f"pk = {e.v(task_pk(job_id, shard))} AND begins_with(sk, {e.v('TASK#')})"
        for item in self.t.query(
            KeyConditionExpression=cond, ConsistentRead=True, **e.args(**kwargs)
        ):
            yield task_from(job_id, item)

    def get_versioned(self, job_id: str, name: str) -> Versioned | None:
        item = self.t.get(_KEYS["doc"](Ref("doc", job_id, name)))
        if item is None:
            return None
        return Versioned(int(item["version"]["N"]), base64.b64decode(item["value"]["S"]))

    def counters(
        self, job_id: str, *, metrics: bool = True, running: bool = True
    ) -> dict[str, int]:
        """The shards summed; with `running`, RUNNING told apart from PENDING by the index's
        RUNNING entries (one keys-only range per task shard: O(running), eventually
        consistent), since claims and releases move no counter (`fold_running`)."""
        keys = counter_keys(job_id) if metrics else [shard_key(job_id, k) for k in range(SHARDS)]
        out: dict[str, int] = {}
        for item in self.t.batch_get(keys).values():
            for name, value in item.items():
                if name not in ("pk", "sk"):
                    out[name] = out.get(name, 0) + int(value["N"])
        if not running:
            return out
        if not any(unfinished_by_phase(out).values()):
            return split_running(out, 0)  # nothing unfinished (a job done): no index to read
        try:
            live = len(self._index_keys(job_id, ("R#", "R$")))
        except JobStateError:  # the previous layout: its claims moved RUNNING themselves
            return out
        return split_running(out, live)
