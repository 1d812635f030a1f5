"""The DynamoDB state store's rate-limit buckets (GCRA, `slurmctl.ratelimit.gcra`): one item each
under its own pk `RATE#<job_id>#<name>`, so the hottest item of a job does not share the job's
partition.

A reservation is one UpdateItem in the common case. While the bucket is busy (TAT far enough
ahead of now that every slot follows TAT, which is the steady state of a job using its whole
rate), reserving is the pure addition `SET tat = tat + :n_intervals`, conditional only on the
bucket's settings (rate, burst, paused, backoff, as last seen by this process) and on
`tat >= :busy_threshold`: no read first, and two reservations never conflict. Otherwise (an idle
bucket, a stale view of the settings) the failed write returns the bucket (ALL_OLD) and the
reservation is computed from it and written on condition that every attribute it was computed
from is unchanged (the stored values themselves are pinned, never a float's repr, so a TAT
written by the addition compares exactly).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from slurmctl.backends.aws.dynamo import (
    CCF_EXC,
    RESERVE_RETRIES,
    Expr,
    Item,
    Table,
    bucket_key,
    job_pk,
    key,
)
from slurmctl.backends.aws.session import error_code, jitter_sleep
from slurmctl.backends.statestore import Bucket, SlotGrant
from slurmctl.errors import SlurmctlError
from slurmctl.ratelimit import gcra

BACKOFF_ATTRS = ("effective", "changed_at", "hold_until")
"""Absent on a bucket written by an older slurmctl: read as 0 (never cut, no hold)."""
SETTINGS = ("rate", "burst", "paused", *BACKOFF_ATTRS)
RELEASE_TOLERANCE_S = 1e-6
"""A release matches the grant's TAT to within this (a TAT written by the addition is a decimal
that the grant's float only approximates, to ~2e-7 s at today's epoch)."""


def bucket_from(job_id: str, item: Item) -> Bucket:
    return Bucket(
        job_id=job_id,
        name=str(item["name"]["S"]),
        rate=float(item["rate"]["N"]),
        burst=int(item["burst"]["N"]),
        tat=float(item["tat"]["N"]),
        paused=bool(item["paused"]["BOOL"]),
        **{k: float(item[k]["N"]) if k in item else 0.0 for k in BACKOFF_ATTRS},
    )


def pinned(e: Expr, item: Item, names: Sequence[str]) -> list[str]:
    """Conditions: each attribute is exactly as stored in item (absent stays absent)."""
    out = []
    for name in names:
        if name in item:
            ph = f":p{len(e.values)}"
            e.values[ph] = item[name]
            out.append(f"{e.n(name)} = {ph}")
        else:
            out.append(f"attribute_not_exists({e.n(name)})")
    return out


def _ceil9(x: float) -> str:
    """x rounded up to the nanosecond, as a short decimal (the stored TAT stays short)."""
    return f"{math.ceil(x * 1e9) / 1e9:.9f}"


class RateBuckets:
    """The bucket methods of the DynamoDB state store (a mixin of DynamoStateStore)."""

    t: Table
    _seen_items: dict[tuple[str, str], Item]
    _busy_seen: dict[tuple[str, str], bool]

    def _seen(self) -> dict[tuple[str, str], Item]:
        """The last state of each bucket this process saw (its settings drive the fast path)."""
        if not hasattr(self, "_seen_items"):
            self._seen_items = {}
        return self._seen_items

    @property
    def _busy(self) -> dict[tuple[str, str], bool]:
        """Whether each bucket was busy (TAT ahead of now) at this process's last grant."""
        if not hasattr(self, "_busy_seen"):
            self._busy_seen = {}
        return self._busy_seen

    def put_bucket(self, bucket: Bucket) -> None:
        self.t.call(  # the pointer under the job's pk: list_buckets and delete_job find it
            "put_item",
            TableName=self.t.name,
            Item=key(job_pk(bucket.job_id), f"BUCKET#{bucket.name}"),
        )
        e = Expr()
        kept = ", ".join(
            f"{e.n(k)} = if_not_exists({e.n(k)}, {e.v(v)})"
            for k, v in (
                ("tat", float(bucket.tat)),
                ("paused", bool(bucket.paused)),
                ("effective", float(bucket.effective)),
                ("changed_at", float(bucket.changed_at)),
                ("hold_until", float(bucket.hold_until)),
            )
        )
        update = (
            f"SET {e.n('name')} = {e.v(bucket.name)}, {e.n('rate')} = {e.v(float(bucket.rate))}, "
            f"{e.n('burst')} = {e.v(int(bucket.burst))}, {kept}"
        )
        self.t.call(
            "update_item",
            TableName=self.t.name,
            Key=bucket_key(bucket.job_id, bucket.name),
            UpdateExpression=update,
            **e.args(),
        )

    def get_bucket(self, job_id: str, name: str) -> Bucket | None:
        item = self.t.get(bucket_key(job_id, name))
        return bucket_from(job_id, item) if item else None

    def _bucket_names(self, job_id: str) -> list[str]:
        return [
            i["sk"]["S"].removeprefix("BUCKET#")
            for i in self.t.query(
                KeyConditionExpression="pk = :p AND begins_with(sk, :b)",
                ExpressionAttributeValues={":p": {"S": job_pk(job_id)}, ":b": {"S": "BUCKET#"}},
                ConsistentRead=True,
            )
        ]

    def list_buckets(self, job_id: str) -> list[Bucket]:
        got = self.t.batch_get([bucket_key(job_id, n) for n in self._bucket_names(job_id)])
        return sorted((bucket_from(job_id, i) for i in got.values()), key=lambda b: b.name)

    def _bucket_write(
        self, job_id: str, name: str, update: str, e: Expr, conditions: list[str]
    ) -> tuple[bool, Item | None]:
        """One conditional UpdateItem: (True, the item before it) or (False, the item now)."""
        k = bucket_key(job_id, name)
        try:
            out = self.t.call(
                "update_item",
                TableName=self.t.name,
                Key=k,
                UpdateExpression=update,
                ConditionExpression=" AND ".join(["attribute_exists(pk)", *conditions]),
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **e.args(),
            )
        except self.t.ClientError as err:
            if error_code(err) != CCF_EXC:
                raise
            now: Item | None = getattr(err, "response", {}).get("Item") or self.t.get(k)
            return False, now
        before: Item | None = out.get("Attributes")
        return True, before

    def _update_from(
        self,
        job_id: str,
        name: str,
        compute: Callable[[Item], Mapping[str, Any] | None],
        pins: Sequence[str],
        item: Item | None = None,
    ) -> tuple[Item | None, Mapping[str, Any] | None, int]:
        """From the bucket (read unless given), compute the attributes to set (None: nothing to
        write) and write them on condition that every pinned attribute is as read; a lost race
        starts again from the bucket the failed write returned.

        Returns (the item the write was computed from, what it set, write attempts).
        """
        if item is None:
            item = self.t.get(bucket_key(job_id, name))
        for attempt in range(RESERVE_RETRIES):
            if item is None:
                return None, None, attempt
            self._seen()[(job_id, name)] = item
            sets = compute(item)
            if sets is None:
                return item, None, attempt
            e = Expr()
            ok, now = self._bucket_write(job_id, name, e.update(sets), e, pinned(e, item, pins))
            if ok:
                return item, sets, attempt + 1
            item = now
            jitter_sleep(attempt, base_s=0.002, cap_s=0.05)
        raise SlurmctlError(f"rate-limit bucket {name!r} of job {job_id}: too much contention")

    def _reserve_blind(
        self, job_id: str, name: str, n: int, now: float, seen: Item
    ) -> tuple[SlotGrant | None, Item | None, int]:
        """Reserve without reading, from the settings last seen: TAT >= now, the addition
        `tat + n/eff`; TAT < now, `tat = now + n/eff`. Returns (grant, None, writes), or (None,
        the bucket as it is, writes) when its settings are not the ones seen."""
        b = bucket_from(job_id, seen)
        # the spacing `gcra.plan` uses: the effective rate, paced for a burst under 3
        eff = min(gcra.effective_rate(b.rate, b.backoff, now), gcra.paced_rate(b.rate, b.burst))
        # busy (TAT ahead: an addition, never a conflict) or idle, as the last grant here found
        busy = self._busy.get((job_id, name), True)
        for attempt in range(RESERVE_RETRIES):
            e = Expr()
            tat, at = e.n("tat"), e.v(float(now))
            if busy:
                add = e.v(float(_ceil9(n / eff)))
                update, cond = f"SET {tat} = {tat} + {add}", f"{tat} >= {at}"
            else:  # idle: the grant does not depend on TAT
                idle = gcra.reserve(now, now, n, b.rate, b.burst, eff)[1]
                update, cond = f"SET {tat} = {e.v(float(idle))}", f"{tat} < {at}"
            conditions = [*pinned(e, seen, SETTINGS), cond]
            ok, item = self._bucket_write(job_id, name, update, e, conditions)
            if item is None:
                return None, None, attempt + 1
            if ok:
                old = float(item["tat"]["N"])
                self._busy[(job_id, name)] = old >= now
                times, new_tat = gcra.reserve(old, now, n, b.rate, b.burst, eff)
                grant = SlotGrant(tuple(times), new_tat, rate=eff, configured_rate=b.rate)
                return dataclasses.replace(grant, writes=attempt + 1), None, attempt + 1
            if any(item.get(k) != seen.get(k) for k in SETTINGS):
                return None, item, attempt + 1  # set-rate, pause, a throttle: compute from it
            busy = float(item["tat"]["N"]) >= now  # lost a race to an idle write: try the other
            if attempt:
                jitter_sleep(attempt, base_s=0.002, cap_s=0.05)
        raise SlurmctlError(f"rate-limit bucket {name!r} of job {job_id}: too much contention")

    def reserve_slots(self, job_id: str, name: str, n: int, now: float) -> SlotGrant:
        writes = 0
        item: Item | None = None
        seen = self._seen().get((job_id, name))
        if seen is not None:
            b = bucket_from(job_id, seen)
            if not b.paused and b.hold_until <= now:
                grant, item, writes = self._reserve_blind(job_id, name, n, now, seen)
                if grant is not None:
                    return grant
        plans: list[gcra.Plan] = []

        def compute(item: Item) -> Mapping[str, Any] | None:
            b = bucket_from(job_id, item)
            plans.clear()
            if b.paused:
                return None
            p = gcra.plan(b.tat, now, n, b.rate, b.burst, b.backoff)
            plans.append(p)
            return {"tat": float(p.tat)} if p.times else None

        # The grant was computed from exactly this state: any change in between refuses it.
        got, _sets, attempts = self._update_from(job_id, name, compute, ("tat", *SETTINGS), item)
        if got is None:
            raise KeyError(f"no rate-limit bucket {name!r} for job {job_id}")
        b = bucket_from(job_id, got)
        writes += attempts
        if not plans:  # paused
            return SlotGrant(paused=True, tat=b.tat, configured_rate=b.rate, writes=writes)
        p = plans[0]
        return SlotGrant(
            times=p.times,
            tat=p.tat,
            rate=p.rate,
            configured_rate=b.rate,
            hold_until=p.hold_until,
            writes=writes,
        )

    def release_slots(self, job_id: str, name: str, grant_tat: float, new_tat: float) -> bool:
        e = Expr()
        tat = e.n("tat")
        lo, hi = e.v(grant_tat - RELEASE_TOLERANCE_S), e.v(grant_tat + RELEASE_TOLERANCE_S)
        return self.t.conditional(
            "update_item",
            Key=bucket_key(job_id, name),
            UpdateExpression=e.update({"tat": float(new_tat)}),
            ConditionExpression=f"attribute_exists(pk) AND {tat} BETWEEN {lo} AND {hi}",
            **e.args(),
        )

    def set_buckets_paused(self, job_id: str, paused: bool) -> None:
        for name in self._bucket_names(job_id):
            e = Expr()
            self.t.conditional(
                "update_item",
                Key=bucket_key(job_id, name),
                UpdateExpression=e.update({"paused": bool(paused)}),
                ConditionExpression=e.cond({}),
                **e.args(),
            )

    def set_bucket_rate(
        self, job_id: str, name: str, rate: float, burst: int | None = None
    ) -> Bucket | None:
        def compute(item: Item) -> Mapping[str, Any]:
            sets: dict[str, Any] = {"rate": float(rate), "effective": 0.0, "changed_at": 0.0}
            if burst is not None:
                sets["burst"] = int(burst)
            return sets

        item, _sets, _ = self._update_from(job_id, name, compute, ("rate", "burst"))
        return None if item is None else bucket_from(job_id, item)

    def throttle_bucket(
        self, job_id: str, name: str, now: float, retry_after: float | None = None
    ) -> Bucket | None:
        def compute(item: Item) -> Mapping[str, Any] | None:
            b = bucket_from(job_id, item)
            after = gcra.throttle(b.rate, b.backoff, now, retry_after)
            if after == b.backoff:
                return None
            return {k: float(getattr(after, k)) for k in BACKOFF_ATTRS}

        item, sets, _ = self._update_from(job_id, name, compute, ("rate", *BACKOFF_ATTRS))
        if item is None:
            return None
        b = bucket_from(job_id, item)
        return dataclasses.replace(b, **sets) if sets else b
