"""The AWS backend: S3 objects, a DynamoDB state table, one SQS queue per job.

boto3 is an optional extra (`pip install 'slurmctl[aws]'`), imported only when `open_aws` runs.
Credentials come only from boto3's default chain; see docs/aws.md for the layout and costs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectStore

if TYPE_CHECKING:
    from slurmctl.backends.aws.inputs import S3Input
    from slurmctl.backends.aws.session import Service


def open_aws(
    bucket: str,
    table: str,
    region: str | None = None,
    endpoint_url: str | None = None,
    prefix: str = "slurmctl/",
    *,
    queue_prefix: str = "slurmctl-",
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    max_attempts: int = 10,
) -> Backend:
    """The AWS backend. No call is made here: an unreachable endpoint shows on the first call of
    each service, as `BackendUnavailable`.

    endpoint_url: one endpoint for every service (moto, LocalStack); None lets botocore read
    `AWS_ENDPOINT_URL_<SERVICE>` / `AWS_ENDPOINT_URL` / the config file, else AWS's own.
    prefix: where the object keys live in the bucket ('' for the bucket's root).
    queue_prefix: the start of every SQS queue name (installations sharing an account and
    region but not a table keep their queues apart with it).
    """
    from slurmctl.backends.aws.objectstore import S3ObjectStore
    from slurmctl.backends.aws.queue import SQSQueue
    from slurmctl.backends.aws.session import AwsSession, AwsSettings
    from slurmctl.backends.aws.statestore import DynamoStateStore

    if prefix and not prefix.endswith("/"):
        prefix += "/"
    session = AwsSession(
        AwsSettings(
            region=region,
            endpoint_url=endpoint_url or None,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )
    )
    return Backend(
        kind="aws",
        objects=S3ObjectStore(session.service("s3"), bucket, prefix),
        state=DynamoStateStore(session.service("dynamodb"), table),
        # a receive long-polls up to 20 s: its client's read timeout must outlast the poll
        queue=SQSQueue(
            session.service("sqs"), session.service("sqs", extra_read_s=20.0), queue_prefix
        ),
    )


def open_s3_input(
    url: str,
    *,
    objects: ObjectStore | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> S3Input:
    """An `input: s3://...` object as a stream: through the S3 client of an AWS backend's object
    store (`objects`), else through a client of its own (same credential chain and endpoint
    rules)."""
    from slurmctl.backends.aws.inputs import S3Input

    return S3Input(_input_client(objects, region, endpoint_url), url)


def open_s3_inputs(
    url: str,
    *,
    objects: ObjectStore | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> list[S3Input]:
    """The objects of an `input: s3://...`: the object, or every object under the prefix."""
    from slurmctl.backends.aws.inputs import list_s3_input

    return list_s3_input(_input_client(objects, region, endpoint_url), url)


def _input_client(
    objects: ObjectStore | None, region: str | None, endpoint_url: str | None
) -> Service:
    from slurmctl.backends.aws.objectstore import S3ObjectStore
    from slurmctl.backends.aws.session import AwsSession, AwsSettings

    if isinstance(objects, S3ObjectStore):
        return objects.s3
    session = AwsSession(AwsSettings(region=region, endpoint_url=endpoint_url or None))
    return session.service("s3")


__all__ = ["open_aws", "open_s3_input", "open_s3_inputs"]
