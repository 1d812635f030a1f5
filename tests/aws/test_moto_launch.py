"""tests/moto_launch.py's patches to moto, through the launched server and a real boto3 client:
a failed TransactWriteItems leaves the table exactly as before (the patch snapshots only the
items a transaction addresses, where moto copies whole tables), and DynamoDB items are no longer
kept alive by moto's instance tracker."""

from __future__ import annotations

import json
import urllib.request
import uuid
from typing import Any

import pytest

from tests.moto_server import require_boto3

require_boto3(module_level=True)
from botocore.exceptions import ClientError  # noqa: E402

Item = dict[str, dict[str, str]]


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client("dynamodb", endpoint_url=endpoint)


def _table(ddb: Any, keys: tuple[str, ...]) -> str:
    name = f"launch-{uuid.uuid4().hex[:12]}"
    ddb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
        KeySchema=[
            {"AttributeName": k, "KeyType": t}
            for k, t in zip(keys, ("HASH", "RANGE"), strict=False)
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def _key(keys: tuple[str, ...], name: str) -> Item:
    """`a` is its own hash key on a hash-only table, and a range key under `p` otherwise."""
    if len(keys) == 1:
        return {"pk": {"S": name}}
    return {"pk": {"S": "p"}, "sk": {"S": name}}


def _everything(ddb: Any, table: str) -> list[Item]:
    items: list[Item] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = ddb.scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return sorted(items, key=lambda i: json.dumps(i, sort_keys=True))
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@pytest.fixture(params=[("pk", "sk"), ("pk",)], ids=["hash+range", "hash"])
def seeded(request: pytest.FixtureRequest, moto_endpoint: str) -> tuple[Any, str, tuple[str, ...]]:
    """A table holding items a (n=1), b (n=5), c and d."""
    keys: tuple[str, ...] = request.param
    ddb = _client(moto_endpoint)
    table = _table(ddb, keys)
    for name, n in (("a", "1"), ("b", "5"), ("c", "0"), ("d", "0")):
        ddb.put_item(
            TableName=table, Item={**_key(keys, name), "n": {"N": n}, "tag": {"S": f"old-{name}"}}
        )
    return ddb, table, keys


def test_failed_transaction_leaves_the_table_as_it_was(seeded: Any) -> None:
    ddb, table, keys = seeded
    before = _everything(ddb, table)
    other_hash = {"pk": {"S": "q"}, **({"sk": {"S": "x"}} if len(keys) == 2 else {})}
    ops: list[dict[str, Any]] = [
        # applied by moto before the failing check: each must be undone
        {"Put": {"TableName": table, "Item": {**_key(keys, "new"), "n": {"N": "7"}}}},
        {"Put": {"TableName": table, "Item": {**other_hash, "n": {"N": "8"}}}},  # a new hash key
        {"Put": {"TableName": table, "Item": {**_key(keys, "c"), "tag": {"S": "replaced"}}}},
        {
            "Update": {
                "TableName": table,
                "Key": _key(keys, "a"),
                "UpdateExpression": "SET extra = :e ADD n :one REMOVE tag",
                "ConditionExpression": "n = :n",
                "ExpressionAttributeValues": {
                    ":e": {"L": [{"S": "x"}]},
                    ":one": {"N": "1"},
                    ":n": {"N": "1"},
                },
            }
        },
        {  # an Update of an item that does not exist creates it
            "Update": {
                "TableName": table,
                "Key": _key(keys, "created"),
                "UpdateExpression": "SET n = :n",
                "ExpressionAttributeValues": {":n": {"N": "3"}},
            }
        },
        {"Delete": {"TableName": table, "Key": _key(keys, "d")}},
        # fails: b's n is 5
        {
            "ConditionCheck": {
                "TableName": table,
                "Key": _key(keys, "b"),
                "ConditionExpression": "n = :n",
                "ExpressionAttributeValues": {":n": {"N": "4"}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
    ]
    with pytest.raises(ClientError) as raised:
        ddb.transact_write_items(TransactItems=ops)
    error = raised.value.response
    assert error["Error"]["Code"] == "TransactionCanceledException"
    reasons = error["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None"] * 6 + ["ConditionalCheckFailed"]
    assert reasons[-1]["Item"] == {**_key(keys, "b"), "n": {"N": "5"}, "tag": {"S": "old-b"}}

    assert _everything(ddb, table) == before
    for name in ("new", "created"):
        assert "Item" not in ddb.get_item(TableName=table, Key=_key(keys, name))
    assert "Item" not in ddb.get_item(TableName=table, Key=other_hash)

    # The table still takes writes, and a transaction that passes applies every operation.
    ddb.transact_write_items(TransactItems=ops[:-1])
    after = {json.dumps(i["pk"]) + json.dumps(i.get("sk")): i for i in _everything(ddb, table)}
    assert len(after) == 6  # a b c new created q (d deleted)
    got_a = ddb.get_item(TableName=table, Key=_key(keys, "a"), ConsistentRead=True)["Item"]
    assert got_a == {**_key(keys, "a"), "n": {"N": "2"}, "extra": {"L": [{"S": "x"}]}}


def test_refused_transaction_leaves_the_table_as_it_was(seeded: Any) -> None:
    """Two operations on one item: a validation error, raised once the first was applied."""
    ddb, table, keys = seeded
    before = _everything(ddb, table)
    with pytest.raises(ClientError) as raised:
        ddb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, "Item": {**_key(keys, "a"), "n": {"N": "9"}}}},
                {"Delete": {"TableName": table, "Key": _key(keys, "a")}},
            ]
        )
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert _everything(ddb, table) == before


def test_items_are_not_tracked_by_moto(moto_endpoint: str) -> None:
    """moto's dashboard list of every Item ever made (copies too) is no longer filled."""
    ddb = _client(moto_endpoint)
    table = _table(ddb, ("pk", "sk"))
    ddb.put_item(TableName=table, Item={"pk": {"S": "p"}, "sk": {"S": "s"}})
    with urllib.request.urlopen(moto_endpoint + "/moto-api/data.json", timeout=30) as resp:
        data = json.loads(resp.read())
    assert data["dynamodb"]["Item"] == []
    assert any(t["name"] == table for t in data["dynamodb"]["Table"])
