"""AWS-only tests: the same moto server as the contract suite (a real HTTP endpoint)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from slurmctl.backends import Backend
from tests.moto_server import moto_endpoint, moto_server  # noqa: F401  (session fixtures)


@dataclass
class Aws:
    backend: Backend
    name: str
    """The table's, the bucket's and the queue prefix's name."""
    endpoint: str
    ddb: Any
    s3: Any
    sqs: Any


def make_aws(endpoint: str, **kwargs: Any) -> Aws:
    import boto3

    from slurmctl.backends.aws import open_aws
    from slurmctl.backends.aws.resources import ensure_bucket, ensure_table

    name = f"slurmctl-a{uuid.uuid4().hex[:12]}"
    ddb = boto3.client("dynamodb", endpoint_url=endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    assert ensure_table(ddb, name)
    assert ensure_bucket(s3, name, "us-east-1")
    backend = open_aws(
        name, name, region="us-east-1", endpoint_url=endpoint, queue_prefix=f"{name}-", **kwargs
    )
    return Aws(backend, name, endpoint, ddb, s3, boto3.client("sqs", endpoint_url=endpoint))


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[Aws]:  # noqa: F811
    env = make_aws(moto_endpoint)
    yield env
    env.backend.close()
