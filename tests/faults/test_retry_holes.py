"""Retry phases under kills at exact lines (issue 13, holes 3, 4, 5 and 8): a real SIGKILL at a
named kill point (slurmctl/killpoints.py), then the next command carries on; every item ends in
the output or a failure manifest exactly once."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job, popen, status

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
    initial = json.loads((root / "objects/jobs/t1/failures/initial.json").read_text())
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
