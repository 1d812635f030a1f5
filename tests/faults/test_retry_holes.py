"""Retry phases under kills at exact lines (issue 13, holes 3, 4, 5 and 8): a real SIGKILL at a
named kill point (slurmctl/faults.py), then the next command carries on; every item ends in
the output or a failure manifest exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, failure_manifest, make_job, popen, status

# Items i % 100 == 3 fail permanently; i % 10 == 1 fail once with a reset (the retry succeeds);
# with SLOW set, every retried item takes a little while (two retries overlap for sure).
HANDLER = """
import os, time
from slurmctl import PermanentError

def process(item, ctx):
    i = int(item["id"])
    mark = os.path.join(os.environ["MARKS"], item["id"])
    with open(mark, "a") as f:
        f.write("x")
    attempt = os.path.getsize(mark)
    if attempt > 1 and os.environ.get("SLOW"):
        time.sleep(0.1)
    if i % 100 == 3:
        raise PermanentError("item %d is broken" % i)
    if i % 10 == 1 and attempt == 1:
        raise ConnectionResetError(104, "reset by peer")
    return {"id": item["id"], "attempt": attempt}
"""


def _job(tmp_path: Path, count: int, extra: str) -> tuple[Path, Path, dict[str, str]]:
    marks = tmp_path / "marks"
    marks.mkdir()
    config = make_job(
        tmp_path / "job", count, handler=HANDLER, batch_size=20, workers=2, extra=extra
    )
    return config, tmp_path / "root", {"MARKS": str(marks)}


def test_kill_between_the_phase_flip_and_the_failure_manifest(tmp_path: Path) -> None:
    """Hole 3: the failure manifest of the finished phase survives a kill right after the flip."""
    config, root, env = _job(tmp_path, 200, "retry: {max_attempts: 2, backoff_s: 0.1}\n")
    killed = cli(
        root, "submit", str(config), env={**env, "SLURMCTL_KILL_AT": "finalize.after_phase_flip"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert status(root, "t1")["phase"] == "retry_1"
    resumed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    got = assert_exactly_once(root, "t1", 200)
    assert sorted(map(int, got["failures"])) == [3, 103]
    initial = failure_manifest(root / "objects/jobs/t1", "initial")
    assert initial["count"] == 2 and initial["retried"] == 20
    s = status(root, "t1")
    assert s["status"] == "COMPLETED"
    assert s["items"]["succeeded"] == 198 and s["items"]["failed_permanent"] == 2
    assert s["items"]["pending"] == 0


def test_a_raw_cr_in_a_json_line_survives_the_retry_phase(tmp_path: Path) -> None:
    """Hole 8, the retry planner: batches are cut on \\n only; a raw CR (JSON whitespace) in
    item 5's line must not shift the lines of items 1 and 11, which are retried."""
    config, root, env = _job(tmp_path, 40, "retry: {max_attempts: 2, backoff_s: 0.1}\n")
    path = tmp_path / "job/input.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[5] = b'{"id": "5",\r "n": 5}'
    path.write_bytes(b"\n".join(lines))
    run = cli(root, "submit", str(config), "--no-progress", env=env)
    assert run.returncode == 0, run.stderr
    got = assert_exactly_once(root, "t1", 40)
    assert sorted(map(int, got["failures"])) == [3]
    s = status(root, "t1")
    assert s["items"]["succeeded"] == 39 and s["phases"]["retry_1"]["SUCCESS"] == 1


def _failed_job(tmp_path: Path, count: int = 200) -> tuple[Path, dict[str, str]]:
    """A COMPLETED job, no automatic retry: 20 network failures (i % 10 == 1) and 2 validation
    failures (3, 103) in failures/initial.jsonl."""
    config, root, env = _job(tmp_path, count, "retry: {max_attempts: 1}\n")
    run = cli(root, "submit", str(config), "--no-progress", env=env)
    assert run.returncode == 0, run.stderr
    items = status(root, "t1")["items"]
    assert (items["failed_transient"], items["failed_permanent"]) == (20, 2)
    return root, env


def _retry(root: Path, env: dict[str, str], errors: str, kill: str | None = None):  # type: ignore[no-untyped-def]
    extra = {"SLURMCTL_KILL_AT": kill} if kill else {}
    return cli(
        root, "retry", "--job-id", "t1", f"--errors={errors}", "--no-progress", env={**env, **extra}
    )


def test_retry_after_a_retry_killed_before_its_flip(tmp_path: Path) -> None:
    """Hole 4: the second retry (other error types) must not reuse the first one's batches."""
    root, env = _failed_job(tmp_path)
    killed = _retry(root, env, "network", kill="retry.after_tasks_written")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    batches = root / "objects/jobs/t1/batches"
    [stale] = batches.glob("r1-batch-*.jsonl")
    again = _retry(root, env, "network,validation")
    assert again.returncode == 0, again.stderr
    assert "retrying 22 items (20 network, 2 validation) in phase retry_1" in again.stdout
    got = assert_exactly_once(root, "t1", 200)
    assert sorted(map(int, got["failures"])) == [3, 103]
    s = status(root, "t1")
    assert s["status"] == "COMPLETED"
    assert s["items"] == {**s["items"], "succeeded": 198, "failed_permanent": 2, "pending": 0}
    assert s["phases"]["retry_1"] == {**s["phases"]["retry_1"], "SUCCESS": 2}
    assert not stale.exists() and len(list(batches.glob("r1-batch-*.jsonl"))) == 2


def test_retry_killed_after_its_flip_then_resumed_and_retried(tmp_path: Path) -> None:
    """Hole 4: a kill between the flip and the manifest rewrite lists no item twice."""
    root, env = _failed_job(tmp_path)
    killed = _retry(root, env, "network", kill="retry.after_phase_flip")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert_exactly_once(root, "t1", 200)
    again = _retry(root, env, "validation")
    assert again.returncode == 0, again.stderr
    got = assert_exactly_once(root, "t1", 200)
    assert sorted(map(int, got["failures"])) == [3, 103]
    s = status(root, "t1")
    assert (s["status"], s["phase"], s["items"]["succeeded"]) == ("COMPLETED", "retry_2", 198)


def test_two_retries_at_once_one_acts(tmp_path: Path) -> None:
    """Hole 4: `retry` runs under the job lease; the second gets a one-line refusal."""
    root, env = _failed_job(tmp_path)
    slow = {**env, "SLOW": "1"}
    args = ("retry", "--job-id", "t1", "--errors=network,validation", "--no-progress")
    procs = [popen(root, *args, env=slow) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 2)
    assert refused.startswith("error: job t1 is busy: another slurmctl process (local-")
    assert refused.endswith(") is acting on it; try again when it is done\n"), refused
    assert refused.count("\n") == 1
    got = assert_exactly_once(root, "t1", 200)
    assert sorted(map(int, got["failures"])) == [3, 103]
    s = status(root, "t1")
    assert (s["status"], s["phase"], s["items"]["succeeded"]) == ("COMPLETED", "retry_1", 198)


def test_retry_of_a_failed_job_with_an_unfinished_phase(tmp_path: Path) -> None:
    """Hole 5: `retry --errors` on a FAILED job whose phase did not finish is refused with the
    command that finishes it; once it has, the retry runs, and every item ends exactly once."""
    config, root, env = _job(tmp_path, 200, "retry: {max_attempts: 2, backoff_s: 0.1}\n")
    kill = {**env, "SLURMCTL_KILL_AT": "finalize.after_phase_flip"}
    assert cli(root, "submit", str(config), env=kill).returncode == -signal.SIGKILL
    [batch] = (root / "objects/jobs/t1/batches").glob("r1-batch-000000*.jsonl")
    original = batch.read_bytes()
    batch.write_bytes(original.replace(b'"n": 11', b'"n": 12'))  # damaged behind our back
    failed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert failed.returncode == 1, failed.stderr
    assert "1 task(s) could not run, e.g. r1-task-000000: " in failed.stderr
    refused = _retry(root, env, "validation")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "error: job t1 is FAILED with 1 task of phase retry_1 that could not run "
        "(r1-task-000000); `slurmctl retry --job-id t1 --tasks r1-task-000000` runs it again "
        "from its batch, first\n"
    )
    dry = cli(root, "retry", "--job-id", "t1", "--errors=validation", "--dry-run")
    assert (dry.returncode, dry.stderr) == (2, refused.stderr), "a dry run says the same"
    batch.write_bytes(original)
    rerun = cli(root, "retry", "--job-id", "t1", "--tasks", "r1-task-000000", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "job t1: running 1 task again from its batch (r1-task-000000)" in rerun.stdout
    assert_exactly_once(root, "t1", 200)
    again = _retry(root, env, "validation")
    assert again.returncode == 0, again.stderr
    got = assert_exactly_once(root, "t1", 200)
    assert sorted(map(int, got["failures"])) == [3, 103]
    s = status(root, "t1")
    assert (s["status"], s["phase"], s["items"]["pending"]) == ("COMPLETED", "retry_2", 0)
