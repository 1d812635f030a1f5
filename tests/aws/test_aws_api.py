"""The Python API with `backend: aws` against the moto server over HTTP: results, the Arrow
dataset and the failures read from S3, the job found through the state root's registry or the
backend URL, `wait` raising on a FAILED job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import slurmctl
from slurmctl.api import Items
from slurmctl.errors import JobNotFound, JobStateError, UserError
from slurmctl.states import JobStatus
from tests.aws.jobs import make_aws_job, new_place
from tests.helpers import cli
from tests.moto_server import moto_endpoint, moto_server, require_boto3

_ = (moto_server, moto_endpoint)  # session fixtures
require_boto3(module_level=True)

FAILING_HANDLER = """
from slurmctl import PermanentError

def process(item, ctx):
    raise PermanentError("item %s is refused" % item["id"])
"""


def test_api_results_dataset_failures_from_s3(tmp_path: Path, moto_endpoint: str) -> None:
    place = new_place(moto_endpoint)
    root = tmp_path / "root"
    config = make_aws_job(place, tmp_path / "job", 120, batch_size=40, workers=2)
    job = slurmctl.submit(config, root=root, wait=True)
    st = job.status()
    assert st.status is JobStatus.COMPLETED
    assert st.backend == "aws"
    assert st.items == Items(120, 119, 1, 0, 0, 0)
    assert st.outputs[0].path.startswith(f"s3://{place.bucket}/")

    rows = sorted(job.results().to_pylist(), key=lambda r: int(r["id"]))
    assert rows == [{"id": str(i), "double": 2 * i} for i in range(120) if i != 3]
    ds = job.dataset()  # read in S3, through pyarrow's S3 filesystem
    assert ds.count_rows() == 119
    assert sorted(ds.to_table(columns=["id"]).column("id").to_pylist(), key=int) == [
        str(i) for i in range(120) if i != 3
    ]
    fails = job.failures()
    assert fails.select(["id", "phase", "message", "attempts", "reason"]).to_pylist() == [
        {
            "id": "3",
            "phase": "initial",
            "message": "PermanentError: item 3 is broken",
            "attempts": 1,
            "reason": "permanent error",
        }
    ]

    found = slurmctl.job("aws1", root=root)  # through the registry submit filled
    assert found.backend.kind == "aws" and found.status().items == st.items
    url = job.backend.url
    assert slurmctl.job("aws1", backend=url).failures().num_rows == 1
    assert [j.job_id for j in slurmctl.list_jobs(root)] == ["aws1"]
    with pytest.raises(JobNotFound):
        slurmctl.job("other", backend=url)

    out = cli(root, "results", "aws1", "--format", "jsonl", "--limit", "2")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2
    out = cli(root, "failures", "aws1", "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith('"3","initial",')


def test_api_wait_on_a_failing_aws_job_raises(tmp_path: Path, moto_endpoint: str) -> None:
    place = new_place(moto_endpoint)
    root = tmp_path / "root"
    config = make_aws_job(
        place, tmp_path / "job", 40, handler=FAILING_HANDLER, batch_size=20, workers=1
    )
    job = slurmctl.submit(config, root=root)
    with pytest.raises(slurmctl.JobFailed) as caught:
        job.wait(timeout=120)
    assert caught.value.status.items == Items(40, 0, 40, 0, 0, 0)
    assert str(caught.value) == f"job aws1 FAILED: {caught.value.status.error}"
    assert sorted(job.failures().column("id").to_pylist(), key=int) == [str(i) for i in range(40)]
    # the CLI's one-line errors, raised as the library's exceptions
    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (job.results, JobStateError, "job aws1 is FAILED: its results exist once it is COMPLETED"),
        (job.dataset, JobStateError, "job aws1 is FAILED: its results exist once it is COMPLETED"),
        (job.pause, JobStateError, "job aws1 is FAILED: nothing to pause"),
        (job.cancel, JobStateError, "job aws1 is FAILED: nothing to cancel"),
        (
            lambda: job.retry(errors=["bogus"]),
            UserError,
            "--errors: unknown error type(s) bogus; valid: client, crash, network, not_found, "
            "oom, poison, preempted, schema, server, throttled, timeout, unknown, validation",
        ),
        (
            lambda: job.retry(errors=["network"]),
            JobStateError,
            "job aws1: no failure of type network to retry",
        ),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind) as error:
            call()
        assert str(error.value) == message
        assert isinstance(error.value, slurmctl.errors.SlurmctlError)
