"""moto's server with one lock around every DynamoDB request (`python tests/moto_launch.py -p N`).

Why: moto checks a DynamoDB condition and then writes, without a lock, and its server runs each
request on its own thread. Two concurrent conditional writes on one item can therefore both pass
(two workers claiming the same task), which real DynamoDB never allows: each item write, and each
TransactWriteItems, is atomic there. Tests that run several workers against moto must not see such
double claims, so this launcher serialises DynamoDB requests (the `X-Amz-Target: DynamoDB_...`
header) and nothing else: S3 and SQS stay concurrent (a long-polling ReceiveMessage blocks its
thread for up to 20 s; under a global lock it would stall every other request).

Otherwise the same as `moto_server`: moto's own WSGI app and request handler, werkzeug's threaded
server, a real HTTP endpoint on the given host and port; except for two patches to moto's
DynamoDB model (`patch_moto`) that remove costs of the test double, not of DynamoDB:

- moto's `transact_write_items` deep-copies every table a transaction names, whole, before each
  transaction (to roll back on failure): O(table size) per transaction, quadratic over a job.
  The patch snapshots only the items the transaction addresses and restores those on failure.
- every moto model instance is appended to a class-level list for the `/moto-api/` dashboard
  and never released; for DynamoDB's `Item` that keeps every copy ever made (the table copies
  above, each UpdateItem's copy of the old item, each projected read) alive: the server grew to
  ~5 GB in a 500-task job. The patch stops tracking `Item`s (only the dashboard read the list).

Both are checked against moto's source when applied: a moto whose code differs refuses to start
rather than run with a patch that no longer fits.
"""

from __future__ import annotations

import argparse
import copy
import functools
import inspect
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SERIALISED_TARGET = "DynamoDB_"


class SerialiseDynamoDB:
    """WSGI middleware: DynamoDB requests one at a time, the rest untouched."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith(SERIALISED_TARGET):
            return self.app(environ, start_response)  # type: ignore[return-value]
        with self.lock:
            # The body is produced under the lock too: a lazy response may still read state.
            body = self.app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()


def make_app() -> WsgiApp:
    """moto's WSGI app, patched (`patch_moto`), with DynamoDB requests under one lock."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    patch_moto()
    return SerialiseDynamoDB(DomainDispatcherApplication(create_backend_app))


# --- patches to moto's DynamoDB model ----------------------------------------------------------
# Both rely on SerialiseDynamoDB: one DynamoDB request at a time, so no other request can read or
# write a table between a transaction's snapshot and its restore.


@dataclass
class _Before:
    """One item a transaction addresses, as it was before the transaction."""

    table: Any  # moto.dynamodb.models.table.Table
    hash_key: Any  # DynamoType
    range_key: Any  # DynamoType | None (a table without a range key)
    item: Any  # a deep copy of the Item, or None when there was none
    had_bucket: bool  # range-key tables: whether table.items held the hash key's dict


_in_transaction = threading.local()
"""Set while the patched transact_write_items runs moto's own: its table copies become no-ops."""


class _CopyModule:
    """Stands in for `copy` inside moto.dynamodb.models (the only module whose global it
    replaces): deepcopy(Table) returns the table itself while `_in_transaction.on` is set, which
    makes moto's whole-table backup and its `self.tables[name] = backup` restore no-ops. Every
    other call is the `copy` module's."""

    def __init__(self, table_cls: type) -> None:
        self.table_cls = table_cls

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    def deepcopy(self, x: Any, memo: dict[int, Any] | None = None) -> Any:
        if getattr(_in_transaction, "on", False) and isinstance(x, self.table_cls):
            return x
        return copy.deepcopy(x, memo)


def _snapshot(backend: Any, transact_items: Any) -> list[_Before] | None:
    """Copies of the items a TransactWriteItems request addresses, or None for a request this
    patch leaves to moto's own code (and its whole-table copies): a malformed entry or key, a
    table named by ARN or absent, a table with a stream (moto's copy restores its records too)."""
    before: dict[tuple[str, Any, Any], _Before] = {}
    try:
        for entry in transact_items:
            if not isinstance(entry, dict) or len(entry) != 1:
                return None
            ((op_type, op),) = entry.items()
            if op_type not in ("ConditionCheck", "Put", "Delete", "Update"):
                return None
            name = op["TableName"]
            table = backend.tables.get(name)
            if table is None or table.stream_shard is not None:
                return None
            # The key as moto derives it (a Put's from its item): the same validation, too.
            hash_key, range_key = backend.get_keys_value(
                table, op["Item"] if op_type == "Put" else op["Key"]
            )
            if (name, hash_key, range_key) in before:
                continue  # moto refuses the request (one operation per item); the first copy
            if range_key is None:
                current = table.items.get(hash_key)
                had_bucket = True
            else:  # .get(): table.items is a defaultdict, a lookup by [] would create the dict
                bucket = table.items.get(hash_key)
                current = None if bucket is None else bucket.get(range_key)
                had_bucket = bucket is not None
            before[(name, hash_key, range_key)] = _Before(
                table, hash_key, range_key, copy.deepcopy(current), had_bucket
            )
    except Exception:  # noqa: BLE001 - any: moto's own code then raises its own error for it
        return None
    return list(before.values())


def _restore(before: list[_Before]) -> None:
    """Put each addressed item back as it was: the copy, or no item at all (a Put or an Update
    that created one is removed, with the hash key's dict if the transaction created it)."""
    for b in before:
        items = b.table.items
        if b.range_key is None:
            if b.item is None:
                items.pop(b.hash_key, None)
            else:
                items[b.hash_key] = b.item
        elif b.item is not None:
            items[b.hash_key][b.range_key] = b.item
        else:
            bucket = items.get(b.hash_key)
            if bucket is not None:
                bucket.pop(b.range_key, None)
                if not bucket and not b.had_bucket:
                    del items[b.hash_key]


def _check_source(func: Any, *needles: str) -> None:
    """Refuse to patch a moto whose code is not what the patch was written against."""
    import moto

    source = inspect.getsource(func)
    missing = [n for n in needles if n not in source]
    if missing:
        raise RuntimeError(
            f"moto {moto.__version__}: {func.__qualname__} no longer contains {missing}; "
            "review tests/moto_launch.py's patch_moto (written against moto 5.2.5)"
        )


def patch_moto() -> None:
    """Patch moto's DynamoDB model in this process (idempotent); see the module's docstring."""
    from moto.core.common_models import BaseModel
    from moto.dynamodb import models
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.models.table import Table

    backend_cls = models.DynamoDBBackend
    original = backend_cls.transact_write_items
    if getattr(original, "_slurmctl_patched", False):
        return
    _check_source(
        original,
        "original_table_state[table_name] = copy.deepcopy(",
        "self.tables[table_name] = original_table_state[table_name]",
    )
    _check_source(BaseModel.__new__, "instances_tracked.append(instance)")

    # 1. A rollback snapshot in proportion to the transaction, not to the tables it names.
    #    moto's code runs unchanged (condition checks, the uniqueness check, cancellation reasons
    #    in order), its table copies made no-ops; on any failure the addressed items are put
    #    back. Unlike moto's, this also undoes the operations applied before an error that moto
    #    lets through without its rollback: all or nothing, as in DynamoDB.
    models.copy = _CopyModule(Table)  # type: ignore[attr-defined,assignment]

    @functools.wraps(original)
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        before = _snapshot(self, transact_items)
        if before is None:
            return original(self, transact_items)
        _in_transaction.on = True
        try:
            return original(self, transact_items)
        except BaseException:
            _restore(before)
            raise
        finally:
            _in_transaction.on = False

    transact_write_items._slurmctl_patched = True  # type: ignore[attr-defined]
    backend_cls.transact_write_items = transact_write_items  # type: ignore[method-assign]

    # 2. DynamoDB Items are no longer kept in Item.instances_tracked (BaseModel.__new__ appends
    #    every instance there, for the dashboard, and nothing removes them): an Item lives as long
    #    as a table, a copy or a response holds it, like any Python object.
    def untracked_new(cls: type, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls)

    Item.__new__ = staticmethod(untracked_new)  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)

    import os

    # Run as a script, this folder is first on sys.path: keep the tests' modules (aws/, slurm/...)
    # from shadowing anything moto imports.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    os.environ.setdefault("MOTO_PORT", str(args.port))
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import run_simple

    def stop(signum: int, frame: Any) -> None:
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    run_simple(args.host, args.port, make_app(), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
