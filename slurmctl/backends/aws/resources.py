"""Create the AWS resources a deployment shares, idempotently (used by `slurmctl init`).

- the DynamoDB table: pk/sk strings, on-demand, and the sparse GSI `unfinished` (KEYS_ONLY);
- the S3 bucket: public access blocked, default encryption (SSE-S3), a policy refusing plain HTTP,
  a lifecycle rule expiring checkpoints after 7 days and aborting stale multipart uploads;
- optionally, task retention: TTL on the table's `expires_at` and the retention in its settings
  item (`retention.py` says what sets the attribute).

SQS queues are per job: `submit` creates them. Clients are plain boto3 clients.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from slurmctl.backends.aws.dynamo import GSI
from slurmctl.backends.aws.objectstore import CHECKPOINT_TAG, INTERMEDIATE_TAG
from slurmctl.backends.aws.retention import (
    RETENTION_FIELD,
    SETTINGS_KEY,
    TTL_ATTRIBUTE,
    settings_item,
)
from slurmctl.backends.aws.session import boto3_module, error_code
from slurmctl.errors import BackendUnavailable, UserError

log = logging.getLogger(__name__)

CHECKPOINT_DAYS = 7
MULTIPART_ABORT_DAYS = 1
INTERMEDIATES_RULE = "slurmctl-expire-intermediates"
NOT_SUPPORTED = {"NotImplemented", "NotImplementedError", "501", "UnsupportedOperation"}
KEYS = [("pk", "HASH"), ("sk", "RANGE")]
GSI_KEYS = [("gsi_pk", "HASH"), ("gsi_sk", "RANGE")]


def _client_error() -> type[Exception]:
    boto3_module()
    from botocore.exceptions import ClientError

    return ClientError  # type: ignore[no-any-return]


@contextmanager
def _reachable(client: Any, service: str) -> Iterator[None]:
    """An endpoint that cannot be reached is BackendUnavailable, as in the stores."""
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    try:
        yield
    except (EndpointConnectionError, ConnectTimeoutError) as e:
        raise BackendUnavailable(
            f"cannot reach {service} at {client.meta.endpoint_url}: {' '.join(str(e).split())}"
        ) from e


def _schema(keys: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"AttributeName": a, "KeyType": t} for a, t in keys]


def table_spec(name: str) -> dict[str, Any]:
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": a, "AttributeType": "S"} for a, _ in (*KEYS, *GSI_KEYS)
        ],
        "KeySchema": _schema(KEYS),
        "GlobalSecondaryIndexes": [
            {
                "IndexName": GSI,
                "KeySchema": _schema(GSI_KEYS),
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        "Tags": [{"Key": "slurmctl", "Value": "state"}],
    }


def _check_layout(desc: dict[str, Any]) -> None:
    name = desc["TableName"]
    if desc.get("KeySchema") != _schema(KEYS):
        raise UserError(
            f"DynamoDB table {name!r} exists with another key schema: use another table"
        )
    gsis = {g["IndexName"]: g for g in desc.get("GlobalSecondaryIndexes", [])}
    if GSI not in gsis or gsis[GSI].get("KeySchema") != _schema(GSI_KEYS):
        raise UserError(f"DynamoDB table {name!r} lacks the GSI {GSI!r} on (gsi_pk, gsi_sk)")


def _active(desc: dict[str, Any]) -> bool:
    return desc.get("TableStatus") == "ACTIVE" and all(
        g.get("IndexStatus", "ACTIVE") == "ACTIVE" for g in desc.get("GlobalSecondaryIndexes", [])
    )


def ensure_table(client: Any, name: str, *, timeout_s: float = 300.0) -> bool:
    """Create the state table unless it exists; wait until it and its GSI are ACTIVE.

    Returns True if this call created it. An existing table with another layout is refused.
    """
    _client_error()
    with _reachable(client, "dynamodb"):
        return _ensure_table(client, name, timeout_s)


def _ensure_table(client: Any, name: str, timeout_s: float) -> bool:
    client_error = _client_error()
    created = False
    try:
        desc = client.describe_table(TableName=name)["Table"]
    except client_error as e:
        if error_code(e) != "ResourceNotFoundException":
            raise
        try:
            desc = client.create_table(**table_spec(name))["TableDescription"]
            created = True
            log.info("created DynamoDB table %s", name)
        except client_error as e2:
            if error_code(e2) != "ResourceInUseException":  # created by someone else meanwhile
                raise
            desc = client.describe_table(TableName=name)["Table"]
    deadline = time.monotonic() + timeout_s
    while not _active(desc):
        if time.monotonic() > deadline:
            raise UserError(f"DynamoDB table {name!r} is not ACTIVE after {timeout_s:.0f} s")
        time.sleep(2)
        desc = client.describe_table(TableName=name)["Table"]
    _check_layout(desc)
    return created


def bucket_policy(name: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def lifecycle(prefix: str) -> dict[str, Any]:
    # Lifecycle filters take a plain prefix, no wildcard (jobs/*/checkpoints/ cannot be said):
    # the object store tags checkpoints instead, and the rule matches the tag under jobs/.
    tag_key, tag_value = CHECKPOINT_TAG.split("=")
    return {
        "Rules": [
            {
                "ID": "slurmctl-expire-checkpoints",
                "Status": "Enabled",
                "Filter": {
                    "And": {
                        "Prefix": f"{prefix}jobs/",
                        "Tags": [{"Key": tag_key, "Value": tag_value}],
                    }
                },
                "Expiration": {"Days": CHECKPOINT_DAYS},
            },
            {
                "ID": "slurmctl-abort-multipart",
                "Status": "Enabled",
                "Filter": {"Prefix": prefix},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": MULTIPART_ABORT_DAYS},
            },
        ]
    }


def ensure_bucket(
    client: Any,
    name: str,
    region: str | None,
    *,
    prefix: str = "slurmctl/",
    deny_insecure_transport: bool | None = None,
) -> bool:
    """Create and configure the bucket unless it exists. Returns True if this call created it.

    An existing bucket keeps its settings (its policy and lifecycle rules may be someone else's).
    deny_insecure_transport: None means yes unless the endpoint is plain http:// (moto,
    LocalStack), where such a policy would lock every request out.
    """
    _client_error()
    with _reachable(client, "s3"):
        return _ensure_bucket(client, name, region, prefix, deny_insecure_transport)


def _ensure_bucket(
    client: Any, name: str, region: str | None, prefix: str, deny_insecure_transport: bool | None
) -> bool:
    client_error = _client_error()
    try:
        client.head_bucket(Bucket=name)
        log.info("S3 bucket %s exists: its settings are left as they are", name)
        return False
    except client_error as e:
        code = error_code(e)
        if code in {"403", "AccessDenied", "Forbidden"}:
            raise UserError(
                f"S3 bucket {name!r} exists but is not yours, or you may not use it"
            ) from e
        if code not in {"404", "NoSuchBucket", "NotFound"}:
            raise
    kwargs: dict[str, Any] = {"Bucket": name}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except client_error as e:
        if error_code(e) == "BucketAlreadyOwnedByYou":
            return False
        if error_code(e) == "BucketAlreadyExists":
            raise UserError(f"S3 bucket name {name!r} is taken by another account") from e
        raise
    log.info("created S3 bucket %s", name)
    if deny_insecure_transport is None:
        deny_insecure_transport = not str(client.meta.endpoint_url).startswith("http://")
        if not deny_insecure_transport:
            log.warning(
                "S3 endpoint %s is plain HTTP: bucket %s gets no policy refusing HTTP",
                client.meta.endpoint_url,
                name,
            )
    steps: list[tuple[str, Callable[[], Any]]] = [
        (
            "public access block",
            lambda: client.put_public_access_block(
                Bucket=name,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            ),
        ),
        (
            "default encryption",
            lambda: client.put_bucket_encryption(
                Bucket=name,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            ),
        ),
        (
            "lifecycle rules",
            lambda: client.put_bucket_lifecycle_configuration(
                Bucket=name, LifecycleConfiguration=lifecycle(prefix)
            ),
        ),
    ]
    if deny_insecure_transport:
        steps.append(
            (
                "TLS-only policy",
                lambda: client.put_bucket_policy(
                    Bucket=name, Policy=json.dumps(bucket_policy(name))
                ),
            )
        )
    for what, step in steps:
        try:
            step()
        except client_error as e:
            if error_code(e) not in NOT_SUPPORTED:
                raise
            log.warning(
                "bucket %s: %s not supported by %s: skipped", name, what, client.meta.endpoint_url
            )
    return True


def intermediates_rule(prefix: str, days: int) -> dict[str, Any]:
    tag_key, tag_value = INTERMEDIATE_TAG.split("=")
    return {
        "ID": INTERMEDIATES_RULE,
        "Status": "Enabled",
        "Filter": {
            "And": {"Prefix": f"{prefix}jobs/", "Tags": [{"Key": tag_key, "Value": tag_value}]}
        },
        "Expiration": {"Days": days},
    }


def _lifecycle_rules(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        return list(client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", []))
    except _client_error() as e:
        if error_code(e) == "NoSuchLifecycleConfiguration":
            return []
        raise


def intermediates_expiry(client: Any, bucket: str) -> int | None:
    """The days of the intermediates rule `set_intermediates_expiry` set, None without one."""
    with _reachable(client, "s3"):
        for rule in _lifecycle_rules(client, bucket):
            if rule.get("ID") == INTERMEDIATES_RULE:
                return int(rule["Expiration"]["Days"])
    return None


def set_intermediates_expiry(client: Any, bucket: str, prefix: str, days: int) -> None:
    """Set (days > 0) or remove (0) the rule expiring the objects tagged intermediate (batches,
    per-task results, aggregation levels) under the prefix's jobs/; the bucket's other rules
    are kept as they are."""
    with _reachable(client, "s3"):
        rules = [r for r in _lifecycle_rules(client, bucket) if r.get("ID") != INTERMEDIATES_RULE]
        if days > 0:
            rules.append(intermediates_rule(prefix, days))
        if rules:
            client.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": rules}
            )
        else:
            client.delete_bucket_lifecycle(Bucket=bucket)


def task_retention(client: Any, table: str) -> float | None:
    """The retention recorded in the table's settings item (None: task items are kept)."""
    with _reachable(client, "dynamodb"):
        item = client.get_item(TableName=table, Key=SETTINGS_KEY, ConsistentRead=True).get("Item")
    if not item or RETENTION_FIELD not in item:
        return None
    days = float(item[RETENTION_FIELD]["N"])
    return days if days > 0 else None


def set_task_retention(client: Any, table: str, days: float) -> bool:
    """Record the retention (0: none) and, for a positive one, enable TTL on `expires_at`.

    Returns True if this call enabled TTL. A table whose TTL is on another attribute is refused
    (a table has at most one TTL attribute)."""
    client_error = _client_error()
    enabled_now = False
    with _reachable(client, "dynamodb"):
        if days > 0:
            desc = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
            status, attribute = desc.get("TimeToLiveStatus"), desc.get("AttributeName")
            if status in {"ENABLED", "ENABLING"}:
                if attribute != TTL_ATTRIBUTE:
                    raise UserError(
                        f"DynamoDB table {table!r} has TTL on {attribute!r}; slurmctl's task "
                        f"retention needs it on {TTL_ATTRIBUTE!r}: use another table"
                    )
            else:
                try:
                    client.update_time_to_live(
                        TableName=table,
                        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
                    )
                    enabled_now = True
                except client_error as e:
                    if error_code(e) not in NOT_SUPPORTED:
                        raise
                    endpoint = client.meta.endpoint_url
                    log.warning("table %s: TTL not supported by %s", table, endpoint)
        client.put_item(TableName=table, Item=settings_item(days))
    return enabled_now
