"""The Python API on the embedded backend: real jobs (worker subprocesses), submitted, followed
and read back through `slurmctl.submit` / `slurmctl.job`; the CLI's one-line errors as
exceptions of slurmctl's tree."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

import slurmctl
from slurmctl.api import Items
from slurmctl.errors import ConfigError, JobNotFound, JobStateError, UserError
from slurmctl.jobs import live_lease_holder
from slurmctl.states import JobStatus
from tests.helpers import make_job, status, wait_for

FAILING_HANDLER = """
from slurmctl import PermanentError

def process(item, ctx):
    raise PermanentError("item %s is refused" % item["id"])
"""

SLOW_HANDLER = """
import time

def process(item, ctx):
    time.sleep(0.02)
    return {"id": item["id"], "n": item["n"]}
"""

FLAKY_UNTIL_FIXED = """
import os
from slurmctl import PermanentError

def process(item, ctx):
    if item["id"] in ("7", "42") and not os.path.exists(os.environ["FIXED_FILE"]):
        raise PermanentError("item %s needs the fix" % item["id"])
    return {"id": item["id"], "double": item["n"] * 2}
"""


def test_submit_wait_status_results_failures(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = make_job(tmp_path / "job", 300, workers=2)
    job = slurmctl.submit(config, root=root, wait=True)
    st = job.status()
    assert st.status is JobStatus.COMPLETED
    assert st.items == Items(300, 299, 1, 0, 0, 0)
    assert (st.job_id, st.phase, st.rows, st.error, st.executor) == (
        "t1",
        "initial",
        299,
        None,
        "local",
    )
    assert st.tasks["SUCCESS"] == 3 and len(st.outputs) == 1 and st.outputs[0].rows == 299
    shown = status(root, "t1")  # what `status --json` shows
    for key in ("job_id", "status", "phase", "items", "tasks", "outputs", "rows", "error"):
        assert st.as_dict()[key] == shown[key]

    table = job.results()
    assert isinstance(table, pa.Table)
    assert table.schema.names == ["id", "double"]
    rows = sorted(table.to_pylist(), key=lambda r: int(r["id"]))
    assert rows == [{"id": str(i), "double": 2 * i} for i in range(300) if i != 3]
    ds = job.dataset()
    assert ds.count_rows() == 299
    assert ds.to_table(filter=pa.compute.field("double") == 20).to_pylist() == [
        {"id": "10", "double": 20}
    ]

    fails = job.failures()
    assert fails.schema.names == [
        "id",
        "phase",
        "error_type",
        "permanent",
        "message",
        "attempts",
        "reason",
        "task_id",
        "batch_id",
    ]
    assert fails.to_pylist() == [
        {
            "id": "3",
            "phase": "initial",
            "error_type": fails.column("error_type")[0].as_py(),
            "permanent": True,
            "message": "PermanentError: item 3 is broken",
            "attempts": 1,
            "reason": "permanent error",
            "task_id": "task-000000",
            "batch_id": "batch-000000",
        }
    ]
    assert job.failures(errors={"network"}).num_rows == 0

    again = slurmctl.job("t1", root=root)
    assert again.status().items == st.items
    assert [j.job_id for j in slurmctl.list_jobs(root)] == ["t1"]
    assert slurmctl.job("t1", backend=f"local://{root}").results().num_rows == 299


def test_submit_without_wait_returns_while_it_runs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = make_job(tmp_path / "job", 200, handler=SLOW_HANDLER, batch_size=20, workers=2)
    job = slurmctl.submit(config, root=root)
    assert job.status().status in (JobStatus.PENDING, JobStatus.RUNNING)
    assert live_lease_holder(job.backend, "t1") is not None  # a background runner holds it
    with pytest.raises(slurmctl.WaitTimeout) as late:
        job.wait(timeout=0)
    assert str(late.value) == f"job t1 is still {late.value.status.status} after 0s"
    assert isinstance(late.value, TimeoutError)
    final = job.wait(timeout=120, progress=True)
    assert final.status is JobStatus.COMPLETED
    assert final.items == Items(200, 200, 0, 0, 0, 0)
    assert job.results().num_rows == 200


def test_wait_on_a_failing_job_raises_job_failed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = make_job(tmp_path / "job", 50, handler=FAILING_HANDLER, batch_size=25, workers=1)
    job = slurmctl.submit(config, root=root)
    with pytest.raises(slurmctl.JobFailed) as caught:
        job.wait(timeout=120)
    st = caught.value.status
    assert st.status is JobStatus.FAILED
    assert st.items == Items(50, 0, 50, 0, 0, 0)
    assert str(caught.value) == f"job t1 FAILED: {st.error}"
    assert st.error == status(root, "t1")["error"] and st.error
    assert isinstance(caught.value, slurmctl.SlurmctlError)
    assert job.failures().num_rows == 50
    with pytest.raises(JobStateError, match=r"^job t1 is FAILED: its results exist once it is "):
        job.results()
    with pytest.raises(slurmctl.JobFailed):  # submitted again with wait: the same outcome
        slurmctl.submit(config, root=root, wait=True)


def test_errors_are_the_clis_one_line_user_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(JobNotFound) as nf:
        slurmctl.job("nope", root=root)
    assert str(nf.value) == "no job 'nope' in this state root; `slurmctl list` shows the jobs"
    with pytest.raises(ConfigError) as bad:
        slurmctl.submit(
            {
                "job_type": "x",
                "handler": "h:process",
                "input": "in.jsonl",
                "id_field": "id",
                "workers": "many",
            },
            root=root,
        )
    assert str(bad.value) == ("job definition (a dict): workers: expected an integer, found 'many'")
    assert slurmctl.list_jobs(root) == []  # nothing written

    config = make_job(tmp_path / "job", 20, batch_size=10, workers=1)
    job = slurmctl.submit(config, root=root, wait=True)
    with pytest.raises(JobStateError) as paused:
        job.pause()
    assert str(paused.value) == "job t1 is COMPLETED: nothing to pause"
    with pytest.raises(JobStateError) as cancelled:
        job.cancel()
    assert str(cancelled.value) == "job t1 is COMPLETED: nothing to cancel"
    with pytest.raises(UserError) as types:
        job.retry(errors=["bogus"])
    assert str(types.value).startswith("--errors: unknown error type(s) bogus; valid: client, ")
    with pytest.raises(JobStateError) as none:
        job.retry(errors=["network"])
    assert str(none.value) == "job t1: no failure of type network to retry"


def test_dict_definition_submits_like_its_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_job(tmp_path / "job", 30, batch_size=10, workers=1)
    definition = {
        "job_id": "from-dict",
        "job_type": "test",
        "handler": "handler:process",
        "input": str(tmp_path / "job" / "input.jsonl"),
        "id_field": "id",
        "batch_size": 10,
        "workers": 1,
    }
    cwd = os.getcwd()
    os.chdir(tmp_path / "job")  # the handler's folder: the dict's relative names start here
    try:
        job = slurmctl.submit(definition, root=root, wait=True)
    finally:
        os.chdir(cwd)
    assert job.job_id == "from-dict"
    assert job.status().items == Items(30, 29, 1, 0, 0, 0)  # the handler refuses item 3


def test_pause_resume_cancel(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = make_job(tmp_path / "job", 200, handler=SLOW_HANDLER, batch_size=10, workers=1)
    job = slurmctl.submit(config, root=root)
    assert job.pause() is True
    assert job.pause() is False
    assert job.status().status is JobStatus.PAUSED
    job.resume()
    assert job.status().status in (JobStatus.RUNNING, JobStatus.PENDING)
    assert job.cancel() == []
    assert job.status().status is JobStatus.CANCELLED
    with pytest.raises(slurmctl.JobStopped) as stopped:
        job.wait()
    assert str(stopped.value) == "job t1 is CANCELLED; `slurmctl resume t1` carries on"
    wait_for(lambda: live_lease_holder(job.backend, "t1") is None, what="the runner to leave")
    final = job.resume(wait=True)
    assert final.status is JobStatus.COMPLETED
    assert final.items == Items(200, 200, 0, 0, 0, 0)


def test_retry_of_chosen_types_in_a_new_phase(tmp_path: Path) -> None:
    root = tmp_path / "root"
    fixed = tmp_path / "fixed"
    config = make_job(tmp_path / "job", 100, handler=FLAKY_UNTIL_FIXED, batch_size=50, workers=1)
    os.environ["FIXED_FILE"] = str(fixed)
    try:
        job = slurmctl.submit(config, root=root, wait=True)
        fails = job.failures()
        assert sorted(fails.column("id").to_pylist()) == ["42", "7"]
        fixed.write_text("")
        final = job.retry(errors=set(fails.column("error_type").to_pylist()), wait=True)
    finally:
        del os.environ["FIXED_FILE"]
    assert final.status is JobStatus.COMPLETED
    assert final.phase == "retry_1"
    assert final.items == Items(100, 100, 0, 0, 0, 0)
    assert job.failures().num_rows == 0
    assert job.results().num_rows == 100
