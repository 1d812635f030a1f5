"""Errors of the stores themselves (issue 13, hole 13): a committed result deleted or damaged
before aggregation, a truncated state.sqlite, a full disk. Each is one line naming what and
where, the job FAILED with that reason where a job can be told, and `retry --tasks` runs the
affected task again from its intact batch, counters exact, every item exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.test_retry_holes import HANDLER
from tests.helpers import assert_exactly_once, cli, make_job, status, task_records

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")
BEFORE_AGGREGATE = {"SLURMCTL_KILL_AT": "finalize.before_aggregate"}


def _killed_before_aggregation(tmp_path: Path, extra: str = "") -> tuple[Path, dict[str, str]]:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"MARKS": str(marks)}
    config = make_job(tmp_path / "job", 200, handler=HANDLER, batch_size=20, workers=2, extra=extra)
    root = tmp_path / "root"
    killed = cli(root, "submit", str(config), "--no-progress", env={**env, **BEFORE_AGGREGATE})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert status(root, "t1")["status"] == "STOPPED"  # killed in the foreground, mid-finalize
    return root, env


def _result(root: Path, task: str) -> Path:
    [path] = (root / "objects/jobs/t1/results" / task).glob("*.parquet")
    return path


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_a_lost_result_fails_the_job_with_one_line_and_retry_tasks_reruns_it(
    tmp_path: Path, damage: str
) -> None:
    root, env = _killed_before_aggregation(tmp_path, "retry: {max_attempts: 1}\n")
    before = status(root, "t1")["items"]
    path = _result(root, "task-000002")
    key = str(path.relative_to(root / "objects"))
    if damage == "deleted":
        path.unlink()
        state = "is missing"
    else:
        path.write_bytes(path.read_bytes()[:-9] + b"xxxxxxxxx")
        state = "is damaged (sha256 mismatch)"
    reason = (
        f"task task-000002: its committed result {key} {state}; "
        "`slurmctl retry --job-id t1 --tasks task-000002` runs it again from its batch"
    )
    failed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == f"error: {reason}"  # after the job-failed alert
    assert "Traceback" not in failed.stderr
    s = status(root, "t1")
    assert (s["status"], s["error"]) == ("FAILED", reason)
    again = cli(root, "aggregate", "t1")
    assert again.returncode == 1 and again.stderr.splitlines()[-1] == f"error: {reason}"
    rerun = cli(root, "retry", "--job-id", "t1", "--tasks", "task-000002", "--no-progress", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "job t1: running 1 task again from its batch (task-000002), 20 items" in rerun.stdout
    assert "Traceback" not in rerun.stderr
    s = status(root, "t1")
    # items 41 and 51 failed their first attempt (a reset); run again, they succeed
    moved = {"succeeded": before["succeeded"] + 2, "failed_transient": 18}
    assert s["status"] == "COMPLETED" and s["items"] == {**before, **moved}
    got = assert_exactly_once(root, "t1", 200)
    network = [i for i in range(1, 200, 10) if i not in (41, 51)]
    assert sorted(map(int, got["failures"])) == sorted([3, 103, *network])


def test_a_lost_result_of_an_earlier_phase_reruns_only_its_succeeded_items(tmp_path: Path) -> None:
    """task-000000 (items 0-19) lost items 1 and 11 to a retry phase and 3 to the manifest:
    run again, it runs its 17 other items, in the current phase."""
    root, env = _killed_before_aggregation(tmp_path, "retry: {max_attempts: 2, backoff_s: 0.1}\n")
    assert status(root, "t1")["phase"] == "retry_1"
    _result(root, "task-000000").unlink()
    failed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert failed.returncode == 1 and "task task-000000: its committed result" in failed.stderr
    rerun = cli(root, "retry", "--job-id", "t1", "--tasks", "task-000000", "--no-progress", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "running 1 task again from its batch (task-000000), 17 items" in rerun.stdout
    s = status(root, "t1")
    assert s["status"] == "COMPLETED"
    assert s["items"] == {**s["items"], "succeeded": 198, "failed_permanent": 2, "pending": 0}
    assert s["phases"]["initial"]["SUCCESS"] == 9 and s["phases"]["retry_1"]["SUCCESS"] == 2
    got = assert_exactly_once(root, "t1", 200)
    assert sorted(map(int, got["failures"])) == [3, 103]


def test_retry_tasks_refuses_unknown_and_running_tasks(tmp_path: Path) -> None:
    root, _ = _killed_before_aggregation(tmp_path, "retry: {max_attempts: 1}\n")
    unknown = cli(root, "retry", "--job-id", "t1", "--tasks", "task-000099")
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "error: --tasks: job t1 has no task 'task-000099'\n",
    )
    both = cli(root, "retry", "--job-id", "t1", "--tasks", "task-000001", "--errors", "network")
    assert (both.returncode, both.stderr) == (
        2,
        "error: retry: give one of --errors TYPES, --tasks TASK_IDS or --rerun-missing\n",
    )


def test_a_truncated_state_store_is_one_line(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 50, batch_size=10, workers=1)
    root = tmp_path / "root"
    assert cli(root, "submit", str(config), "--no-progress").returncode == 0
    db = root / "state.sqlite"
    db.write_bytes(db.read_bytes()[:3000])
    for args in (("status", "t1"), ("resume", "t1", "--no-progress"), ("list",)):
        out = cli(root, *args)
        assert out.returncode == 1, args
        [line] = out.stderr.splitlines()
        assert line.startswith(f"slurmctl: the state store {root} is unreadable ("), line
        assert line.endswith(
            "): damaged or truncated; restore it from a copy, or use another --root"
        )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs (mounting needs root: the test machine and CI are): room for the job's
    run once the filler is gone, counting what the workers a streaming submit started wrote
    before the disk filled."""
    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("NOT RUN: a full disk needs root to mount a small tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line(tmp_path: Path, small_disk: Path) -> None:
    config = make_job(tmp_path / "job", 20_000, batch_size=200, workers=1)  # ~0.6 MB of input
    root = small_disk / "root"
    (small_disk / "filler").write_bytes(b"x" * (15 << 20))
    out = cli(root, "submit", str(config), "--no-progress")
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    [line] = [x for x in out.stderr.splitlines() if not LOG_LINE.match(x)]
    assert line.startswith(f"slurmctl: no space left on device under {root}"), line
    assert line.endswith(
        "; free some space, then `slurmctl resume t1` carries on where it stopped"
    ), line
    os.unlink(small_disk / "filler")
    resumed = cli(root, "resume", "t1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert_exactly_once(root, "t1", 20_000)


def test_lost_item_errors_and_a_damaged_batch_are_named(tmp_path: Path) -> None:
    root, env = _killed_before_aggregation(tmp_path, "retry: {max_attempts: 1}\n")
    [errors] = (root / "objects/jobs/t1/results/task-000001").glob("*.errors.jsonl")
    errors.unlink()  # read by the failure manifest, before aggregation
    key = str(errors.relative_to(root / "objects"))
    failed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == (
        f"error: task task-000001: its committed item errors {key} is missing; "
        "`slurmctl retry --job-id t1 --tasks task-000001` runs it again from its batch"
    )
    record = task_records(root, "t1")["task-000001"]  # in the pack of batches 1 and 2
    assert record.batch_key == "jobs/t1/batches/batch-000001--batch-000002.jsonl"
    assert record.batch_range is not None and record.batch_range.startswith("0-")
    batch = root / "objects" / record.batch_key
    original = batch.read_bytes()
    batch.write_bytes(original.replace(b'"n": 21', b'"n": 12'))
    refused = cli(root, "retry", "--job-id", "t1", "--tasks", "task-000001", env=env)
    assert (refused.returncode, refused.stderr) == (
        2,
        "error: job t1: task task-000001 cannot run again: its batch "
        f"jobs/t1/batches/batch-000001--batch-000002.jsonl bytes {record.batch_range} is damaged "
        "(its sha256 is not the one recorded)\n",
    )
    batch.write_bytes(original)
    rerun = cli(root, "retry", "--job-id", "t1", "--tasks", "task-000001", "--no-progress", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert_exactly_once(root, "t1", 200)


def test_several_lost_results_are_run_again_with_rerun_missing(tmp_path: Path) -> None:
    root, env = _killed_before_aggregation(tmp_path, "retry: {max_attempts: 1}\n")
    before = status(root, "t1")["items"]
    for task in ("task-000004", "task-000007", "task-000008"):
        _result(root, task).unlink()
    failed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == (
        "error: 3 committed results are missing, e.g. task task-000004's; "
        "`slurmctl retry --job-id t1 --rerun-missing` runs them again from their batches"
    )
    dry = cli(root, "retry", "--job-id", "t1", "--rerun-missing", "--dry-run")
    assert dry.stdout == (
        "job t1: would run 3 task(s) again: task-000004,task-000007,task-000008\n"
    ), dry.stderr
    rerun = cli(root, "retry", "--job-id", "t1", "--rerun-missing", "--no-progress", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "running 3 tasks again from their batches " in rerun.stdout
    moved = {
        "succeeded": before["succeeded"] + 6,
        "failed_transient": before["failed_transient"] - 6,
    }
    # items 81, 91, 141, 151, 161 and 171 failed their first attempt; run again, they succeed
    assert status(root, "t1")["items"] == {**before, **moved}
    none = cli(root, "retry", "--job-id", "t1", "--rerun-missing")
    assert (none.returncode, none.stdout) == (0, "job t1: no committed result is missing\n")
    assert_exactly_once(root, "t1", 200)
