"""DynamoDB capacity as AWS bills it, measured inside moto: the accounting layer of
bench/request_costs.py (its server process imports this module).

`Accounting` is a WSGI middleware placed inside the tests' DynamoDB lock (tests/moto_launch.py),
so the items it looks up in moto's backend just before and just after a request are exactly the
ones that request read and wrote. For every DynamoDB request it charges write units (1 per KB of
the larger of the item before and after, at least 1, x2 in TransactWriteItems, ConditionCheck
included; 1 per KEYS_ONLY index entry added or removed) and read units (1 per 4 KB consistent,
half eventually consistent; a Query on the summed size of what it read) to the partition key
they land on; every request of any service is counted by operation.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import common
import scale_aws

COUNTS_PATH = "/__bench__/counts"
WCU_BYTES = 1024
RCU_BYTES = 4096


# --- item sizes as AWS counts them ---------------------------------------------------------
def value_size(v: dict[str, Any]) -> int:
    ((kind, x),) = v.items()
    if kind == "S":
        return len(str(x).encode())
    if kind == "N":  # ~1 byte per 2 significant digits + 1
        digits = len(re.sub(r"[^0-9]", "", str(x)).strip("0")) or 1
        return (digits + 1) // 2 + 1
    if kind == "B":
        return len(x) * 3 // 4
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_size(e) for e in x)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(e) for k, e in x.items())
    return sum(len(str(e)) for e in x)  # sets


def item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(k.encode()) + value_size(v) for k, v in item.items())


def units(size: int, per: int) -> int:
    return max(1, math.ceil(size / per))


# --- the accounting middleware (inside the DynamoDB lock) ------------------------------------
class Accounting:
    """WSGI middleware: requests by (second, service, operation); DynamoDB units by (second,
    partition key, wcu|rcu) and by item; served as JSON at COUNTS_PATH (not counted)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.requests: Counter[tuple[int, str, str]] = Counter()
        self.units: defaultdict[tuple[int, str, str], float] = defaultdict(float)
        self.items: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.s3_keys: Counter[tuple[int, str, str]] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == COUNTS_PATH:
            return self._serve(start_response)
        service, op = scale_aws._operation(environ)
        second = int(time.time())
        with self.lock:
            self.requests[(second, service, op)] += 1
            if service == "s3" and " object" in op:
                self.s3_keys[(second, op, str(environ.get("PATH_INFO", "")))] += 1
        if service != "dynamodb":
            return self.app(environ, start_response)
        size = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(size) if size else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        req = json.loads(raw or b"{}")
        region = str(environ.get("HTTP_AUTHORIZATION", "")).split("/")
        region_name = region[2] if len(region) > 3 else "us-east-1"
        db = _backend(region_name)
        before = _writes_before(db, op, req)
        body = b"".join(self.app(environ, start_response))
        try:
            resp = json.loads(body or b"{}")
        except ValueError:
            resp = {}
        charges = _charges(db, op, req, resp, before)
        with self.lock:
            for key, kind, n, item in charges:
                self.units[(second, key, kind)] += n
                if kind == "wcu" and item:
                    self.items[(item, kind)] += n
        return [body]

    def _serve(self, start_response: Any) -> list[bytes]:
        with self.lock:
            out = {
                "requests": [[s, v, o, n] for (s, v, o), n in self.requests.items()],
                "units": [[s, k, u, n] for (s, k, u), n in self.units.items()],
                "items": [[i, u, n] for (i, u), n in self.items.items()],
                "s3_keys": [[s, o, k, n] for (s, o, k), n in self.s3_keys.items()],
            }
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(out).encode()]


def _backend(region: str) -> Any:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[DEFAULT_ACCOUNT_ID][region]


def _stored(db: Any, table_name: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The item as moto holds it (its JSON attributes), None when absent."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    table = db.tables.get(table_name)
    if table is None:
        return None
    h = key.get(table.hash_key_attr)
    if h is None:
        return None
    bucket = table.items.get(DynamoType(h))
    if bucket is None:
        return None
    if table.range_key_attr:
        r = key.get(table.range_key_attr)
        item = None if r is None else bucket.get(DynamoType(r))
    else:
        item = bucket
    return None if item is None else dict(item.to_json()["Attributes"])


def _gsis(db: Any, table_name: str) -> list[tuple[str, str, str | None]]:
    table = db.tables.get(table_name)
    out = []
    for g in getattr(table, "global_indexes", []) or []:
        schema = {k["KeyType"]: k["AttributeName"] for k in g.schema}
        out.append((g.name, schema["HASH"], schema.get("RANGE")))
    return out


def _write_ops(op: str, req: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], int]]:
    """(kind, table, key-or-item, multiplier) of every item a write request addresses."""
    if op in ("PutItem", "UpdateItem", "DeleteItem"):
        kind = {"PutItem": "Put", "UpdateItem": "Update", "DeleteItem": "Delete"}[op]
        return [(kind, req["TableName"], req.get("Item") or req["Key"], 1)]
    if op == "TransactWriteItems":
        out = []
        for entry in req.get("TransactItems", []):
            ((kind, body),) = entry.items()
            out.append((kind, body["TableName"], body.get("Item") or body["Key"], 2))
        return out
    if op == "BatchWriteItem":
        out = []
        for table, reqs in req.get("RequestItems", {}).items():
            for r in reqs:
                if "PutRequest" in r:
                    out.append(("Put", table, r["PutRequest"]["Item"], 1))
                else:
                    out.append(("Delete", table, r["DeleteRequest"]["Key"], 1))
        return out
    return []


def _key_of(db: Any, table_name: str, item: dict[str, Any]) -> dict[str, Any]:
    table = db.tables.get(table_name)
    if table is None:
        return item
    names = [table.hash_key_attr, table.range_key_attr]
    return {n: item[n] for n in names if n and n in item}


def _writes_before(db: Any, op: str, req: dict[str, Any]) -> list[dict[str, Any] | None]:
    return [_stored(db, t, _key_of(db, t, k)) for _, t, k, _ in _write_ops(op, req)]


def _pk(db: Any, table_name: str, item: dict[str, Any]) -> str:
    table = db.tables.get(table_name)
    name = table.hash_key_attr if table is not None else "pk"
    v = item.get(name, {})
    return str(next(iter(v.values()))) if v else "?"


def _item_name(db: Any, table_name: str, item: dict[str, Any]) -> str:
    table = db.tables.get(table_name)
    parts = [_pk(db, table_name, item)]
    if table is not None and table.range_key_attr and table.range_key_attr in item:
        parts.append(str(next(iter(item[table.range_key_attr].values()))))
    return " / ".join(parts)


Charge = tuple[str, str, float, str]
"""(partition key, 'wcu' | 'rcu', units, item name)"""


def _charges(
    db: Any,
    op: str,
    req: dict[str, Any],
    resp: dict[str, Any],
    before: list[dict[str, Any] | None],
) -> list[Charge]:
    out: list[Charge] = []
    for (kind, table, k, mult), old in zip(_write_ops(op, req), before, strict=True):
        key = _key_of(db, table, k)
        new = _stored(db, table, key)
        size = max(item_size(old), item_size(new))
        wcu = mult * units(size, WCU_BYTES)
        out.append((_pk(db, table, key), "wcu", wcu, _item_name(db, table, key)))
        if kind == "ConditionCheck":
            continue
        for name, hk, rk in _gsis(db, table):
            a, b = _entry(old, hk, rk), _entry(new, hk, rk)
            if a == b:
                continue
            for side, i in ((a, old), (b, new)):
                if side is not None and i is not None:
                    gpk = str(next(iter(i[hk].values())))
                    out.append((f"gsi:{name}:{gpk}", "wcu", 1, ""))
    out += _reads(db, op, req, resp)
    return out


def _entry(i: dict[str, Any] | None, hk: str, rk: str | None) -> tuple[str, str] | None:
    """An item's index key (hash, range), None when the item is not in the index."""
    if not i or hk not in i or (rk and rk not in i):
        return None
    return (json.dumps(i[hk]), json.dumps(i.get(rk) if rk else None))


def _reads(db: Any, op: str, req: dict[str, Any], resp: dict[str, Any]) -> list[Charge]:
    out: list[Charge] = []
    if op == "GetItem":
        f = 1.0 if req.get("ConsistentRead") else 0.5
        size = item_size(resp.get("Item"))
        out.append((_pk(db, req["TableName"], req["Key"]), "rcu", f * units(size, RCU_BYTES), ""))
    elif op == "BatchGetItem":
        for table, spec in req.get("RequestItems", {}).items():
            f = 1.0 if spec.get("ConsistentRead") else 0.5
            got = {_item_name(db, table, i): i for i in resp.get("Responses", {}).get(table, [])}
            for k in spec.get("Keys", []):
                size = item_size(got.get(_item_name(db, table, k)))
                out.append((_pk(db, table, k), "rcu", f * units(size, RCU_BYTES), ""))
    elif op == "Query":
        table = req["TableName"]
        index = req.get("IndexName")
        f = 0.5 if index or not req.get("ConsistentRead") else 1.0
        items = resp.get("Items", [])
        if index:
            size = sum(item_size(i) for i in items)
        else:  # a projection still reads (and bills) the whole item
            size = sum(item_size(_stored(db, table, _key_of(db, table, i))) for i in items)
        out.append((_query_pk(req, index), "rcu", f * units(size, RCU_BYTES), ""))
    return out


def _query_pk(req: dict[str, Any], index: str | None) -> str:
    cond = str(req.get("KeyConditionExpression", ""))
    m = re.match(r"\s*(#?\w+)\s*=\s*(:\w+)", cond)
    if not m:
        return "?"
    v = req.get("ExpressionAttributeValues", {}).get(m.group(2), {})
    pk = str(next(iter(v.values()))) if v else "?"
    return f"gsi:{index}:{pk}" if index else pk


def serve(port: int) -> None:
    sys.path.insert(0, str(common.REPO))
    os.environ.setdefault("MOTO_PORT", str(port))
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    from tests.moto_launch import SerialiseDynamoDB, patch_moto

    def stop(signum: int, frame: Any) -> None:
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    patch_moto()
    inner = Accounting(DomainDispatcherApplication(create_backend_app))
    run_simple(
        "127.0.0.1",
        port,
        SerialiseDynamoDB(inner),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
