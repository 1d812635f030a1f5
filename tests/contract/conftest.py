"""The backend contract suite runs, unchanged, against every implementation.

Add an implementation by adding a name to BACKENDS and a branch to `make_backend`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmctl.backends import Backend, open_local
from tests.moto_server import moto_endpoint, moto_server  # noqa: F401  (session fixtures)

BACKENDS = ["local", "aws"]


def make_backend(kind: str, tmp_path: Path, endpoint: str | None = None) -> Backend:
    if kind == "local":
        return open_local(tmp_path / "root")
    if kind == "aws":
        # A moto server as a real HTTP endpoint; each test gets its own table, bucket and
        # queue names, so tests never see each other's state.
        import boto3

        from slurmctl.backends.aws import open_aws
        from slurmctl.backends.aws.resources import ensure_bucket, ensure_table

        name = f"slurmctl-t{uuid.uuid4().hex[:12]}"
        ensure_table(boto3.client("dynamodb", endpoint_url=endpoint), name)
        ensure_bucket(boto3.client("s3", endpoint_url=endpoint), name, "us-east-1")
        return open_aws(
            name, name, region="us-east-1", endpoint_url=endpoint, queue_prefix=f"{name}-"
        )
    raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    endpoint = request.getfixturevalue("moto_endpoint") if request.param == "aws" else None
    b = make_backend(request.param, tmp_path, endpoint)
    yield b
    b.close()
