"""The DynamoDB state store: one table (pk, sk), one sparse GSI, every transition one transaction.

Items (docs/aws.md has the full layout and costs):

| item | pk | sk |
| --- | --- | --- |
| job record | `JOB#<job_id>` | `JOB` (gsi_pk `JOBS`, gsi_sk `<job_id>`: `list_jobs`) |
| task | `JOB#<job_id>` | `TASK#<task_id>` (gsi_pk `JOB#<job_id>`, gsi_sk `<phase>#<task_id>` while unfinished) |
| job lease | `JOB#<job_id>` | `LEASE` |
| bucket pointer | `JOB#<job_id>` | `BUCKET#<name>` (so the job's buckets are found by a consistent query) |
| counter shard k | `JOB#<job_id>#C#<k>` | `C`, one number per counter name |
| rate bucket | `RATE#<job_id>#<name>` | `B` |

None is stored as an absent attribute (REMOVE), and `expect={f: None}` is `attribute_not_exists`.
Floats are numbers written as `repr(x)`, which reads back as the very same float, so a condition
such as `tat = :old` compares exactly what was stored.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from slurmctl.backends.aws.session import AwsConnectionError, AwsTimeout, Service, error_code
from slurmctl.backends.aws.session import jitter_sleep as _backoff
from slurmctl.backends.statestore import (
    ITEMS_FAILED_PERMANENT,
    ITEMS_FAILED_TRANSIENT,
    ITEMS_PENDING,
    ITEMS_SUCCEEDED,
    JOB_FIELDS,
    OUTPUT_ROWS,
    Bucket,
    JobRecord,
    SlotGrant,
    StateStore,
    TaskCommit,
    TaskRecord,
    task_counter,
)
from slurmctl.errors import SlurmctlError, UserError
from slurmctl.ratelimit import gcra
from slurmctl.states import UNFINISHED, JobStatus, TaskStatus

GSI = "unfinished"
SHARDS = 16
JOBS_GSI_PK = "JOBS"
TXN_RETRIES = 8
CLAIM_ROUNDS = 3
RESERVE_RETRIES = 200
CCF = "ConditionalCheckFailed"
RETRYABLE_REASONS = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
Item = dict[str, dict[str, Any]]


def job_pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def shard_of(task_id: str) -> int:
    """Stable across processes and Python versions (unlike hash())."""
    return zlib.crc32(task_id.encode()) % SHARDS


def shard_key(job_id: str, k: int) -> Item:
    return {"pk": {"S": f"{job_pk(job_id)}#C#{k}"}, "sk": {"S": "C"}}


def _key(pk: str, sk: str) -> Item:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def task_key(job_id: str, task_id: str) -> Item:
    return _key(job_pk(job_id), f"TASK#{task_id}")


def bucket_key(job_id: str, name: str) -> Item:
    return _key(f"RATE#{job_id}#{name}", "B")


# --- codec ------------------------------------------------------------------------------------
def encode(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"BOOL": v}
    if isinstance(v, int):
        return {"N": str(v)}
    if isinstance(v, float):
        return {"N": repr(v)}
    if isinstance(v, str):
        return {"S": str(v)}
    raise TypeError(f"cannot store {type(v).__name__} in DynamoDB: {v!r}")


def _kinds(cls: type) -> dict[str, tuple[str, Any]]:
    out = {}
    for f in dataclasses.fields(cls):
        t = str(f.type)
        kind = "bool" if "bool" in t else "float" if "float" in t else "int" if "int" in t else "str"
        out[f.name] = (kind, None if f.default is dataclasses.MISSING else f.default)
    return out


KINDS = {JobRecord: _kinds(JobRecord), TaskRecord: _kinds(TaskRecord)}


def decode(a: Mapping[str, Any], kind: str) -> Any:
    if "NULL" in a:
        return None
    if "BOOL" in a:
        return bool(a["BOOL"])
    if "N" in a:
        return float(a["N"]) if kind == "float" else int(a["N"])
    return str(a["S"])


def _fields(cls: type, item: Item, fixed: dict[str, Any]) -> dict[str, Any]:
    d = dict(fixed)
    for name, (kind, default) in KINDS[cls].items():
        if name not in d:
            d[name] = decode(item[name], kind) if name in item else default
    return d


def job_from(item: Item) -> JobRecord:
    d = _fields(JobRecord, item, {"job_id": item["pk"]["S"].removeprefix("JOB#")})
    return JobRecord(**{**d, "status": JobStatus(d["status"])})


def task_from(job_id: str, item: Item) -> TaskRecord:
    d = _fields(TaskRecord, item, {"job_id": job_id, "task_id": item["sk"]["S"][5:]})
    return TaskRecord(**{**d, "status": TaskStatus(d["status"])})


def _attrs(values: Mapping[str, Any], skip: Iterable[str] = ()) -> Item:
    return {k: encode(v) for k, v in values.items() if v is not None and k not in skip}


def task_item(t: TaskRecord) -> Item:
    item = {**task_key(t.job_id, t.task_id), **_attrs(t.to_dict(), ("job_id", "task_id"))}
    if t.status in UNFINISHED:
        item |= {"gsi_pk": {"S": job_pk(t.job_id)}, "gsi_sk": {"S": f"{t.phase}#{t.task_id}"}}
    return item


class Expr:
    """Placeholders for one request's expressions (every name goes through #n: dots, keywords)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, dict[str, Any]] = {}

    def n(self, name: str) -> str:
        for ph, known in self.names.items():
            if known == name:
                return ph
        ph = f"#n{len(self.names)}"
        self.names[ph] = name
        return ph

    def v(self, value: Any) -> str:
        ph = f":v{len(self.values)}"
        self.values[ph] = encode(value)
        return ph

    def eq(self, name: str, value: Any) -> str:
        if value is None:
            return f"attribute_not_exists({self.n(name)})"
        return f"{self.n(name)} = {self.v(value)}"

    def update(self, sets: Mapping[str, Any], adds: Mapping[str, int] | None = None) -> str:
        """SET the non-None values, REMOVE the None ones, ADD the (non-zero) increments."""
        parts = []
        s = [f"{self.n(k)} = {self.v(v)}" for k, v in sets.items() if v is not None]
        r = [self.n(k) for k, v in sets.items() if v is None]
        a = [f"{self.n(k)} {self.v(d)}" for k, d in (adds or {}).items() if d]
        for word, items in (("SET", s), ("REMOVE", r), ("ADD", a)):
            if items:
                parts.append(f"{word} {', '.join(items)}")
        return " ".join(parts)

    def args(self, **extra: Any) -> dict[str, Any]:
        out = dict(extra)
        if self.names:
            out["ExpressionAttributeNames"] = self.names
        if self.values:
            out["ExpressionAttributeValues"] = self.values
        return out


def _phase(item: Item) -> str:
    return str(item["phase"]["S"])


class DynamoStateStore(StateStore):
    def __init__(self, ddb: Service, table: str) -> None:
        self.ddb = ddb
        self.table = table

    def close(self) -> None:
        self.ddb.close()

    # --- plumbing ---------------------------------------------------------------------------
    def _call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return self.ddb.call(op, **kwargs)
        except self.ddb.ClientError as e:
            if error_code(e) == "ResourceNotFoundException":
                raise UserError(
                    f"DynamoDB table {self.table!r} not found at {self.ddb.endpoint}: "
                    "create it with `slurmctl init`"
                ) from e
            raise

    def _get(self, key: Item) -> Item | None:
        item = self._call("get_item", TableName=self.table, Key=key, ConsistentRead=True)
        return item.get("Item")

    def _batch_get(self, keys: Sequence[Item]) -> dict[tuple[str, str], Item]:
        """Strongly consistent BatchGetItem, 100 keys a call, unprocessed keys retried."""
        out: dict[tuple[str, str], Item] = {}
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {
                self.table: {"Keys": list(keys[start : start + 100]), "ConsistentRead": True}
            }
            attempt = 0
            while request:
                resp = self._call("batch_get_item", RequestItems=request)
                for item in resp.get("Responses", {}).get(self.table, []):
                    out[(item["pk"]["S"], item["sk"]["S"])] = item
                request = resp.get("UnprocessedKeys") or {}
                if request:
                    _backoff(attempt, base_s=0.05)
                    attempt += 1
        return out

    def _query(self, **kwargs: Any) -> Iterator[Item]:
        while True:
            page = self._call("query", TableName=self.table, **kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """None when applied; the cancellation reason codes when a condition failed."""
        for attempt in range(TXN_RETRIES):
            try:
                self._call("transact_write_items", TransactItems=items)
                return None
            except self.ddb.ClientError as e:
                code = error_code(e)
                if code == "TransactionInProgressException" and attempt + 1 < TXN_RETRIES:
                    _backoff(attempt, base_s=0.05)
                    continue
                if code != "TransactionCanceledException":
                    raise
                resp: dict[str, Any] = getattr(e, "response", {})
                reasons = [str(r.get("Code", "None")) for r in resp.get("CancellationReasons", [])]
                if CCF in reasons:
                    return reasons
                if RETRYABLE_REASONS & set(reasons) and attempt + 1 < TXN_RETRIES:
                    _backoff(attempt, base_s=0.02)
                    continue
                raise
        raise AssertionError("unreachable")

    def _counter_update(self, job_id: str, shard: int, deltas: Mapping[str, int]) -> dict[str, Any]:
        e = Expr()
        return {
            "Update": e.args(
                TableName=self.table,
                Key=shard_key(job_id, shard),
                UpdateExpression=e.update({}, deltas),
            )
        }

    def _task_update(
        self, job_id: str, task_id: str, sets: Mapping[str, Any], cond: list[tuple[str, Any]]
    ) -> dict[str, Any]:
        e = Expr()
        expr = e.update(sets)
        condition = " AND ".join(["attribute_exists(pk)", *(e.eq(k, v) for k, v in cond)])
        return {
            "Update": e.args(
                TableName=self.table,
                Key=task_key(job_id, task_id),
                UpdateExpression=expr,
                ConditionExpression=condition,
            )
        }

    # --- jobs -------------------------------------------------------------------------------
    def create_job(self, job: JobRecord) -> bool:
        item = {
            **_key(job_pk(job.job_id), "JOB"),
            **_attrs(dataclasses.asdict(job), ("job_id",)),
            "gsi_pk": {"S": JOBS_GSI_PK},
            "gsi_sk": {"S": job.job_id},
        }
        try:
            self._call(
                "put_item",
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self.ddb.ClientError as e:
            if error_code(e) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def get_job(self, job_id: str) -> JobRecord | None:
        item = self._get(_key(job_pk(job_id), "JOB"))
        return job_from(item) if item else None

    def list_jobs(self) -> list[JobRecord]:
        # The GSI holds every job record's key (gsi_pk JOBS); the records are read consistently.
        keys = [
            _key(i["pk"]["S"], i["sk"]["S"])
            for i in self._query(
                IndexName=GSI,
                KeyConditionExpression="gsi_pk = :p",
                ExpressionAttributeValues={":p": {"S": JOBS_GSI_PK}},
            )
        ]
        jobs = [job_from(i) for i in self._batch_get(keys).values()]
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
            raise ValueError("the job id cannot change")
        e = Expr()
        cond = " AND ".join(["attribute_exists(pk)", *(e.eq(k, v) for k, v in expect.items())])
        key = _key(job_pk(job_id), "JOB")
        deltas = {k: d for k, d in (counter_deltas or {}).items() if d}
        if changes:
            op = "Update"
            req = e.args(
                TableName=self.table,
                Key=key,
                UpdateExpression=e.update(changes),
                ConditionExpression=cond,
            )
        else:
            op = "ConditionCheck"
            req = e.args(TableName=self.table, Key=key, ConditionExpression=cond)
        if not deltas:
            if op == "ConditionCheck":
                return self._matches(key, expect)
            try:
                self._call("update_item", **req)
            except self.ddb.ClientError as err:
                if error_code(err) == "ConditionalCheckFailedException":
                    return False
                raise
            return True
        return self._transact([{op: req}, self._counter_update(job_id, 0, deltas)]) is None

    def _matches(self, key: Item, expect: Mapping[str, Any]) -> bool:
        """A condition check alone (no change, no counters): one consistent read."""
        item = self._get(key)
        if item is None:
            return False
        return all(
            (item.get(k) is None) if v is None else item.get(k) == encode(v)
            for k, v in expect.items()
        )

    def delete_job(self, job_id: str) -> None:
        keys: list[Item] = []
        buckets = []
        for item in self._query(
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": job_pk(job_id)}},
            ProjectionExpression="pk, sk",
            ConsistentRead=True,
        ):
            keys.append(_key(item["pk"]["S"], item["sk"]["S"]))
            if item["sk"]["S"].startswith("BUCKET#"):
                buckets.append(item["sk"]["S"].removeprefix("BUCKET#"))
        keys += [shard_key(job_id, k) for k in range(SHARDS)]
        keys += [bucket_key(job_id, name) for name in buckets]
        for start in range(0, len(keys), 25):
            request: dict[str, Any] = {
                self.table: [{"DeleteRequest": {"Key": k}} for k in keys[start : start + 25]]
            }
            attempt = 0
            while request:
                resp = self._call("batch_write_item", RequestItems=request)
                request = resp.get("UnprocessedItems") or {}
                if request:
                    _backoff(attempt, base_s=0.05)
                    attempt += 1

    def acquire_job_lease(self, job_id: str, holder: str, ttl_s: float, now: float) -> bool:
        try:
            self._call(
                "put_item",
                TableName=self.table,
                Item={
                    **_key(job_pk(job_id), "LEASE"),
                    "holder": {"S": holder},
                    "expires": encode(float(now + ttl_s)),
                },
                ConditionExpression="attribute_not_exists(pk) OR holder = :h OR expires <= :now",
                ExpressionAttributeValues={":h": {"S": holder}, ":now": encode(float(now))},
            )
        except self.ddb.ClientError as e:
            if error_code(e) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def release_job_lease(self, job_id: str, holder: str) -> None:
        try:
            self._call(
                "delete_item",
                TableName=self.table,
                Key=_key(job_pk(job_id), "LEASE"),
                ConditionExpression="holder = :h",
                ExpressionAttributeValues={":h": {"S": holder}},
            )
        except self.ddb.ClientError as e:
            if error_code(e) != "ConditionalCheckFailedException":
                raise

    # --- tasks ------------------------------------------------------------------------------
    def put_tasks(self, tasks: Sequence[TaskRecord]) -> int:
        unique = list({t.task_id: t for t in reversed(tasks)}.values())[::-1]  # first one wins
        new = 0
        for start in range(0, len(unique), 100):
            new += self._put_chunk(unique[start : start + 100])
        return new

    def _put_chunk(self, chunk: list[TaskRecord]) -> int:
        """One transaction of conditional puts; items that exist are dropped and the rest retried
        (the cancellation reasons say which ones existed)."""
        pending = chunk
        while pending:
            reasons = self._transact(
                [
                    {
                        "Put": {
                            "TableName": self.table,
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
                return self._put_each(pending)
            pending = [t for t, r in zip(pending, reasons, strict=True) if r != CCF]
        return 0

    def _put_each(self, tasks: Sequence[TaskRecord]) -> int:
        new = 0
        for t in tasks:
            try:
                self._call(
                    "put_item",
                    TableName=self.table,
                    Item=task_item(t),
                    ConditionExpression="attribute_not_exists(pk)",
                )
                new += 1
            except self.ddb.ClientError as e:
                if error_code(e) != "ConditionalCheckFailedException":
                    raise
        return new

    def get_task(self, job_id: str, task_id: str) -> TaskRecord | None:
        item = self._get(task_key(job_id, task_id))
        return task_from(job_id, item) if item else None
