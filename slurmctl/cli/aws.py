"""`init` and `iam-policy`: the AWS resources a deployment shares, and the policy to use them.

`slurmctl init` creates the S3 bucket and the DynamoDB table (idempotently: it says what existed
already, and leaves an existing bucket's settings alone) and, with `--retention-days`, TTL on the
task items of finished jobs. `slurmctl iam-policy` prints a least-privilege IAM policy: the objects
under the bucket prefix, the table and its index, the job queues. Both take the names as options,
or from a job definition's `aws:` section (options win).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from slurmctl.backends.aws.dynamo import GSI
from slurmctl.backends.spec import BackendSpec
from slurmctl.cli import cli
from slurmctl.config import load_job_definition
from slurmctl.errors import UserError

CONFIG = click.Path(path_type=Path, dir_okay=False)
QUEUE_PREFIX = "slurmctl-"

TABLE_ACTIONS = [
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
]
"""TransactWriteItems is authorised by the actions inside it (Put, Update, ConditionCheck)."""
OBJECT_ACTIONS = ["s3:DeleteObject", "s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"]
"""HeadObject is s3:GetObject; PutObjectTagging for the tagged checkpoints."""
QUEUE_ACTIONS = [
    "sqs:CreateQueue",
    "sqs:DeleteMessage",
    "sqs:DeleteQueue",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
    "sqs:SendMessage",
]
"""SendMessageBatch and DeleteMessageBatch are authorised as SendMessage and DeleteMessage."""
INIT_TABLE_ACTIONS = [
    "dynamodb:CreateTable",
    "dynamodb:DescribeTable",
    "dynamodb:DescribeTimeToLive",
    "dynamodb:TagResource",
    "dynamodb:UpdateTimeToLive",
]
INIT_BUCKET_ACTIONS = [
    "s3:CreateBucket",
    "s3:ListBucket",
    "s3:PutBucketPolicy",
    "s3:PutBucketPublicAccessBlock",
    "s3:PutEncryptionConfiguration",
    "s3:PutLifecycleConfiguration",
]


@dataclass
class AwsTarget:
    bucket: str
    table: str
    region: str | None
    endpoint_url: str | None
    prefix: str
    expire_intermediates_days: int | None = None


def _target(
    config: Path | None,
    bucket: str | None,
    table: str | None,
    region: str | None,
    endpoint_url: str | None,
    prefix: str | None,
) -> AwsTarget:
    expire_days: int | None = None
    if config is not None:
        aws = load_job_definition(config).aws
        expire_days = aws.expire_intermediates_days
        bucket = bucket or aws.bucket
        table = table or aws.table
        region = region or aws.region
        endpoint_url = endpoint_url or (str(aws.endpoint_url) if aws.endpoint_url else None)
        prefix = aws.prefix if prefix is None else prefix
    missing = [f"--{n}" for n, v in (("bucket", bucket), ("table", table)) if not v]
    if missing:
        where = f"{config}: aws: has no bucket or table, and " if config else ""
        raise UserError(f"{where}{' and '.join(missing)} required (or give a job definition)")
    assert bucket and table
    prefix = "slurmctl/" if prefix is None else prefix
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return AwsTarget(
        bucket,
        table,
        region,
        endpoint_url.rstrip("/") if endpoint_url else None,
        prefix,
        expire_days,
    )


def _name_options(f: Any) -> Any:
    for option in reversed(
        [
            click.argument("config", type=CONFIG, required=False),
            click.option("--bucket", help="S3 bucket (else the definition's aws.bucket)."),
            click.option("--table", help="DynamoDB table (else the definition's aws.table)."),
            click.option("--region", help="AWS region (else the definition's, else boto3's)."),
            click.option("--prefix", help="Key prefix in the bucket [default: slurmctl/]."),
        ]
    ):
        f = option(f)
    return f


@cli.command("init")
@_name_options
@click.option(
    "--endpoint-url", help="One endpoint for S3 and DynamoDB (moto, LocalStack); else botocore's."
)
@click.option(
    "--retention-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Delete a finished job's task items this many days after it ends (DynamoDB TTL); "
    "0 turns it off. Unset: left as it is.",
)
@click.option(
    "--expire-intermediates-days",
    type=click.IntRange(min=0, max=36500),
    default=None,
    help="Delete batches, per-task results and aggregation levels this many days after each "
    "was written (an S3 lifecycle rule); 0 removes the rule. Else the definition's "
    "aws.expire_intermediates_days; unset: left as it is.",
)
def init_cmd(
    config: Path | None,
    bucket: str | None,
    table: str | None,
    region: str | None,
    prefix: str | None,
    endpoint_url: str | None,
    retention_days: float | None,
    expire_intermediates_days: int | None,
) -> None:
    """Create the S3 bucket and the DynamoDB table for `backend: aws` (idempotent).

    CONFIG: a job definition whose `aws:` section names them (options win)."""
    from slurmctl.backends.aws.resources import (
        ensure_bucket,
        ensure_table,
        intermediates_expiry,
        set_intermediates_expiry,
        set_task_retention,
        task_retention,
    )
    from slurmctl.backends.aws.session import AwsSession, AwsSettings

    t = _target(config, bucket, table, region, endpoint_url, prefix)
    session = AwsSession(AwsSettings(region=t.region, endpoint_url=t.endpoint_url))
    # the probe clients (2 attempts): a wrong endpoint fails in a second, not after ten tries
    s3 = session.service("s3").current
    ddb = session.service("dynamodb").current
    if ensure_bucket(s3, t.bucket, session.region, prefix=t.prefix):
        plain_http = str(s3.meta.endpoint_url).startswith("http://")
        tls = "no TLS-only policy: plain-HTTP endpoint" if plain_http else "TLS-only policy"
        click.echo(
            f"S3 bucket {t.bucket}: created (public access blocked, default encryption SSE-S3, "
            f"lifecycle: checkpoints expire after 7 days; {tls})"
        )
    else:
        click.echo(f"S3 bucket {t.bucket}: exists already (its settings are left as they are)")
    days = t.expire_intermediates_days
    days = expire_intermediates_days if expire_intermediates_days is not None else days
    if days is not None:
        set_intermediates_expiry(s3, t.bucket, t.prefix, days)
    days = intermediates_expiry(s3, t.bucket)
    click.echo(
        "intermediates (batches, per-task results, aggregation levels): "
        + (f"expire {days} days after they are written" if days else "kept")
    )
    if ensure_table(ddb, t.table):
        click.echo(f"DynamoDB table {t.table}: created (on-demand, sparse GSI {GSI!r})")
    else:
        click.echo(f"DynamoDB table {t.table}: exists already (key schema and GSI checked)")
    if retention_days is not None:
        enabled = set_task_retention(ddb, t.table, retention_days)
        if retention_days > 0:
            ttl = "TTL enabled now" if enabled else "TTL was enabled already"
            click.echo(
                f"task retention: {retention_days:g} days after a job ends ({ttl}, "
                "attribute expires_at)"
            )
        else:
            click.echo("task retention: off (task items are kept)")
    else:
        retained = task_retention(ddb, t.table)
        kept = f"{retained:g} days after a job ends" if retained else "off (task items are kept)"
        click.echo(f"task retention: {kept}")
    spec = BackendSpec(
        "aws",
        bucket=t.bucket,
        prefix=t.prefix,
        table=t.table,
        region=session.region,
        endpoint_url=t.endpoint_url,
    )
    click.echo(f"ready: {spec.url()}")


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _default_region() -> str | None:
    try:
        import boto3
    except ImportError:
        return None
    region: str | None = boto3.session.Session().region_name
    return region


def _object_arn(partition: str, url: str) -> str:
    if not url.startswith("s3://") or len(url) <= 5:
        raise UserError(f"--input: expected s3://BUCKET/KEY or s3://BUCKET/PREFIX/, found {url!r}")
    rest = url[5:]
    if "/" not in rest:
        rest += "/"
    return f"arn:{partition}:s3:::{rest}" + ("*" if rest.endswith("/") else "")


def iam_policy(
    bucket: str,
    table: str,
    prefix: str,
    region: str,
    account: str,
    *,
    inputs: tuple[str, ...] = (),
    with_init: bool = False,
    queue_prefix: str = QUEUE_PREFIX,
) -> dict[str, Any]:
    """What a job's processes (submit, workers, finalize, the CLI) need, and nothing more."""
    p = _partition(region)
    table_arn = f"arn:{p}:dynamodb:{region}:{account}:table/{table}"
    bucket_arn = f"arn:{p}:s3:::{bucket}"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "SlurmctlStateTable",
            "Effect": "Allow",
            "Action": TABLE_ACTIONS,
            "Resource": [table_arn, f"{table_arn}/index/{GSI}"],
        },
        {
            "Sid": "SlurmctlObjects",
            "Effect": "Allow",
            "Action": OBJECT_ACTIONS,
            "Resource": f"{bucket_arn}/{prefix}*",
        },
        {
            "Sid": "SlurmctlListPrefix",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        },
        {
            "Sid": "SlurmctlJobQueues",
            "Effect": "Allow",
            "Action": QUEUE_ACTIONS,
            "Resource": f"arn:{p}:sqs:{region}:{account}:{queue_prefix}*",
        },
    ]
    if inputs:
        statements.append(
            {
                "Sid": "SlurmctlInputs",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [_object_arn(p, u) for u in inputs],
            }
        )
    listed: dict[str, list[str]] = {}  # an input prefix is listed before it is read
    for url in inputs:
        if url.endswith("/"):
            in_bucket, _, key = url[5:].partition("/")
            listed.setdefault(in_bucket, []).append(f"{key}*")
    for n, (in_bucket, keys) in enumerate(sorted(listed.items())):
        statements.append(
            {
                "Sid": f"SlurmctlListInputs{n}",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:{p}:s3:::{in_bucket}",
                "Condition": {"StringLike": {"s3:prefix": keys}},
            }
        )
    if with_init:
        statements += [
            {
                "Sid": "SlurmctlInitTable",
                "Effect": "Allow",
                "Action": INIT_TABLE_ACTIONS,
                "Resource": table_arn,
            },
            {
                "Sid": "SlurmctlInitBucket",
                "Effect": "Allow",
                "Action": INIT_BUCKET_ACTIONS,
                "Resource": bucket_arn,
            },
        ]
    return {"Version": "2012-10-17", "Statement": statements}


@cli.command("iam-policy")
@_name_options
@click.option("--account", help="AWS account id [default: * (any), with a note].")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="S3URL",
    help="Also allow reading this input (s3://BUCKET/KEY, or a prefix ending in /). Repeatable.",
)
@click.option("--with-init", is_flag=True, help="Also what `slurmctl init` needs.")
def iam_policy_cmd(
    config: Path | None,
    bucket: str | None,
    table: str | None,
    region: str | None,
    prefix: str | None,
    account: str | None,
    inputs: tuple[str, ...],
    with_init: bool,
) -> None:
    """Print a least-privilege IAM policy (JSON) for jobs on this bucket prefix and table.

    CONFIG: a job definition whose `aws:` section names them (options win); its s3:// input, if
    any, is allowed too."""
    t = _target(config, bucket, table, region, None, prefix)
    if config is not None:
        ref = load_job_definition(config).resolved_input()
        if ref.startswith("s3://") and ref not in inputs:
            inputs = (*inputs, ref)
    region = t.region or _default_region()
    if not region:
        click.echo("note: no region given or configured: the policy names any region (*)", err=True)
    if not account:
        click.echo("note: no --account: the policy names any account's table and queues", err=True)
    policy = iam_policy(
        t.bucket,
        t.table,
        t.prefix,
        region or "*",
        account or "*",
        inputs=inputs,
        with_init=with_init,
    )
    click.echo(json.dumps(policy, indent=2))
