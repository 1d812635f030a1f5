"""The same observability on an AWS job (moto server over HTTP): metrics, series, shipped logs
without the secret, analyze-errors, watch, and the dashboard finding the job by the registry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.aws.jobs import every_s3_object, make_aws_job, new_place
from tests.helpers import cli, s3_task_manifests, status
from tests.moto_server import moto_endpoint, moto_server  # noqa: F401  (session fixtures)
from tests.observe.test_observe_job import _free_port, _get

HANDLER = """
from slurmctl import PermanentError

def process(item, ctx):
    if item["id"].endswith("3"):
        raise PermanentError("item %s refused (token %s)" % (item["id"], ctx.params["api_token"]))
    ctx.log.info("item %s done with %s", item["id"], ctx.params["api_token"])
    return {"id": item["id"]}
"""


def test_an_aws_job_is_observed_like_a_local_one(
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    place = new_place(moto_endpoint)
    secret = f"tok-{uuid.uuid4().hex}"
    config = make_aws_job(
        place,
        tmp_path / "job",
        300,
        handler=HANDLER,
        workers=2,
        job_id="aws-obs",
        extra='params: {api_token: "${API_TOKEN}"}\n',
    )
    root = tmp_path / "root"
    run = cli(root, "submit", "--no-progress", str(config), env={"API_TOKEN": secret})
    assert run.returncode == 0, run.stderr
    s = status(root, "aws-obs")
    assert s["backend"] == "aws" and s["items_per_s"]["average"] > 0

    objects = every_s3_object(place)
    manifests = s3_task_manifests(objects)
    assert len(manifests) == 3
    assert sum(m["metrics"]["failures_by_type"].get("validation", 0) for m in manifests) == 30
    assert all(m["metrics"]["io"] is not None for m in manifests)
    logs = [k for k in objects if "/logs/" in k]
    assert logs and all(k.endswith(".jsonl") for k in logs)
    assert not [k for k, v in objects.items() if secret.encode() in v]

    shown = cli(root, "logs", "aws-obs", "task-000001", "--level", "INFO")
    assert shown.returncode == 0, shown.stderr
    assert "item 150 done with ***" in shown.stdout and secret not in shown.stdout

    analysis = json.loads(cli(root, "analyze-errors", "aws-obs", "--json").stdout)
    [group] = analysis["groups"]
    assert (group["error_type"], group["count"], group["final"]) == ("validation", 30, 30)
    assert group["signature"] == "PermanentError: item N refused (token ***)"

    watched = cli(root, "watch", "aws-obs", "--once")
    assert watched.returncode == 0 and "aws-obs COMPLETED 300/300 items" in watched.stdout

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slurmctl", "--root", str(root), "dashboard", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(base + "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        jobs = json.loads(_get(base + "/api/jobs")[2])
        assert [(j["job_id"], j["backend"], j["done"]) for j in jobs] == [("aws-obs", "aws", 300)]
        d = json.loads(_get(base + "/api/jobs/aws-obs")[2])
        assert sum(p["items"] for p in d["series"]) == 300
        assert d["resources"]["failures_by_type"] == {"validation": 30}
        assert "aws-obs" in _get(base + "/job/aws-obs")[2]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
