"""The DynamoDB state store: one table, one sparse GSI, every transition one transaction.

The layout is in `dynamo.py` (and docs/aws.md, with the cost of each access). Each transition
(claim, release, commit, fail, a job update that moves counters) is one TransactWriteItems: the
conditional task or job update plus the counter shard it moves. A claim first reads the task
(consistent) to learn whether it is a takeover, then pins what it read (status, attempts, token)
in the condition, so a racing claim fails the condition instead of moving the counters twice.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

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
    decode,
    encode,
    job_from,
    job_item,
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
from slurmctl.backends.statestore import (
    ITEMS_FAILED_PERMANENT,
    ITEMS_FAILED_TRANSIENT,
    ITEMS_PENDING,
    ITEMS_SUCCEEDED,
    JOB_FIELDS,
    OUTPUT_ROWS,
    WORKERS_LOST,
    JobRecord,
    StateStore,
    TaskCommit,
    TaskRecord,
    Versioned,
    task_counter,
)
from slurmctl.states import UNFINISHED, JobStatus, TaskStatus

CLAIM_ROUNDS = 3
COMMIT_ROUNDS = 3
RUNNING, PENDING = TaskStatus.RUNNING, TaskStatus.PENDING
UNINDEXED = {"gsi_pk": None, "gsi_sk": None}
"""Removing the GSI key attributes takes a finished task out of the sparse index."""


class DynamoStateStore(RateBuckets, StateStore):
    def __init__(self, ddb: Service, table: str) -> None:
        self.t = Table(ddb, table)

    def close(self) -> None:
        self.t.ddb.close()

    def _write(self, ops: list[dict[str, Any]]) -> bool:
        """One conditional write: a plain UpdateItem when alone (half the cost), else a
        transaction. False when a condition failed (and nothing was written)."""
        if len(ops) == 1 and "Update" in ops[0]:
            req = {k: v for k, v in ops[0]["Update"].items() if k != "TableName"}
            return self.t.conditional("update_item", **req)
        return self.t.transact(ops) is None

    # --- jobs -------------------------------------------------------------------------------
    def create_job(self, job: JobRecord) -> bool:
        return self.t.conditional(
            "put_item", Item=job_item(job), ConditionExpression="attribute_not_exists(pk)"
        )

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
        if "job_id" in changes:
            raise ValueError("a job's id cannot change")
        deltas = {k: d for k, d in (counter_deltas or {}).items() if d}
        k = job_key(job_id)
        if not changes and not deltas:  # a bare condition check: one consistent read
            item = self.t.get(k)
            if item is None:
                return False
            job = dataclasses.asdict(job_from(item))
            return all(job[name] == v for name, v in expect.items())
        e = Expr()
        cond = e.cond(expect)
        if changes:
            op = self.t.update_op(k, e.update(changes), e, cond)
        else:
            op = {"ConditionCheck": e.args(TableName=self.t.name, Key=k, ConditionExpression=cond)}
        ops = [op, self.t.counters_op(job_id, 0, deltas)] if deltas else [op]
        status = changes.get("status")
        terminal = status is not None and JobStatus(status).terminal
        if status is not None:
            retention.before_status(self.t, job_id, terminal)
        done = self._write(ops)
        if done and status is not None:
            retention.after_status(self.t, job_id, terminal)
        return done

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

    def acquire_job_lease(self, job_id: str, holder: str, ttl_s: float, now: float) -> bool:
        return self.t.conditional(
            "put_item",
            Item={
                **key(job_pk(job_id), "LEASE"),
                "holder": {"S": holder},
                "expires": encode(float(now + ttl_s)),
            },
            ConditionExpression="attribute_not_exists(pk) OR holder = :h OR expires <= :now",
            ExpressionAttributeValues={":h": {"S": holder}, ":now": encode(float(now))},
        )

    def job_lease(self, job_id: str) -> tuple[str, float] | None:
        item = self.t.get(key(job_pk(job_id), "LEASE"))
        if item is None:
            return None
        return str(decode(item["holder"])), float(decode(item["expires"], "float"))

    def release_job_lease(self, job_id: str, holder: str) -> None:
        self.t.conditional(
            "delete_item",
            Key=key(job_pk(job_id), "LEASE"),
            ConditionExpression="holder = :h",
            ExpressionAttributeValues={":h": {"S": holder}},
        )

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

    def get_task(self, job_id: str, task_id: str) -> TaskRecord | None:
        item = self.t.get(task_key(job_id, task_id))
        return task_from(job_id, item) if item else None

    def replace_task(
        self, task: TaskRecord, *, expect_status: TaskStatus, counter_deltas: Mapping[str, int]
    ) -> bool:
        e = Expr()
        put = {
            "Put": e.args(
                TableName=self.t.name,
                Item=task_item(task),
                ConditionExpression=e.cond({"status": expect_status}),
            )
        }
        deltas = {k: d for k, d in counter_deltas.items() if d}
        ops = [put, self.t.counters_op(task.job_id, shard_of(task.task_id), deltas)]
        return self.t.transact(ops if deltas else [put]) is None

    def delete_tasks(self, job_id: str, phase: str) -> int:
        keys = [task_key(job_id, t.task_id) for t in self.iter_tasks(job_id, phase=phase)]
        self.t.batch_delete(keys)
        return len(keys)

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
        k = task_key(job_id, task_id)
        for _ in range(CLAIM_ROUNDS):
            item = self.t.get(k)
            if item is None:
                return None
            rec = task_from(job_id, item)
            taking_over = rec.status == RUNNING and (rec.lease_expires or 0) < now
            if rec.status != PENDING and not taking_over:
                return None
            new = dataclasses.replace(
                rec,
                status=RUNNING,
                lease_token=token,
                worker_id=worker_id,
                holder=holder,
                lease_expires=float(now + lease_s),
                attempts=rec.attempts + 1,
                worker_losses=rec.worker_losses + int(taking_over),
                start_time=now if rec.start_time is None else rec.start_time,
            )
            e = Expr()
            # Pin what was read: a claim or release in between changes attempts or status.
            pins: dict[str, Any] = {
                "status": rec.status,
                "attempts": rec.attempts,
                "lease_token": rec.lease_token,
            }
            extra = []
            if taking_over and rec.lease_expires is not None:
                extra.append(f"{e.n('lease_expires')} < {e.v(float(now))}")
            elif taking_over:
                pins["lease_expires"] = None
            changed = ("status", "lease_token", "worker_id", "lease_expires", "attempts")
            sets = {f: getattr(new, f) for f in (*changed, "holder", "worker_losses", "start_time")}
            ops = [self.t.update_op(k, e.update(sets), e, e.cond(pins, *extra))]
            if not taking_over:  # a takeover leaves the counters as they are: RUNNING stays 1
                moves = {task_counter(rec.phase, PENDING): -1, task_counter(rec.phase, RUNNING): 1}
                ops.append(self.t.counters_op(job_id, shard_of(task_id), moves))
            if self._write(ops):
                return new
        return None

    def heartbeat(self, job_id: str, task_id: str, token: str, lease_s: float, now: float) -> bool:
        e = Expr()
        return self.t.conditional(
            "update_item",
            Key=task_key(job_id, task_id),
            UpdateExpression=e.update({"lease_expires": float(now + lease_s)}),
            ConditionExpression=e.cond({"status": RUNNING, "lease_token": token}),
            **e.args(),
        )

    def _fenced(
        self,
        job_id: str,
        task_id: str,
        token: str,
        sets: Callable[[TaskRecord], Mapping[str, Any]],
        deltas: Callable[[str], Mapping[str, int]],
    ) -> bool:
        """RUNNING under token: update the task and move its counters in one transaction."""
        k = task_key(job_id, task_id)
        item = self.t.get(k)  # the phase names the counters; a lost lease needs no transaction
        if item is None:
            return False
        rec = task_from(job_id, item)
        if rec.status != RUNNING or rec.lease_token != token:
            return False
        e = Expr()
        update = self.t.update_op(
            k, e.update(sets(rec)), e, e.cond({"status": RUNNING, "lease_token": token})
        )
        return self._write(
            [update, self.t.counters_op(job_id, shard_of(task_id), deltas(rec.phase))]
        )

    def release_task(
        self,
        job_id: str,
        task_id: str,
        token: str,
        *,
        checkpoint_key: str | None = None,
        checkpoint_sha256: str | None = None,
    ) -> bool:
        def sets(rec: TaskRecord) -> dict[str, Any]:
            out: dict[str, Any] = {
                "status": PENDING,
                "lease_token": None,
                "lease_expires": None,
                "worker_id": None,
            }
            if checkpoint_key:
                out |= {"checkpoint_key": checkpoint_key, "checkpoint_sha256": checkpoint_sha256}
            return out

        return self._fenced(
            job_id,
            task_id,
            token,
            sets,
            lambda phase: {task_counter(phase, RUNNING): -1, task_counter(phase, PENDING): 1},
        )

    def release_dead(self, job_id: str, task_id: str, token: str) -> bool:
        def sets(rec: TaskRecord) -> dict[str, Any]:
            # the condition pins the token: worker_losses cannot change under it
            return {
                "status": PENDING,
                "lease_token": None,
                "lease_expires": None,
                "worker_id": None,
                "worker_losses": rec.worker_losses + 1,
            }

        return self._fenced(
            job_id,
            task_id,
            token,
            sets,
            lambda phase: {
                task_counter(phase, RUNNING): -1,
                task_counter(phase, PENDING): 1,
                WORKERS_LOST: 1,
            },
        )

    def commit_task(self, job_id: str, task_id: str, token: str, commit: TaskCommit) -> bool:
        sets: dict[str, Any] = {
            "status": TaskStatus.SUCCESS,
            "lease_expires": None,
            **{f.name: getattr(commit, f.name) for f in dataclasses.fields(commit)},
            **UNINDEXED,
        }
        done = commit.succeeded + commit.failed_permanent + commit.failed_transient

        def deltas(phase: str) -> dict[str, int]:
            return {
                task_counter(phase, RUNNING): -1,
                task_counter(phase, TaskStatus.SUCCESS): 1,
                ITEMS_PENDING: -done,
                ITEMS_SUCCEEDED: commit.succeeded,
                ITEMS_FAILED_PERMANENT: commit.failed_permanent,
                ITEMS_FAILED_TRANSIENT: commit.failed_transient,
                OUTPUT_ROWS: commit.output_rows,
            }

        lost: Exception | None = None
        for _ in range(COMMIT_ROUNDS):
            try:
                # A clean condition failure is final: botocore's own retries of a transaction
                # reuse its ClientRequestToken, so a retried commit cannot fail on itself.
                return self._fenced(job_id, task_id, token, lambda _: sets, deltas)
            except (AwsTimeout, AwsConnectionError) as e:
                lost = e  # ambiguous: it may have been applied. Re-read before concluding.
            t = self.get_task(job_id, task_id)
            if t is not None and t.status == TaskStatus.SUCCESS and t.lease_token == token:
                return t.output_key == commit.output_key
            if t is None or t.status != RUNNING or t.lease_token != token:
                return False
            # still RUNNING under our token: the commit did not apply; try again
        assert lost is not None
        raise lost

    def fail_task(self, job_id: str, task_id: str, token: str, error: str, now: float) -> bool:
        sets = {
            "status": TaskStatus.FAILED,
            "lease_expires": None,
            "error": error,
            "end_time": float(now),
            **UNINDEXED,
        }
        return self._fenced(
            job_id,
            task_id,
            token,
            lambda _: sets,
            lambda phase: {
                task_counter(phase, RUNNING): -1,
                task_counter(phase, TaskStatus.FAILED): 1,
            },
        )

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

    def counters(self, job_id: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.t.batch_get([shard_key(job_id, k) for k in range(SHARDS)]).values():
            for name, value in item.items():
                if name not in ("pk", "sk"):
                    out[name] = out.get(name, 0) + int(value["N"])
        return out

    # --- versioned documents (the job's output schema) ----------------------------------------
    # One item per document, `JOB#<job_id>` / `DOC#<name>` (so `delete_job`'s query finds it),
    # the value as base64 text (every attribute of the table stays text or a number); the
    # version is the condition of every write.
    def get_versioned(self, job_id: str, name: str) -> Versioned | None:
        item = self.t.get(key(job_pk(job_id), f"DOC#{name}"))
        if item is None:
            return None
        return Versioned(int(item["version"]["N"]), base64.b64decode(item["value"]["S"]))

    def put_versioned(self, job_id: str, name: str, value: bytes, expect_version: int) -> bool:
        cond = "attribute_not_exists(pk)" if expect_version == 0 else "version = :v"
        values = {} if expect_version == 0 else {":v": {"N": str(expect_version)}}
        return self.t.conditional(
            "put_item",
            Item={
                **key(job_pk(job_id), f"DOC#{name}"),
                "version": {"N": str(expect_version + 1)},
                "value": {"S": base64.b64encode(value).decode()},
            },
            ConditionExpression=cond,
            **({"ExpressionAttributeValues": values} if values else {}),
        )
