"""What a worker gathers instead of sending per task (worker/gather.py), on a real job through
the CLI against the moto server: the deletes of used-up hints, up to 10 receipts a request
(counted through a proxy in front of moto), and the per-task metrics, folded and still reaching
`status` while the worker is busy and exactly once it has left."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.aws.counting_proxy import counting_proxy
from tests.aws.jobs import AwsPlace, assert_exactly_once_s3, make_aws_job, new_place
from tests.helpers import DEFAULT_HANDLER, cli, popen, status, wait_for
from tests.moto_server import moto_endpoint, moto_server  # noqa: F401  (session fixtures)

BLOCKING_HANDLER = """
import os, time

def process(item, ctx):
    if item["id"] == "29":  # the last task holds its worker until the test lets it go
        while not os.path.exists(ctx.params["release"]):
            time.sleep(0.05)
    return {"id": item["id"]}
"""


def _long_lease(config: Path) -> None:
    """A lease of 60 s: the deletes wait up to 5 s (a quarter of a short lease otherwise)."""
    text = config.read_text().replace("lease: {ttl_s: 3, heartbeat_s: 1}", "lease: {ttl_s: 60}")
    config.write_text(text)


def _counters(place: AwsPlace, job_id: str) -> dict[str, int]:
    from slurmctl.backends.aws import open_aws

    backend = open_aws(place.bucket, place.table, "us-east-1", place.endpoint)
    try:
        return backend.state.counters(job_id)
    finally:
        backend.close()


def test_used_up_hints_are_deleted_up_to_ten_receipts_a_request(
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    with counting_proxy(moto_endpoint) as proxy:
        place = new_place(moto_endpoint)
        via = AwsPlace(proxy.url, place.bucket, place.table)
        config = make_aws_job(
            via, tmp_path / "job", 400, handler=DEFAULT_HANDLER, batch_size=10, workers=2
        )
        _long_lease(config)
        root = tmp_path / "root"
        run = cli(root, "submit", "--no-progress", str(config))
        assert run.returncode == 0, run.stderr
        assert "job aws1: COMPLETED: 399 succeeded, 1 failed permanently" in run.stdout
        received = sum(len(c.response.get("Messages", [])) for c in proxy.sqs("ReceiveMessage"))
        deletes = proxy.sqs("DeleteMessageBatch")
        per_request = [len(c.request["Entries"]) for c in deletes]
        assert_exactly_once_s3(root, via, "aws1", 400)  # the job's registry names the proxy
    assert not proxy.sqs("DeleteMessage")  # never one by one
    assert received >= 40  # every task's hint, and any re-sent one
    assert sum(per_request) == received, "a used-up hint was not deleted"
    assert max(per_request) <= 10 and min(per_request) >= 1
    # one request per task before; now as many receipts as a worker gathers in 5 s (10 at
    # most), fewer when it idles or leaves: about 1.5 tasks/s per worker through moto here
    assert len(deletes) <= received // 3, per_request
    failed = [c.response for c in deletes if c.response.get("Failed")]
    assert not failed


def test_folded_metrics_reach_status_while_the_worker_is_busy_and_all_once_it_left(
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    place = new_place(moto_endpoint)
    release = tmp_path / "release"
    config = make_aws_job(
        place,
        tmp_path / "job",
        30,
        handler=BLOCKING_HANDLER,
        batch_size=10,
        workers=1,
        extra=f"params: {{release: '{release}'}}\n",
    )
    root = tmp_path / "root"
    proc = popen(root, "submit", "--no-progress", str(config))
    try:
        # two tasks committed, the third holds the only worker: their metrics (folded, not yet
        # 50 tasks) come by the worker's timer, within its 5 s
        wait_for(
            lambda: _counters(place, "aws1").get("obs.tasks") == 2,
            timeout=60,
            what="the first two tasks' metrics",
        )
        s = status(root, "aws1")
        assert s["status"] == "RUNNING" and s["tasks"]["SUCCESS"] == 2
        assert s["items_per_s"]["average"] > 0  # from the time series the metrics carry
        release.write_text("")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    counters = _counters(place, "aws1")
    assert counters["obs.tasks"] == 3 and counters["obs.handler_calls"] == 30
    assert sum(v for k, v in counters.items() if k.startswith("obs.ts.")) == 30
