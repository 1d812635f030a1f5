"""Task retention: DynamoDB's TTL deletes a finished job's task items, if `slurmctl init` set it.

`slurmctl init --retention-days N` enables TTL on the table (attribute `expires_at`, epoch
seconds) and records N in a settings item (pk `CONFIG`, sk `SETTINGS`). The state store then sets
`expires_at = now + N days` on every task item of a job when the job's status becomes terminal
(COMPLETED, FAILED, CANCELLED), and remembers the date on the job record (`tasks_expire_at`).
When a job leaves a terminal status again (`resume`, `retry`), the stamps are removed first; a
job whose task items may already be gone is refused with a one-line error.

Only task items expire: the job record, its counter shards and rate buckets are a few small items
that keep `status`, `list` and `history` working; the S3 objects (manifests, outputs, failure
manifests) follow the bucket's own lifecycle. TTL deletes expired items within a few days after
the date, never before, and such deletes cost no write units.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slurmctl.backends.aws.dynamo import (
    SHARDS_FIELD,
    Item,
    Table,
    decode,
    encode,
    job_key,
    job_pk,
    key,
    key_of,
    task_pk,
)
from slurmctl.errors import JobStateError

TTL_ATTRIBUTE = "expires_at"
JOB_ATTRIBUTE = "tasks_expire_at"
SETTINGS_KEY = key("CONFIG", "SETTINGS")
RETENTION_FIELD = "task_retention_days"
DAY_S = 86400.0
STAMP_THREADS = 8


def retention_days(table: Table) -> float | None:
    """The retention `init` recorded, or None (task items are kept)."""
    item = table.get(SETTINGS_KEY)
    if item is None or RETENTION_FIELD not in item:
        return None
    days = float(decode(item[RETENTION_FIELD], "float"))
    return days if days > 0 else None


def settings_item(days: float | None) -> Item:
    item: Item = dict(SETTINGS_KEY)
    if days:
        item[RETENTION_FIELD] = encode(float(days))
    return item


def _task_keys(table: Table, job_id: str) -> list[Item]:
    """Every task item's key, shard by shard (the job record says how many shards)."""
    job = table.get(job_key(job_id))
    shards = int(job[SHARDS_FIELD]["N"]) if job and SHARDS_FIELD in job else 0
    pks = [task_pk(job_id, k) for k in range(shards)] or [job_pk(job_id)]
    return [
        key_of(i)
        for pk in pks
        for i in table.query(
            KeyConditionExpression="pk = :p AND begins_with(sk, :t)",
            ExpressionAttributeValues={":p": {"S": pk}, ":t": {"S": "TASK#"}},
            ProjectionExpression="pk, sk",
            ConsistentRead=True,
        )
    ]


def _stamp(table: Table, job_id: str, expires_at: float | None) -> None:
    """Set (or remove, with None) the TTL attribute on every task item of the job. Each update
    is conditional on the item existing, so a task deleted meanwhile is not re-created."""
    update: dict[str, Any] = {"ExpressionAttributeNames": {"#e": TTL_ATTRIBUTE}}
    if expires_at is None:
        update["UpdateExpression"] = "REMOVE #e"
    else:
        update["UpdateExpression"] = "SET #e = :e"
        update["ExpressionAttributeValues"] = {":e": {"N": str(int(expires_at))}}

    def one(k: Item) -> None:
        table.conditional(
            "update_item", Key=k, ConditionExpression="attribute_exists(pk)", **update
        )

    keys = _task_keys(table, job_id)
    if len(keys) <= 1:
        for k in keys:
            one(k)
        return
    with ThreadPoolExecutor(min(STAMP_THREADS, len(keys))) as pool:
        for _ in pool.map(one, keys):
            pass


def before_status(table: Table, job_id: str, terminal: bool, now: float | None = None) -> None:
    """Called before a job's status changes: leaving a terminal status takes the stamps off."""
    if terminal:
        return
    item = table.get(job_key(job_id))
    if item is None or JOB_ATTRIBUTE not in item:
        return
    expires = float(decode(item[JOB_ATTRIBUTE], "float"))
    if (now or time.time()) >= expires:
        raise JobStateError(
            f"job {job_id}: its task records expired (the table's task retention, set by "
            "`slurmctl init --retention-days`); submit it again under a new job_id"
        )
    _stamp(table, job_id, None)
    table.conditional(
        "update_item",
        Key=job_key(job_id),
        UpdateExpression="REMOVE #j",
        ExpressionAttributeNames={"#j": JOB_ATTRIBUTE},
        ConditionExpression="attribute_exists(pk)",
    )


def after_status(table: Table, job_id: str, terminal: bool, now: float | None = None) -> None:
    """Called after a job's status became terminal: stamp its task items, if a retention is set.

    The job record is marked first: a stamping that died half way is finished by the next
    terminal transition, and `before_status` knows to undo it."""
    if not terminal:
        return
    days = retention_days(table)
    if days is None:
        return
    expires = (now or time.time()) + days * DAY_S
    table.conditional(
        "update_item",
        Key=job_key(job_id),
        UpdateExpression="SET #j = :e",
        ExpressionAttributeNames={"#j": JOB_ATTRIBUTE},
        ExpressionAttributeValues={":e": encode(float(expires))},
        ConditionExpression="attribute_exists(pk)",
    )
    _stamp(table, job_id, expires)
