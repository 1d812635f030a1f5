"""The DynamoDB state store: one table, one sparse GSI, the store primitives of `StateStore`.

The transitions themselves (claim, heartbeat, release, commit, fail, the job lease) are decided in
`protocol.py`, written once for every store; this module applies the conditional writes they
produce (`_write`), with what only DynamoDB needs: the condition compiled to a
ConditionExpression, the counter shard a write moves (a task's own, `crc32(task_id) % 16`; a
job's, shard 0) in the same TransactWriteItems, the unfinished-task GSI keys removed when a task
finishes, the task retention stamps when a job's status changes, and a lost answer (a timeout
after sending) resolved by reading the record again. The layout is in `dynamo.py` (and
docs/aws.md, with the cost of each access).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from slurmctl.backends import protocol
from slurmctl.backends.aws import retention
from slurmctl.backends.aws.buckets import RateBuckets
from slurmctl.backends.aws.dynamo import (
    CCF,
    GSI,
    JOBS_GSI_PK,
    SHARDS,
    Expr,
    Item,
    Table,
    bucket_key,
    condition,
    decode,
    job_from,
    job_key,
    job_pk,
    key,
    key_of,
    shard_key,
    shard_of,
    task_from,
    task_item,
    task_key,
)
from slurmctl.backends.aws.session import AwsConnectionError, AwsTimeout, Service
from slurmctl.backends.protocol import Kind, Ref, Write
from slurmctl.backends.statestore import JobRecord, StateStore, TaskRecord, Versioned
from slurmctl.states import UNFINISHED, JobStatus, TaskStatus

AMBIGUOUS_ROUNDS = 3
"""How often a write whose answer was lost is re-read and tried again before the error stands."""
UNINDEXED = {"gsi_pk": None, "gsi_sk": None}
"""Removing the GSI key attributes takes a finished task out of the sparse index."""


_KEYS: dict[Kind, Callable[[Ref], Item]] = {
    "job": lambda r: job_key(r.job_id),
    "task": lambda r: task_key(r.job_id, r.name),
    "lease": lambda r: key(job_pk(r.job_id), "LEASE"),
    "doc": lambda r: key(job_pk(r.job_id), f"DOC#{r.name}"),
}
"""Where each kind of record lives. A versioned document is `JOB#<job_id>` / `DOC#<name>`, so
`delete_job`'s query of the job's partition finds it; its value is stored as base64 text (every
attribute of the table stays text or a number)."""


class DynamoStateStore(RateBuckets, StateStore):
    def __init__(self, ddb: Service, table: str) -> None:
        self.t = Table(ddb, table)

    def close(self) -> None:
        self.t.ddb.close()

    # --- the write primitive ------------------------------------------------------------------
    def _write(self, w: Write) -> bool:
        """One conditional write. A task or lease write whose answer was lost (a timeout, a
        dropped connection: it may have been applied) is resolved by reading the record again:
        applied, refused (its condition no longer holds), or still to do (tried again)."""
        lost: Exception | None = None
        for _ in range(AMBIGUOUS_ROUNDS):
            try:
                return self._write_once(w)
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

    def _write_once(self, w: Write) -> bool:
        k = _KEYS[w.ref.kind](w.ref)
        e = Expr()
        cond = condition(e, w.cond)
        sets = {f: v for f, v in w.sets.items() if f not in ("job_id", "task_id")}
        if w.ref.kind == "task" and sets.get("status") in protocol.FINISHED:
            sets |= UNINDEXED
        elif w.ref.kind == "task" and "phase" in sets:  # a whole record, unfinished: indexed
            sets |= {"gsi_pk": job_pk(w.ref.job_id), "gsi_sk": f"{sets['phase']}#{w.ref.name}"}
        if w.ref.kind == "doc" and isinstance(sets.get("value"), bytes):
            sets["value"] = base64.b64encode(sets["value"]).decode()
        creating = w.cond == protocol.ABSENT
        if creating:  # a new record: nothing to REMOVE; a job is listed through the GSI
            sets = {f: v for f, v in sets.items() if v is not None}
            if w.ref.kind == "job":
                sets |= {"gsi_pk": JOBS_GSI_PK, "gsi_sk": w.ref.job_id}
        if w.delete:
            op = {"Delete": e.args(TableName=self.t.name, Key=k, ConditionExpression=cond)}
        elif sets:
            op = self.t.update_op(k, e.update(sets), e, cond)
        else:
            op = {"ConditionCheck": e.args(TableName=self.t.name, Key=k, ConditionExpression=cond)}
        ops = [op]
        if w.deltas:
            shard = shard_of(w.ref.name) if w.ref.kind == "task" else 0
            ops.append(self.t.counters_op(w.ref.job_id, shard, w.deltas))
        status = w.sets.get("status") if w.ref.kind == "job" and not creating else None
        terminal = status is not None and JobStatus(status).terminal
        if status is not None:
            retention.before_status(self.t, w.ref.job_id, terminal)
        done = self._transact(ops)
        if done and status is not None:
            retention.after_status(self.t, w.ref.job_id, terminal)
        return done

    def _transact(self, ops: list[dict[str, Any]]) -> bool:
        """A lone Update or Delete is a plain conditional call (half a transaction's cost)."""
        if len(ops) == 1 and ("Update" in ops[0] or "Delete" in ops[0]):
            op, req = next(iter(ops[0].items()))
            call = "update_item" if op == "Update" else "delete_item"
            return self.t.conditional(call, **{k: v for k, v in req.items() if k != "TableName"})
        return self.t.transact(ops) is None

    # --- jobs -------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> JobRecord | None:
        item = self.t.get(job_key(job_id))
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
        for item in self.t.query(
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": job_pk(job_id)}},
            ProjectionExpression="pk, sk",
            ConsistentRead=True,
        ):
            keys.append(key_of(item))
            if item["sk"]["S"].startswith("BUCKET#"):
                buckets.append(item["sk"]["S"].removeprefix("BUCKET#"))
        keys += [shard_key(job_id, k) for k in range(SHARDS)]
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
        return sum(self._put_chunk(unique[i : i + 100]) for i in range(0, len(unique), 100))

    def _put_chunk(self, chunk: list[TaskRecord]) -> int:
        """One transaction of conditional puts (BatchWriteItem cannot be conditional). When some
        exist, the cancellation reasons say which: the rest go again in a new transaction."""
        pending = chunk
        while pending:
            reasons = self.t.transact(
                [
                    {
                        "Put": {
                            "TableName": self.t.name,
                            "Item": task_item(t),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    }
                    for t in pending
                ]
            )
            if reasons is None:
                return len(pending)
            if len(reasons) != len(pending):  # no per-item reasons: one conditional put each
                return sum(
                    self.t.conditional(
                        "put_item",
                        Item=task_item(t),
                        ConditionExpression="attribute_not_exists(pk)",
                    )
                    for t in pending
                )
            pending = [t for t, r in zip(pending, reasons, strict=True) if r != CCF]
        return 0

    def delete_tasks(self, job_id: str, phase: str) -> int:
        keys = [task_key(job_id, t.task_id) for t in self.iter_tasks(job_id, phase=phase)]
        self.t.batch_delete(keys)
        return len(keys)

    def get_task(self, job_id: str, task_id: str) -> TaskRecord | None:
        item = self.t.get(task_key(job_id, task_id))
        return task_from(job_id, item) if item else None

    def unfinished_tasks(self, job_id: str, phase: str | None = None) -> Iterator[TaskRecord]:
        # The sparse GSI (KEYS_ONLY) gives the keys; the records are read consistently, and
        # any that finished since the index saw them (GSIs are eventually consistent) dropped.
        cond = "gsi_pk = :p"
        values = {":p": {"S": job_pk(job_id)}}
        if phase is not None:
            cond += " AND begins_with(gsi_sk, :ph)"
            values[":ph"] = {"S": f"{phase}#"}
        keys: list[Item] = []
        for item in self.t.query(
            IndexName=GSI, KeyConditionExpression=cond, ExpressionAttributeValues=values
        ):
            keys.append(key_of(item))
            if len(keys) == 100:
                yield from self._unfinished(job_id, keys)
                keys = []
        yield from self._unfinished(job_id, keys)

    def _unfinished(self, job_id: str, keys: list[Item]) -> Iterator[TaskRecord]:
        got = self.t.batch_get(keys)
        for k in keys:
            item = got.get((k["pk"]["S"], k["sk"]["S"]))
            if item is not None and decode(item["status"]) in UNFINISHED:
                yield task_from(job_id, item)

    def iter_tasks(
        self, job_id: str, *, phase: str | None = None, status: TaskStatus | None = None
    ) -> Iterator[TaskRecord]:
        e = Expr()
        kwargs: dict[str, Any] = {}
        filters = {k: v for k, v in (("phase", phase), ("status", status)) if v is not None}
        if filters:
            kwargs["FilterExpression"] = " AND ".join(e.eq(k, v) for k, v in filters.items())
        cond = f"pk = {e.v(job_pk(job_id))} AND begins_with(sk, {e.v('TASK#')})"
        for item in self.t.query(
            KeyConditionExpression=cond, ConsistentRead=True, **e.args(**kwargs)
        ):
            yield task_from(job_id, item)

    def get_versioned(self, job_id: str, name: str) -> Versioned | None:
        item = self.t.get(_KEYS["doc"](Ref("doc", job_id, name)))
        if item is None:
            return None
        return Versioned(int(item["version"]["N"]), base64.b64decode(item["value"]["S"]))

    def counters(self, job_id: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.t.batch_get([shard_key(job_id, k) for k in range(SHARDS)]).values():
            for name, value in item.items():
                if name not in ("pk", "sk"):
                    out[name] = out.get(name, 0) + int(value["N"])
        return out
