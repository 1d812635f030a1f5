"""The DynamoDB table's layout, the record codec, expressions, and the table plumbing.

Items (docs/aws.md has the full layout and the cost of each access):

| item | pk | sk |
| --- | --- | --- |
| job record | `JOB#<job_id>` | `JOB` (gsi_pk `JOBS`, gsi_sk `<job_id>`: `list_jobs`); holds K |
| task | `JOB#<job_id>#T#<k>` | `TASK#<task_id>`, k = crc32(task_id) % K (while unfinished: gsi_pk |
| | | `JOB#<job_id>#U#<k>`, gsi_sk `P#<task_id>` PENDING, `R#<lease_expires>#<task_id>` RUNNING) |
| job lease | `JOB#<job_id>` | `LEASE` |
| bucket pointer | `JOB#<job_id>` | `BUCKET#<name>` (a job's buckets found by a consistent query) |
| counter shard k | `JOB#<job_id>#C#<k>` | `C`, one number per counter (claims, commits, job) |
| metrics shard k | `JOB#<job_id>#M#<k>` | `C`, the same, for counter-only updates (metrics) |
| rate bucket | `RATE#<job_id>#<name>` | `B` |

None is stored as an absent attribute (REMOVE), and `expect={f: None}` is `attribute_not_exists`.
Task items are spread over K partition keys (K from the job's expected tasks and its workers at
creation, recorded on the job record, 1 to 64), and so is their index, so no key takes more
than a fraction of a task's writes (docs/scaling.md). A RUNNING task's index sort key carries
its lease expiry: the reconciler reads the expired leases with one key range per shard, never
every unfinished task.
A job record without `task_shards` was written by the previous layout (every task under
`JOB#<job_id>`): it is refused with one line (`old_layout`).

Floats are numbers written as `repr(x)`, which reads back as the very same float, so a condition
such as `tat = :old` compares exactly what was stored.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from slurmctl.backends.aws.session import Service, error_code, jitter_sleep
from slurmctl.backends.protocol import Cond
from slurmctl.backends.statestore import JobRecord, TaskRecord
from slurmctl.errors import JobStateError, UserError
from slurmctl.states import UNFINISHED, JobStatus, TaskStatus

GSI = "unfinished"
SHARDS = 16
"""Counter shards per job."""
TASK_SHARDS_MIN = 16
TASK_SHARDS_MAX = 64
"""Task partition keys for a job's workers: 16 keep every key under ~0.3 WCU per task (a task
writes its item 3 times, 4 WCU, and its index entry 4); up to 64 for a job of many workers
(heartbeats, index churn)."""
TASKS_PER_SHARD = 250
"""A job's tasks need no more keys than one per this many: a task's life writes ~4 WCU on its
task key and ~4 on its index key, so 250 tasks are one second of one partition's 1,000 WCU/s
over the whole job: such a key is never throttled for long, whatever the rate (a job of 50
tasks has 1 key, where each reconciler pass and each RUNNING count read K index ranges)."""
SHARDS_FIELD = "task_shards"
JOBS_GSI_PK = "JOBS"
TXN_RETRIES = 8
RESERVE_RETRIES = 200
CCF = "ConditionalCheckFailed"
CCF_EXC = "ConditionalCheckFailedException"
RETRYABLE_REASONS = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
Item = dict[str, dict[str, Any]]


# --- keys -------------------------------------------------------------------------------------
def key(pk: str, sk: str) -> Item:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def job_pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def job_key(job_id: str) -> Item:
    return key(job_pk(job_id), "JOB")


def task_shards_for(workers: int, tasks: int | None = None) -> int:
    """K for a new job: a power of two, the smaller of what its workers can write (its task
    rate is bounded by them: one key per 8 workers, between TASK_SHARDS_MIN and
    TASK_SHARDS_MAX) and what its expected tasks need (one key per TASKS_PER_SHARD, at least
    1; None: unknown, the workers' K)."""
    k = TASK_SHARDS_MIN
    while k < TASK_SHARDS_MAX and k * 8 < workers:
        k *= 2
    if tasks is None:
        return k
    need = 1
    while need < k and need * TASKS_PER_SHARD < tasks:
        need *= 2
    return need


def old_layout(job_id: str) -> JobStateError:
    return JobStateError(
        f"job {job_id} was submitted by an earlier slurmctl (every task under one DynamoDB "
        "partition key); this version cannot run it: finish it with that version, or submit "
        "it again under a new job_id"
    )


def task_shard(task_id: str, shards: int) -> int:
    return zlib.crc32(task_id.encode()) % shards


def task_pk(job_id: str, shard: int) -> str:
    return f"{job_pk(job_id)}#T#{shard}"


def task_key(job_id: str, task_id: str, shards: int) -> Item:
    return key(task_pk(job_id, task_shard(task_id, shards)), f"TASK#{task_id}")


def index_pk(job_id: str, shard: int) -> str:
    return f"{job_pk(job_id)}#U#{shard}"


def expiry_text(t: float) -> str:
    """A lease expiry as fixed-width text: sorts as the number does (epoch seconds, >= 0)."""
    return f"{max(t, 0.0):018.6f}"


def index_sk(task_id: str, status: str, lease_expires: float | None) -> str:
    if status == TaskStatus.RUNNING:
        return f"R#{expiry_text(lease_expires or 0.0)}#{task_id}"
    return f"P#{task_id}"


def index_attrs(
    job_id: str, task_id: str, shards: int, status: str, expires: float | None
) -> dict[str, str]:
    return {
        "gsi_pk": index_pk(job_id, task_shard(task_id, shards)),
        "gsi_sk": index_sk(task_id, status, expires),
    }


def shard_of(task_id: str) -> int:
    """The counter shard a task's transitions move: stable across processes (unlike hash())."""
    return zlib.crc32(task_id.encode()) % SHARDS


def shard_key(job_id: str, k: int) -> Item:
    return key(f"{job_pk(job_id)}#C#{k}", "C")


def metrics_key(job_id: str, k: int) -> Item:
    """Metrics shard k: where counter-only updates (the per-task metrics, the time series, the
    breaker) land, apart from the counter shards that commits (and fails, job updates) move in
    their transactions. Those stay a few hundred bytes however long the job runs (1 WCU, 2 in a
    transaction); the metrics shards grow with the time series (to ~3-4 KB after ten hours)
    and only the metrics' own plain ADD pays for it."""
    return key(f"{job_pk(job_id)}#M#{k}", "C")


def counter_keys(job_id: str) -> list[Item]:
    """Every item `counters()` sums: the counter shards and the metrics shards."""
    return [f(job_id, k) for f in (shard_key, metrics_key) for k in range(SHARDS)]


def bucket_key(job_id: str, name: str) -> Item:
    return key(f"RATE#{job_id}#{name}", "B")


def key_of(item: Item) -> Item:
    return key(item["pk"]["S"], item["sk"]["S"])


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


def decode(a: Mapping[str, Any], kind: str = "") -> Any:
    if "NULL" in a:
        return None
    if "BOOL" in a:
        return bool(a["BOOL"])
    if "N" in a:
        return float(a["N"]) if kind == "float" else int(a["N"])
    return str(a["S"])


def _kinds(cls: type) -> dict[str, tuple[str, Any]]:
    out = {}
    for f in dataclasses.fields(cls):
        t = str(f.type)
        kind = (
            "bool" if "bool" in t else "float" if "float" in t else "int" if "int" in t else "str"
        )
        out[f.name] = (kind, None if f.default is dataclasses.MISSING else f.default)
    return out


KINDS = {JobRecord: _kinds(JobRecord), TaskRecord: _kinds(TaskRecord)}


def _fields(cls: type, item: Item, fixed: dict[str, Any]) -> dict[str, Any]:
    d = dict(fixed)
    for name, (kind, default) in KINDS[cls].items():
        if name not in d:
            d[name] = decode(item[name], kind) if name in item else default
    return d


def attrs(values: Mapping[str, Any], skip: Iterable[str] = ()) -> Item:
    return {k: encode(v) for k, v in values.items() if v is not None and k not in skip}


def job_from(item: Item) -> JobRecord:
    d = _fields(JobRecord, item, {"job_id": item["pk"]["S"].removeprefix("JOB#")})
    return JobRecord(**{**d, "status": JobStatus(d["status"])})


def job_item(job: JobRecord) -> Item:
    return {
        **job_key(job.job_id),
        **attrs(dataclasses.asdict(job), ("job_id",)),
        "gsi_pk": {"S": JOBS_GSI_PK},
        "gsi_sk": {"S": job.job_id},
    }


def task_from(job_id: str, item: Item) -> TaskRecord:
    d = _fields(TaskRecord, item, {"job_id": job_id, "task_id": item["sk"]["S"][5:]})
    return TaskRecord(**{**d, "status": TaskStatus(d["status"])})


def task_item(t: TaskRecord, shards: int) -> Item:
    """The task's whole item (put_tasks: the primitive a parallel writer calls per chunk)."""
    item = {**task_key(t.job_id, t.task_id, shards), **attrs(t.to_dict(), ("job_id", "task_id"))}
    if t.status in UNFINISHED:
        index = index_attrs(t.job_id, t.task_id, shards, t.status, t.lease_expires)
        item |= {k: {"S": v} for k, v in index.items()}
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

    def cond(self, pins: Mapping[str, Any], *extra: str) -> str:
        """The item exists, every pinned attribute has its value, and the extra clauses hold."""
        return " AND ".join(
            ["attribute_exists(pk)", *(self.eq(k, v) for k, v in pins.items()), *extra]
        )

    def update(self, sets: Mapping[str, Any], adds: Mapping[str, int] | None = None) -> str:
        """SET the non-None values, REMOVE the None ones, ADD the non-zero increments."""
        s = [f"{self.n(k)} = {self.v(v)}" for k, v in sets.items() if v is not None]
        r = [self.n(k) for k, v in sets.items() if v is None]
        a = [f"{self.n(k)} {self.v(d)}" for k, d in (adds or {}).items() if d]
        return " ".join(
            f"{w} {', '.join(p)}" for w, p in (("SET", s), ("REMOVE", r), ("ADD", a)) if p
        )

    def args(self, **extra: Any) -> dict[str, Any]:
        out = dict(extra)
        if self.names:
            out["ExpressionAttributeNames"] = self.names
        if self.values:
            out["ExpressionAttributeValues"] = self.values
        return out


def condition(e: Expr, c: Cond) -> str:
    """A protocol condition as a ConditionExpression (with its placeholders in e).

    `eq(f, None)` says the record exists and f is unset: DynamoDB's `attribute_not_exists(f)`
    alone would also hold on an absent item."""
    if c.op == "absent":
        return "attribute_not_exists(pk)"
    if c.op == "present":
        return "attribute_exists(pk)"
    if c.op in ("all", "any"):
        joiner = " AND " if c.op == "all" else " OR "
        return "(" + joiner.join(condition(e, p) for p in c.parts) + ")"
    if c.op == "eq" and c.value is None:
        return f"(attribute_exists(pk) AND attribute_not_exists({e.n(c.field)}))"
    op = {"eq": "=", "lt": "<", "le": "<="}[c.op]
    return f"{e.n(c.field)} {op} {e.v(c.value)}"


class Table:
    """One table's calls: missing table as a user error, batches with retries of the unprocessed
    part, transactions retried on conflicts."""

    def __init__(self, ddb: Service, name: str) -> None:
        self.ddb = ddb
        self.name = name
        self.ClientError = ddb.ClientError

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return self.ddb.call(op, **kwargs)
        except self.ClientError as e:
            if error_code(e) == "ResourceNotFoundException":
                raise UserError(
                    f"DynamoDB table {self.name!r} not found at {self.ddb.endpoint}: "
                    "create it with `slurmctl init`"
                ) from e
            raise

    def get(self, k: Item) -> Item | None:
        item: Item | None = self.call(
            "get_item", TableName=self.name, Key=k, ConsistentRead=True
        ).get("Item")
        return item

    def conditional(self, op: str, **kwargs: Any) -> bool:
        """A single conditional write: False when its condition failed."""
        try:
            self.call(op, TableName=self.name, **kwargs)
        except self.ClientError as e:
            if error_code(e) == CCF_EXC:
                return False
            raise
        return True

    def batch_get(self, keys: Sequence[Item]) -> dict[tuple[str, str], Item]:
        """Strongly consistent BatchGetItem, 100 keys a call, unprocessed keys retried."""
        out: dict[tuple[str, str], Item] = {}
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {
                self.name: {"Keys": list(keys[start : start + 100]), "ConsistentRead": True}
            }
            attempt = 0
            while request:
                resp = self.call("batch_get_item", RequestItems=request)
                for item in resp.get("Responses", {}).get(self.name, []):
                    out[(item["pk"]["S"], item["sk"]["S"])] = item
                request = resp.get("UnprocessedKeys") or {}
                if request:
                    jitter_sleep(attempt, base_s=0.05)
                    attempt += 1
        return out

    def batch_delete(self, keys: Sequence[Item]) -> None:
        for start in range(0, len(keys), 25):
            request: dict[str, Any] = {
                self.name: [{"DeleteRequest": {"Key": k}} for k in keys[start : start + 25]]
            }
            attempt = 0
            while request:
                resp = self.call("batch_write_item", RequestItems=request)
                request = resp.get("UnprocessedItems") or {}
                if request:
                    jitter_sleep(attempt, base_s=0.05)
                    attempt += 1

    def query(self, **kwargs: Any) -> Iterator[Item]:
        while True:
            page = self.call("query", TableName=self.name, **kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """One TransactWriteItems: None when applied, the cancellation reason codes when a
        condition failed. Conflicts with other transactions are retried with jitter."""
        for attempt in range(TXN_RETRIES):
            try:
                self.call("transact_write_items", TransactItems=items)
                return None
            except self.ClientError as e:
                code = error_code(e)
                last = attempt + 1 == TXN_RETRIES
                if code == "TransactionInProgressException" and not last:
                    jitter_sleep(attempt, base_s=0.05)
                    continue
                if code != "TransactionCanceledException":
                    raise
                resp: dict[str, Any] = getattr(e, "response", {})
                reasons = [str(r.get("Code", "None")) for r in resp.get("CancellationReasons", [])]
                if CCF in reasons:
                    return reasons
                if RETRYABLE_REASONS & set(reasons) and not last:
                    jitter_sleep(attempt, base_s=0.02)
                    continue
                raise
        raise AssertionError("unreachable")

    def update_op(
        self, k: Item, update: str, e: Expr, condition: str | None = None
    ) -> dict[str, Any]:
        """An Update for a transaction."""
        req = e.args(TableName=self.name, Key=k, UpdateExpression=update)
        if condition:
            req["ConditionExpression"] = condition
        return {"Update": req}

    def counters_op(self, k: Item, deltas: Mapping[str, int]) -> dict[str, Any]:
        """ADD the deltas to one counter or metrics shard (created by the first ADD)."""
        e = Expr()
        return self.update_op(k, e.update({}, deltas), e)
