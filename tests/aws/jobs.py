"""Real jobs with `backend: aws` through the real CLI, against the moto server; what they left in
S3 read back with boto3 (the AWS variant of tests.helpers.assert_exactly_once)."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tests.helpers import DEFAULT_HANDLER, make_job, status


@dataclass
class AwsPlace:
    """A bucket and a table of their own (so tests never see each other's state)."""

    endpoint: str
    bucket: str
    table: str
    prefix: str = "slurmctl/"

    @property
    def s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    @property
    def ddb(self) -> Any:
        import boto3

        return boto3.client("dynamodb", endpoint_url=self.endpoint)

    @property
    def sqs(self) -> Any:
        import boto3

        return boto3.client("sqs", endpoint_url=self.endpoint)

    def aws_section(self) -> str:
        return (
            "backend: aws\n"
            f"aws: {{bucket: {self.bucket}, table: {self.table}, region: us-east-1, "
            f"endpoint_url: '{self.endpoint}', prefix: {self.prefix}}}\n"
        )


def new_place(endpoint: str, *, create: bool = True) -> AwsPlace:
    from slurmctl.backends.aws.resources import ensure_bucket, ensure_table

    name = f"slurmctl-j{uuid.uuid4().hex[:12]}"
    place = AwsPlace(endpoint, name, name)
    if create:
        ensure_table(place.ddb, name)
        ensure_bucket(place.s3, name, "us-east-1")
    return place


def make_aws_job(
    place: AwsPlace,
    folder: Path,
    count: int,
    *,
    handler: str = DEFAULT_HANDLER,
    extra: str = "",
    batch_size: int = 100,
    workers: int = 3,
    job_id: str = "aws1",
) -> Path:
    return make_job(
        folder,
        count,
        handler=handler,
        extra=place.aws_section() + extra,
        batch_size=batch_size,
        workers=workers,
        job_id=job_id,
    )


def s3_url_parts(url: str) -> tuple[str, str]:
    assert url.startswith("s3://"), url
    bucket, _, key = url[5:].partition("/")
    return bucket, key


def s3_accounted_ids(root: Path, place: AwsPlace, job_id: str) -> dict[str, list[str]]:
    """Every item id, by where it ended: the final Parquet, the failure manifests, the
    quarantine, all read from S3 (the outputs from the `s3://` paths `status --json` gives)."""
    s3 = place.s3
    s = status(root, job_id)
    out: dict[str, list[str]] = {"output": [], "failures": [], "quarantine": []}
    for o in s["outputs"]:
        bucket, key = s3_url_parts(o["path"])
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        ids = pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist()
        out["output"] += [str(x) for x in ids]
    jobdir = f"{place.prefix}jobs/{job_id}/"
    listed = s3.list_objects_v2(Bucket=place.bucket, Prefix=f"{jobdir}failures/")
    for obj in listed.get("Contents", []):
        if obj["Key"].endswith(".summary.json"):
            phase = obj["Key"].rsplit("/", 1)[1].removesuffix(".summary.json")
            out["failures"] += [str(i["item_id"]) for i in aws_failures(place, job_id, phase)]
    try:
        q = s3.get_object(Bucket=place.bucket, Key=f"{jobdir}quarantine.jsonl")["Body"].read()
    except s3.exceptions.NoSuchKey:
        q = b""
    out["quarantine"] += [str(json.loads(line)["line"]) for line in q.splitlines()]
    return out


def assert_exactly_once_s3(
    root: Path, place: AwsPlace, job_id: str, count: int
) -> dict[str, list[str]]:
    """docs/architecture.md invariant 1, item by item, from what the job left in S3."""
    got = s3_accounted_ids(root, place, job_id)
    everything = got["output"] + got["failures"]
    assert len(everything) == len(set(everything)), "an item is accounted for twice"
    assert sorted(everything, key=int) == [str(i) for i in range(count)]
    return got


def every_s3_object(place: AwsPlace) -> dict[str, bytes]:
    s3 = place.s3
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=place.bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=place.bucket, Key=obj["Key"])["Body"].read()
    return out


def every_table_item(place: AwsPlace) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in place.ddb.get_paginator("scan").paginate(TableName=place.table):
        items += page["Items"]
    return items


def job_queue_exists(place: AwsPlace, job_id: str) -> bool:
    from slurmctl.backends.aws.queue import queue_name

    urls = place.sqs.list_queues(QueueNamePrefix=queue_name(job_id)).get("QueueUrls", [])
    return bool(urls)


def aws_failures(place: Any, job_id: str, phase: str) -> list[dict[str, Any]]:
    """The records of a phase's failure manifest in S3: the summary names them."""
    jobdir = f"{place.prefix}jobs/{job_id}/"
    get = place.s3.get_object
    summary = json.loads(
        get(Bucket=place.bucket, Key=f"{jobdir}failures/{phase}.summary.json")["Body"].read()
    )
    data = get(Bucket=place.bucket, Key=place.prefix + summary["key"])["Body"].read()
    return [json.loads(line) for line in data.splitlines()]
