"""`slurmctl init`, `slurmctl iam-policy`, a job whose input is an S3 object: through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.aws.jobs import assert_exactly_once_s3, make_aws_job, new_place
from tests.helpers import cli
from tests.moto_server import moto_endpoint, moto_server, require_boto3, running_moto

_ = (moto_server, moto_endpoint)  # session fixtures
require_boto3(module_level=True)


def test_init_twice_says_what_existed_and_sets_retention(
    moto_endpoint: str,
    tmp_path: Path,
) -> None:
    place = new_place(moto_endpoint, create=False)
    names = ["--bucket", place.bucket, "--table", place.table, "--endpoint-url", moto_endpoint]
    first = cli(tmp_path, "init", *names, "--retention-days", "3")
    assert first.returncode == 0, first.stderr
    assert f"S3 bucket {place.bucket}: created" in first.stdout
    assert f"DynamoDB table {place.table}: created" in first.stdout
    assert "task retention: 3 days after a job ends (TTL enabled now" in first.stdout
    assert f"ready: aws://{place.bucket}/slurmctl/?table={place.table}" in first.stdout
    ttl = place.ddb.describe_time_to_live(TableName=place.table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    assert place.s3.get_public_access_block(Bucket=place.bucket)["PublicAccessBlockConfiguration"][
        "BlockPublicAcls"
    ]

    second = cli(tmp_path, "init", *names)
    assert second.returncode == 0, second.stderr
    assert f"S3 bucket {place.bucket}: exists already" in second.stdout
    assert f"DynamoDB table {place.table}: exists already" in second.stdout
    assert "task retention: 3 days after a job ends" in second.stdout

    off = cli(tmp_path, "init", *names, "--retention-days", "0")
    assert off.returncode == 0 and "task retention: off" in off.stdout


def test_init_reads_a_job_definition_and_refuses_missing_names(
    moto_endpoint: str,
    tmp_path: Path,
) -> None:
    place = new_place(moto_endpoint, create=False)
    config = make_aws_job(place, tmp_path / "job", 1)
    made = cli(tmp_path, "init", str(config))
    assert made.returncode == 0, made.stderr
    assert "created" in made.stdout and place.table in made.stdout
    missing = cli(tmp_path, "init", "--bucket", "b")
    assert missing.returncode == 2 and "--table required" in missing.stderr
    assert "Traceback" not in missing.stderr


def _statements(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in policy["Statement"]}


def test_iam_policy_is_scoped_to_the_prefix_table_and_queues(tmp_path: Path) -> None:
    out = cli(
        tmp_path,
        "iam-policy",
        "--bucket",
        "bkt",
        "--table",
        "state",
        "--prefix",
        "team/a",
        "--region",
        "eu-west-1",
        "--account",
        "123456789012",
        "--input",
        "s3://inputs/2025/users.jsonl",
    )
    assert out.returncode == 0, out.stderr
    st = _statements(json.loads(out.stdout))
    table = "arn:aws:dynamodb:eu-west-1:123456789012:table/state"
    assert st["SlurmctlStateTable"]["Resource"] == [table, f"{table}/index/unfinished"]
    assert "dynamodb:Scan" not in st["SlurmctlStateTable"]["Action"]
    assert "dynamodb:DeleteTable" not in st["SlurmctlStateTable"]["Action"]
    assert st["SlurmctlObjects"]["Resource"] == "arn:aws:s3:::bkt/team/a/*"
    assert st["SlurmctlListPrefix"]["Condition"] == {"StringLike": {"s3:prefix": ["team/a/*"]}}
    assert st["SlurmctlJobQueues"]["Resource"] == "arn:aws:sqs:eu-west-1:123456789012:slurmctl-*"
    assert st["SlurmctlInputs"]["Resource"] == ["arn:aws:s3:::inputs/2025/users.jsonl"]
    assert not any(s["Resource"] == "*" for s in st.values())
    assert all(s["Effect"] == "Allow" for s in st.values()) and "SlurmctlInitTable" not in st
    cn = cli(tmp_path, "iam-policy", "--bucket", "b", "--table", "t", "--region", "cn-north-1")
    assert "arn:aws-cn:dynamodb:cn-north-1:*:table/t" in cn.stdout
    assert "no --account" in cn.stderr


def test_iam_policy_objects_enforced_by_moto(tmp_path: Path) -> None:
    """moto enforces IAM on S3 objects (not on DynamoDB, whose requests it checks against
    resource '*', nor on s3:prefix conditions): the policy lets a job's keys use the objects
    under its prefix and nothing else."""
    import boto3

    policy = cli(
        tmp_path, "iam-policy", "--bucket", "mine", "--table", "t", "--account", "123456789012"
    )
    assert policy.returncode == 0, policy.stderr
    doc = json.loads(policy.stdout)
    doc["Statement"] = [s for s in doc["Statement"] if s["Sid"] == "SlurmctlObjects"]
    # six set-up calls go through unchecked, every later one is checked
    with running_moto(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "6"}) as server:
        s3 = boto3.client("s3", endpoint_url=server.url)
        iam = boto3.client("iam", endpoint_url=server.url)
        s3.create_bucket(Bucket="mine")
        s3.create_bucket(Bucket="other")
        iam.create_user(UserName="job")
        arn = iam.create_policy(PolicyName="slurmctl", PolicyDocument=json.dumps(doc))
        iam.attach_user_policy(UserName="job", PolicyArn=arn["Policy"]["Arn"])
        key = iam.create_access_key(UserName="job")["AccessKey"]
        job = boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            aws_session_token=None,
        )
        job.put_object(Bucket="mine", Key="slurmctl/jobs/j/manifest.json", Body=b"{}")
        assert job.get_object(Bucket="mine", Key="slurmctl/jobs/j/manifest.json")["Body"].read()
        for bucket, k in (("other", "slurmctl/x"), ("mine", "elsewhere/x")):
            with pytest.raises(job.exceptions.ClientError, match="AccessDenied"):
                job.put_object(Bucket=bucket, Key=k, Body=b"no")


def test_input_from_s3_streamed_with_quarantine_line_numbers(
    moto_endpoint: str,
    tmp_path: Path,
) -> None:
    place = new_place(moto_endpoint)
    lines = [json.dumps({"id": str(i), "n": i}) for i in range(300)]
    lines.insert(4, "{broken")  # line 5
    lines.insert(9, json.dumps({"id": "7", "n": 7}))  # line 10: a duplicate of line 9
    place.s3.put_object(
        Bucket=place.bucket, Key="inputs/in.jsonl", Body=("\n".join(lines) + "\n").encode()
    )
    config = make_aws_job(place, tmp_path / "job", 0, workers=1, batch_size=50, job_id="aws-s3in")
    url = f"s3://{place.bucket}/inputs/in.jsonl"
    config.write_text(config.read_text().replace("input: input.jsonl", f"input: {url}"))
    root = tmp_path / "root"

    dry = cli(root, "submit", "--dry-run", str(config))
    assert dry.returncode == 0, dry.stderr
    assert "items         300" in dry.stdout and "quarantined   2" in dry.stdout
    run = cli(root, "submit", "--no-progress", str(config))
    assert run.returncode == 0, run.stderr
    assert "COMPLETED: 299 succeeded, 1 failed permanently, 0 failed transiently, 2 quar" in (
        run.stdout
    )
    got = assert_exactly_once_s3(root, place, "aws-s3in", 300)
    assert got["quarantine"] == ["5", "10"]
    manifest = place.s3.get_object(Bucket=place.bucket, Key="slurmctl/jobs/aws-s3in/manifest.json")
    assert json.loads(manifest["Body"].read())["input_file"] == url

    missing = config.with_name("missing.yaml")
    missing.write_text(config.read_text().replace(url, f"{url}.gone").replace("aws-s3in", "gone"))
    refused = cli(root, "submit", "--no-progress", str(missing))
    assert refused.returncode == 2
    assert f"{url}.gone: cannot read input: no such object" in refused.stderr
    assert (
        place.ddb.get_item(
            TableName=place.table, Key={"pk": {"S": "JOB#gone"}, "sk": {"S": "JOB"}}
        ).get("Item")
        is None
    )
