"""End to end with `backend: aws`: real jobs through the CLI, worker subprocesses, the moto server
as a real HTTP endpoint; what the jobs left is read back from S3 and DynamoDB with boto3."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from slurmctl.backends.spec import Registry
from tests.aws.jobs import (
    AwsPlace,
    assert_exactly_once_s3,
    every_s3_object,
    every_table_item,
    job_queue_exists,
    make_aws_job,
    new_place,
)
from tests.helpers import cli, popen, s3_task_manifests, status, wait_for
from tests.moto_server import MotoServer, free_port, moto_endpoint, moto_server, require_boto3

_ = (moto_server, moto_endpoint)  # session fixtures
require_boto3(module_level=True)

SECRET_HANDLER = """
from slurmctl import PermanentError

def process(item, ctx):
    ctx.acquire()
    token = ctx.params["api_token"]
    if "${" in token:
        raise RuntimeError("the secret reached the handler unresolved")
    if int(item["id"]) % 500 == 3:
        raise PermanentError("item %s refused for token %s" % (item["id"], token))
    return {"id": item["id"], "double": item["n"] * 2}
"""

SLOW_HANDLER = """
import os, time

def process(item, ctx):
    ctx.acquire()
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(item["id"] + "\\n")
    time.sleep(0.002)
    return {"id": item["id"], "n": item["n"]}
"""


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_2000_items_three_workers_every_item_once_no_secret_queue_gone(
    moto_endpoint: str,
    tmp_path: Path,
) -> None:
    place = new_place(moto_endpoint, create=False)
    secret = f"tok-{uuid.uuid4().hex}"
    config = make_aws_job(
        place,
        tmp_path / "job",
        2000,
        handler=SECRET_HANDLER,
        workers=3,
        job_id="aws-e2e",
        extra='params: {api_token: "${API_TOKEN}"}\n',
    )
    root = tmp_path / "root"
    # init from the job definition's aws: section creates the bucket and the table
    made = cli(root, "init", str(config), "--retention-days", "7")
    assert made.returncode == 0, made.stderr
    assert f"S3 bucket {place.bucket}: created" in made.stdout
    assert f"DynamoDB table {place.table}: created" in made.stdout

    started = time.time()
    run = cli(root, "submit", "--no-progress", str(config), env={"API_TOKEN": secret})
    assert run.returncode == 0, run.stderr
    assert "job aws-e2e: COMPLETED: 1996 succeeded, 4 failed permanently" in run.stdout

    s = status(root, "aws-e2e")  # found through the registry: no --backend given
    assert s["status"] == "COMPLETED" and s["backend"] == "aws"
    assert s["items"]["succeeded"] == 1996 and s["items"]["failed_permanent"] == 4
    assert s["tasks"] == {"PENDING": 0, "RUNNING": 0, "SUCCESS": 20, "FAILED": 0}
    [out] = s["outputs"]
    assert out["path"].startswith(f"s3://{place.bucket}/slurmctl/jobs/aws-e2e/final/")
    assert out["path"].endswith(".parquet") and out["rows"] == 1996
    got = assert_exactly_once_s3(root, place, "aws-e2e", 2000)
    assert sorted(got["failures"], key=int) == ["3", "503", "1003", "1503"]

    objects = every_s3_object(place)
    tasks = s3_task_manifests(objects)
    assert len(tasks) == 20 and len({t["worker_id"] for t in tasks}) == 3
    # the secret: referenced in the stored definition, its value nowhere in S3 or DynamoDB
    definition = next(v for k, v in objects.items() if k.endswith("definition.json"))
    assert b"${API_TOKEN}" in definition
    leaked = [k for k, v in objects.items() if secret.encode() in v]
    assert not leaked, f"the secret is in {leaked}"
    items = every_table_item(place)
    assert secret not in json.dumps(items)
    failures = next(v for k, v in objects.items() if k.endswith("failures/initial.jsonl"))
    assert b"refused for token" in failures  # the message is kept, redacted

    assert not job_queue_exists(place, "aws-e2e"), "the job's SQS queue outlived the job"
    # retention: the finished job's task items carry the TTL attribute, ~7 days ahead
    task_items = [i for i in items if i["sk"]["S"].startswith("TASK#")]
    assert len(task_items) == 20
    # K from the job's size: an input of a few dozen KB (at most 1 task per 3,200 bytes at
    # batch 100) needs one task key, not the 16 of its 3 workers
    size = (tmp_path / "job" / "input.jsonl").stat().st_size
    assert size < 250 * 3200, size
    [job_item] = [i for i in items if i["pk"]["S"] == "JOB#aws-e2e" and i["sk"]["S"] == "JOB"]
    assert job_item["task_shards"] == {"N": "1"}
    assert {i["pk"]["S"] for i in task_items} == {"JOB#aws-e2e#T#0"}
    week = 7 * 86400
    for item in task_items:
        assert started + week - 5 <= int(item["expires_at"]["N"]) <= time.time() + week + 5
    assert not [i for i in items if "expires_at" in i and not i["sk"]["S"].startswith("TASK#")]


def test_pause_and_resume_an_aws_job_found_through_the_registry(
    moto_endpoint: str,
    tmp_path: Path,
) -> None:
    place = new_place(moto_endpoint)
    calls = tmp_path / "calls.txt"
    config = make_aws_job(
        place,
        tmp_path / "job",
        450,
        handler=SLOW_HANDLER,
        batch_size=50,
        workers=2,
        job_id="aws-pause",
        extra="rate_limit: {tokens_per_sec: 150, burst: 5}\n",
    )
    root = tmp_path / "root"
    proc = popen(root, "submit", "--no-progress", str(config), env={"CALLS_FILE": str(calls)})
    try:
        wait_for(lambda: len(_calls(calls)) >= 80, what="progress", timeout=60)
        spec = Registry(root).get("aws-pause")
        assert spec is not None and spec.kind == "aws" and spec.table == place.table
        paused = cli(root, "pause", "aws-pause")
        assert paused.returncode == 0, paused.stderr
        assert status(root, "aws-pause")["status"] == "PAUSED"
        time.sleep(1.0)
        settled = len(_calls(calls))
        time.sleep(1.5)
        assert len(_calls(calls)) == settled, "calls went on while paused"
        assert settled < 450
        resumed = cli(root, "resume", "aws-pause")
        assert resumed.returncode == 0, resumed.stderr
        assert "pause lifted" in resumed.stdout
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert_exactly_once_s3(root, place, "aws-pause", 450)
    history = every_s3_object(place)["slurmctl/jobs/aws-pause/history.jsonl"]
    actions = [json.loads(line)["action"] for line in history.splitlines()]
    assert "pause" in actions and "resume" in actions


def test_moto_frozen_during_a_job_every_item_still_once(
    moto_server: MotoServer,
    tmp_path: Path,
) -> None:
    place = new_place(moto_server.url)
    calls = tmp_path / "calls.txt"
    config = make_aws_job(
        place,
        tmp_path / "job",
        600,
        handler=SLOW_HANDLER,
        batch_size=50,
        workers=3,
        job_id="aws-freeze",
    )
    root = tmp_path / "root"
    proc = popen(root, "submit", "--no-progress", str(config), env={"CALLS_FILE": str(calls)})
    try:
        wait_for(lambda: len(_calls(calls)) >= 150, what="progress", timeout=60)
        moto_server.freeze()  # 10 s (issue 6), far longer than the lease (3 s)
        try:
            time.sleep(10.0)
        finally:
            moto_server.unfreeze()
        frozen_at = len(_calls(calls))
        _out, err = proc.communicate(timeout=120)
    finally:
        moto_server.unfreeze()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert frozen_at < 600, "the job ended before the freeze"
    got = assert_exactly_once_s3(root, place, "aws-freeze", 600)
    assert len(got["output"]) == 600
    assert status(root, "aws-freeze")["status"] == "COMPLETED"


def test_unreachable_endpoint_refuses_submit_and_leaves_no_job(tmp_path: Path) -> None:
    port = free_port()
    place = AwsPlace(f"http://127.0.0.1:{port}", "no-bucket", "no-table")
    config = make_aws_job(place, tmp_path / "job", 10, job_id="aws-nowhere")
    root = tmp_path / "root"
    started = time.monotonic()
    run = cli(root, "submit", "--no-progress", str(config))
    assert run.returncode == 2
    [error] = _errors(run.stderr)
    assert f"http://127.0.0.1:{port}" in error and "cannot reach" in error
    assert time.monotonic() - started < 30
    assert Registry(root).get("aws-nowhere") is None
    assert cli(root, "status", "aws-nowhere").returncode == 2


def test_missing_table_says_run_init_and_leaves_no_job(
    moto_endpoint: str,
    tmp_path: Path,
) -> None:
    place = new_place(moto_endpoint, create=False)
    config = make_aws_job(place, tmp_path / "job", 10, job_id="aws-notable")
    root = tmp_path / "root"
    run = cli(root, "submit", "--no-progress", str(config))
    assert run.returncode == 2
    [error] = _errors(run.stderr)
    assert place.table in error and "slurmctl init" in error
    assert Registry(root).get("aws-notable") is None
    assert not job_queue_exists(place, "aws-notable")
