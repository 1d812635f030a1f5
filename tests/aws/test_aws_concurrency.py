"""`concurrency: N` with `backend: aws` (moto over HTTP): items in flight on threads and on the
event loop, the next task claimed while the last items of the previous one finish, every item
exactly once in S3, errors classified per item, the in-flight figures in `status`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.aws.jobs import assert_exactly_once_s3, make_aws_job, new_place
from tests.helpers import cli, status
from tests.moto_server import moto_endpoint, moto_server, require_boto3
from tests.test_concurrency import EXTRA, HANDLERS, _calls, _expected_failures

_ = (moto_server, moto_endpoint)  # session fixtures
require_boto3(module_level=True)


@pytest.mark.parametrize("mode", ["threads", "async"])
def test_items_in_flight_on_aws_every_item_once(
    moto_endpoint: str, tmp_path: Path, mode: str
) -> None:
    place = new_place(moto_endpoint)
    calls = tmp_path / "calls.txt"
    config = make_aws_job(
        place,
        tmp_path / "job",
        300,
        handler=HANDLERS[mode],
        batch_size=50,
        workers=2,
        job_id=f"aws-conc-{mode}",
        extra=EXTRA + "rate_limit: {tokens_per_sec: 500, burst: 10}\n",
    )
    root = tmp_path / "root"
    run = cli(root, "submit", "--no-progress", str(config), env={"CALLS_FILE": str(calls)})
    assert run.returncode == 0, run.stderr
    got = assert_exactly_once_s3(root, place, f"aws-conc-{mode}", 300)
    assert Counter(_calls(calls)) == Counter(str(i) for i in range(300)), "an item ran twice"
    failed = set(_expected_failures(300))
    assert sorted(got["failures"], key=int) == sorted(failed, key=int)
    s = status(root, f"aws-conc-{mode}")
    assert s["items"]["failed_permanent"] == sum(1 for i in failed if int(i) % 7 == 3)
    assert s["in_flight"]["items_timed"] == 300
    assert 1 < s["in_flight"]["items_per_worker"] <= 16
