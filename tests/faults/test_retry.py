"""Retry phases: transient failures retried with backoff up to max_attempts; an operator's
retry of chosen error types; every item accounted for exactly once in the end."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, failure_manifest, make_job, status

# Attempts are counted in files, one per item, so the handler knows how often it saw an item.
FLAKY = """
import os
from slurmctl import PermanentError

def process(item, ctx):
    i = int(item["id"])
    mark = os.path.join(os.environ["MARKS"], item["id"])
    with open(mark, "a") as f:
        f.write("x")
    attempt = os.path.getsize(mark)
    if i % 100 == 3:
        raise PermanentError("item %d is broken" % i)
    if i % 50 == 7:
        raise TimeoutError("upstream timed out")   # every time: retries exhausted
    if i % 10 == 1 and attempt == 1:
        raise ConnectionResetError(104, "reset by peer")  # once: the retry succeeds
    return {"id": item["id"], "attempt": attempt}
"""


def _attempts(marks: Path) -> dict[int, int]:
    return {int(p.name): p.stat().st_size for p in marks.iterdir()}


def test_transient_failures_are_retried_in_phases(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    config = make_job(
        tmp_path / "job",
        1000,
        handler=FLAKY,
        batch_size=40,
        workers=3,
        extra="retry: {max_attempts: 3, backoff_s: 0.2, backoff_max_s: 1}\n",
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), env={"MARKS": str(marks)})
    assert run.returncode == 0, run.stderr
    perm = {i for i in range(1000) if i % 100 == 3}
    exhausted = {i for i in range(1000) if i % 50 == 7}
    flaky = {i for i in range(1000) if i % 10 == 1}
    s = status(root, "t1")
    assert s["status"] == "COMPLETED"
    assert s["items"]["failed_permanent"] == len(perm) == 10
    assert s["items"]["failed_transient"] == len(exhausted) == 20
    assert s["items"]["succeeded"] == 1000 - 30
    assert set(s["phases"]) == {"initial", "retry_1", "retry_2"}
    attempts = _attempts(marks)
    assert {i for i, n in attempts.items() if n == 3} == exhausted  # max_attempts, not more
    assert {i for i, n in attempts.items() if n == 2} == flaky
    assert all(attempts[i] == 1 for i in perm)
    got = assert_exactly_once(root, "t1", 1000)
    assert sorted(map(int, got["failures"])) == sorted(perm | exhausted)
    jobdir = root / "objects/jobs/t1"
    initial = failure_manifest(jobdir, "initial")
    assert initial["count"] == 10 and initial["retried"] == len(flaky) + len(exhausted)
    assert {e["reason"] for e in initial["items"]} == {"permanent error"}
    first = min(initial["items"], key=lambda e: int(e["item_id"]))
    assert json.loads(first["item"]) == {"id": "3", "n": 3}, "logged with its input item"
    last = failure_manifest(jobdir, "retry_2")
    assert last["count"] == 20 and {e["reason"] for e in last["items"]} == {"retries exhausted"}
    assert {e["error_type"] for e in last["items"]} == {"timeout"}
    assert len(list((jobdir / "batches").glob("r1-batch-000000--*.jsonl"))) == 1
    actions = [json.loads(x)["action"] for x in (jobdir / "history.jsonl").open()]
    assert actions.count("retry_phase") == 2
    rows = {int(r["id"]): r["attempt"] for r in _output_rows(s)}
    assert all(rows[i] == 2 for i in flaky - exhausted - perm)


def _output_rows(s: dict) -> list[dict]:  # type: ignore[type-arg]
    import pyarrow.parquet as pq

    rows: list[dict] = pq.read_table(s["outputs"][0]["path"]).to_pylist()  # type: ignore[type-arg]
    return rows


def test_operator_retry_of_chosen_types(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    config = make_job(
        tmp_path / "job",
        400,
        handler=FLAKY,
        batch_size=40,
        workers=2,
        extra="retry: {max_attempts: 1}\n",
    )
    root = tmp_path / "root"
    env = {"MARKS": str(marks)}
    assert cli(root, "submit", str(config), env=env).returncode == 0
    before = status(root, "t1")["items"]
    assert before["failed_permanent"] == 4 and before["failed_transient"] == 40 + 8
    dry = cli(root, "retry", "--job-id", "t1", "--errors=network,validation", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == (
        "job t1: would retry 44 items (40 network, 4 validation) in 2 tasks of phase retry_1"
    )
    assert status(root, "t1")["items"] == before, "a dry run changes nothing"
    bad = cli(root, "retry", "--job-id", "t1", "--errors=nework")
    assert bad.returncode == 2 and "unknown error type(s) nework" in bad.stderr
    run = cli(root, "retry", "--job-id", "t1", "--errors=network,validation", env=env)
    assert run.returncode == 0, run.stderr
    assert "retrying 44 items (40 network, 4 validation) in phase retry_1" in run.stdout
    after = status(root, "t1")
    assert after["status"] == "COMPLETED"
    # the resets succeed the second time; the broken items fail again; timeouts untouched
    assert after["items"]["succeeded"] == 400 - 4 - 8
    assert after["items"]["failed_permanent"] == 4 and after["items"]["failed_transient"] == 8
    got = assert_exactly_once(root, "t1", 400)
    assert len(got["output"]) == 388 == after["outputs"][0]["rows"]
    history = cli(root, "history", "t1")
    assert "retry" in history.stdout and "errors=['network', 'validation']" in history.stdout
