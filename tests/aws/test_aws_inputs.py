"""Inputs on S3 (moto over HTTP): every format, compressed or not, one object or a prefix of
several, read as streams with the quarantine and the user's mistakes as on a local file."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from slurmctl.backends.aws.inputs import list_s3_input
from slurmctl.coordinator.fingerprint import HashingSource, full_digest
from slurmctl.coordinator.inputs import Input
from slurmctl.coordinator.scan import InputScanner
from slurmctl.errors import InputError
from tests.aws.conftest import Aws
from tests.aws.jobs import make_aws_job, new_place, s3_url_parts
from tests.helpers import cli, status
from tests.inputs_data import COUNT, SUFFIX, encode, expected_quarantine, records
from tests.moto_server import moto_endpoint, moto_server, require_boto3

_ = (moto_server, moto_endpoint)  # session fixtures
require_boto3(module_level=True)

EXT = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
HANDLER = """
def process(item, ctx):
    return {"id": item["id"], "double": int(item["n"]) * 2}
"""


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_format_and_compression_streams_from_s3(
    aws: Aws, tmp_path: Path, fmt: str, codec: str
) -> None:
    key = f"in/data{EXT[fmt]}{SUFFIX[codec]}"
    body = encode(fmt, records(), codec)
    aws.s3.put_object(Bucket=aws.name, Key=key, Body=body)
    url = f"s3://{aws.name}/{key}"
    source = Input(url, list(list_s3_input(aws.backend.objects.s3, url)))  # type: ignore[attr-defined]
    hashing = HashingSource(source)
    quarantine: list[bytes] = []

    class Sink:
        def write(self, data: bytes) -> int:
            quarantine.append(data)
            return len(data)

    scanner = InputScanner(hashing, "id", tmp_path / "work", Sink(), child_index=False)  # type: ignore[arg-type]
    items = [json.loads(line) for line in scanner.items()]
    assert [i["id"] for i in items] == [str(i) for i in range(COUNT)]
    unit = "row" if fmt == "parquet" else "line"
    got = [(q[unit], q["reason"]) for q in map(json.loads, quarantine)]
    assert got == expected_quarantine(fmt)
    assert hashing.digest.hexdigest() == full_digest(source)
    assert source.size() == len(body) and (source.stamp() or "").startswith("etag:")


def test_a_prefix_of_several_formats_runs_as_one_job(moto_endpoint: str, tmp_path: Path) -> None:
    place = new_place(moto_endpoint)
    rows = records()
    parts = {
        "inputs/day/part-0.csv.gz": encode("csv", rows[:100], "gzip"),
        "inputs/day/part-1.parquet": encode("parquet", rows[100:200], row_group_size=30),
        "inputs/day/part-2.jsonl.zst": encode("jsonl", rows[200:], "zstd"),
        "inputs/day/_SUCCESS": b"",
        "inputs/day-other.jsonl": b'{"id": "not mine", "n": 0}\n',
    }
    for key, body in parts.items():
        place.s3.put_object(Bucket=place.bucket, Key=key, Body=body)
    config = make_aws_job(
        place,
        tmp_path / "job",
        0,
        handler=HANDLER,
        workers=2,
        batch_size=50,
        job_id="s3-prefix",
        extra="max_quarantine_share: 0.1\n",
    )
    url = f"s3://{place.bucket}/inputs/day/"
    config.write_text(config.read_text().replace("input: input.jsonl", f"input: {url}"))
    root = tmp_path / "root"
    run = cli(root, "submit", "--no-progress", str(config))
    assert run.returncode == 0, run.stderr
    assert "COMPLETED: 300 succeeded, 0 failed permanently, 0 failed transiently, 2 quar" in (
        run.stdout
    )
    out: list[dict[str, Any]] = []
    for o in status(root, "s3-prefix")["outputs"]:
        bucket, key = s3_url_parts(o["path"])
        data = place.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        out += pq.read_table(io.BytesIO(data)).to_pylist()
    assert sorted(int(r["id"]) for r in out) == list(range(COUNT))
    assert all(r["double"] == 2 * int(r["id"]) for r in out)
    q = place.s3.get_object(Bucket=place.bucket, Key="slurmctl/jobs/s3-prefix/quarantine.jsonl")[
        "Body"
    ].read()
    first = f"s3://{place.bucket}/inputs/day/part-0.csv.gz"
    assert [json.loads(line) for line in q.splitlines()] == [
        {
            "file": first,
            "line": 6,
            "reason": "missing id: no usable 'id' field",
            "text": '{"id":"","n":"-1"}',
        },
        {
            "file": first,
            "line": 11,
            "reason": f"duplicate id: '7' first seen on line 10 of {first}",
            "text": '{"id":"7","n":"-2"}',
        },
    ]
    again = cli(root, "submit", "--no-progress", str(config))
    assert again.returncode == 0 and "COMPLETED" in again.stdout, again.stderr


def test_s3_input_mistakes_are_one_line_exit_2(moto_endpoint: str, tmp_path: Path) -> None:
    place = new_place(moto_endpoint)
    place.s3.put_object(Bucket=place.bucket, Key="in/x.csv", Body=b"user,n\n1,2\n")
    config = make_aws_job(place, tmp_path / "job", 0, handler=HANDLER, job_id="s3-bad")
    root = tmp_path / "root"
    for url, message in [
        (
            f"s3://{place.bucket}/in/x.csv",
            "{url}: line 1: no column 'id' (the id_field) in the header (user, n)",
        ),
        (
            f"s3://{place.bucket}/nothing/",
            "{url}: cannot read input: no such object, and no object under 'nothing/'",
        ),
    ]:
        config.write_text(
            "\n".join(
                f"input: {url}" if line.startswith("input:") else line
                for line in config.read_text().splitlines()
            )
            + "\n"
        )
        run = cli(root, "submit", "--no-progress", str(config))
        assert run.returncode == 2, run.stdout
        assert run.stderr == f"error: {message.format(url=url)}\n"
    tables = place.ddb.get_item(
        TableName=place.table, Key={"pk": {"S": "JOB#s3-bad"}, "sk": {"S": "JOB"}}
    )
    assert tables.get("Item") is None


def test_a_replaced_s3_object_of_the_same_size_is_refused_on_resubmit(
    moto_endpoint: str, tmp_path: Path
) -> None:
    place = new_place(moto_endpoint)
    place.s3.put_object(Bucket=place.bucket, Key="in/x.csv", Body=b"id,n\n1,10\n2,20\n")
    config = make_aws_job(place, tmp_path / "job", 0, handler=HANDLER, job_id="s3-change")
    url = f"s3://{place.bucket}/in/x.csv"
    config.write_text(config.read_text().replace("input: input.jsonl", f"input: {url}"))
    root = tmp_path / "root"
    assert cli(root, "submit", "--no-progress", str(config)).returncode == 0
    place.s3.put_object(Bucket=place.bucket, Key="in/x.csv", Body=b"id,n\n1,10\n2,21\n")
    again = cli(root, "submit", "--no-progress", str(config))
    assert again.returncode == 2, again.stdout
    assert again.stderr.startswith(f"error: job s3-change exists with input {url} of sha256 ")
    assert again.stderr.endswith("(same size); use another job_id\n")


def test_listing_skips_markers_and_names_a_missing_prefix(aws: Aws) -> None:
    for key in ("p/b.jsonl", "p/a.jsonl", "p/sub/", "p/_SUCCESS", "p/.x.crc", "p/sub/c.csv"):
        aws.s3.put_object(Bucket=aws.name, Key=key, Body=b"")
    service = aws.backend.objects.s3  # type: ignore[attr-defined]
    found = list_s3_input(service, f"s3://{aws.name}/p")
    assert [f.name for f in found] == [
        f"s3://{aws.name}/p/a.jsonl",
        f"s3://{aws.name}/p/b.jsonl",
        f"s3://{aws.name}/p/sub/c.csv",
    ]
    with pytest.raises(InputError, match="no such object, and no object under 'q/'"):
        list_s3_input(service, f"s3://{aws.name}/q")


def test_iam_policy_lets_a_job_list_its_input_prefixes(tmp_path: Path) -> None:
    out = cli(
        tmp_path,
        *("iam-policy", "--bucket", "b", "--table", "t", "--account", "123456789012"),
        *("--input", "s3://data/day/", "--input", "s3://data/one.csv", "--input", "s3://x/p/"),
    )
    assert out.returncode == 0, out.stderr
    st = {s["Sid"]: s for s in json.loads(out.stdout)["Statement"]}
    assert st["SlurmctlInputs"]["Resource"] == [
        "arn:aws:s3:::data/day/*",
        "arn:aws:s3:::data/one.csv",
        "arn:aws:s3:::x/p/*",
    ]
    assert st["SlurmctlListInputs0"] == {
        "Sid": "SlurmctlListInputs0",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": "arn:aws:s3:::data",
        "Condition": {"StringLike": {"s3:prefix": ["day/*"]}},
    }
    assert st["SlurmctlListInputs1"]["Resource"] == "arn:aws:s3:::x"
    assert "SlurmctlListInputs2" not in st
