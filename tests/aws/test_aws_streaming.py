"""Streaming submit (issue 16) with `backend: aws` on the moto server, through the real CLI:
a worker commits while submit still cuts batches (held at an exact line by `SLURMCTL_HOLD_AT`),
and a submit SIGKILLed mid-stream while its workers run is carried on by `resume`, every item
exactly once (read back from S3)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.aws.jobs import assert_exactly_once_s3, make_aws_job, new_place
from tests.helpers import cli, popen, status, wait_for
from tests.moto_server import moto_endpoint, moto_server, require_boto3

_ = (moto_server, moto_endpoint)  # session fixtures
require_boto3(module_level=True)


def _committed(root: Path, job_id: str) -> int:
    out = cli(root, "status", job_id, "--json")
    if out.returncode != 0 or not out.stdout.strip():
        return 0
    return int(json.loads(out.stdout)["tasks"]["SUCCESS"])


def _held(gate: Path, point: str) -> dict[str, str]:
    return {"SLURMCTL_HOLD_AT": f"{point}={gate}"}


def test_aws_worker_commits_while_submit_is_still_cutting(
    moto_endpoint: str, tmp_path: Path
) -> None:
    place = new_place(moto_endpoint)
    config = make_aws_job(place, tmp_path / "job", 600, batch_size=10, workers=2, job_id="st1")
    root, gate = tmp_path / "root", tmp_path / "gate"
    proc = popen(
        root, "submit", str(config), "--no-progress", env=_held(gate, "submit.after_batch@30")
    )
    try:
        wait_for(lambda: _committed(root, "st1") >= 1, what="a committed task")
        s = status(root, "st1")
        assert proc.poll() is None, "submit still holds after its 30th batch"
        assert s["status"] == "RUNNING" and s["outputs"] == []
        assert 10 <= s["items"]["total"] <= 300
    finally:
        gate.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "job st1: COMPLETED: 598 succeeded, 2 failed permanently" in out
    assert_exactly_once_s3(root, place, "st1", 600)
    assert status(root, "st1")["tasks"]["SUCCESS"] == 60


def test_aws_submit_killed_mid_stream_then_resume_every_item_once(
    moto_endpoint: str, tmp_path: Path
) -> None:
    place = new_place(moto_endpoint)
    config = make_aws_job(place, tmp_path / "job", 800, batch_size=10, workers=2, job_id="st2")
    root, gate = tmp_path / "root", tmp_path / "gate"
    proc = popen(
        root, "submit", str(config), "--no-progress", env=_held(gate, "submit.after_batch@40")
    )
    wait_for(lambda: _committed(root, "st2") >= 3, what="committed tasks")
    assert status(root, "st2")["items"]["total"] < 800
    proc.send_signal(signal.SIGKILL)  # the submit only, while its workers run
    proc.communicate(timeout=30)
    resumed = cli(root, "resume", "st2", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "job st2 was not fully submitted: carrying on with the submission" in resumed.stdout
    assert "job st2: COMPLETED: 798 succeeded, 2 failed permanently" in resumed.stdout
    assert_exactly_once_s3(root, place, "st2", 800)
    s = status(root, "st2")
    assert s["tasks"]["SUCCESS"] == 80 and s["items"]["total"] == 800
    assert s["items"]["pending"] == 0
    # 80 batches in 9 packs (1, 2, 4, 8, then 16 at most), each stored once, put-if-absent
    listed = place.s3.list_objects_v2(
        Bucket=place.bucket, Prefix=f"{place.prefix}jobs/st2/batches/"
    )
    packs = sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"])
    assert len(packs) == 9 and packs[0] == "batch-000000--batch-000000.jsonl", packs
    assert packs[-1] == "batch-000079--batch-000079.jsonl"
