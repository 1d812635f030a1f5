"""Streaming submit (issue 16) on the embedded backend, through the real CLI: the workers start
as soon as the first tasks are durable, the phase ends only after the "submit done" marker, and a
submit SIGKILLed mid-stream is carried on by `resume`, every item exactly once.

The submit is held at an exact line (`SLURMCTL_HOLD_AT`, slurmctl/faults.py) until the test
creates a gate file, so "submit has not finished cutting" is a fact the test controls, not a
race it hopes to win.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

from tests.helpers import (
    assert_exactly_once,
    cli,
    make_job,
    popen,
    status,
    stored_batches,
    wait_for,
)

WAITING = "no task left; waiting for submit to write the rest"


def _held(gate: Path, point: str) -> dict[str, str]:
    return {"SLURMCTL_HOLD_AT": f"{point}={gate}"}


def _worker_logs(root: Path, job_id: str = "t1") -> list[str]:
    folder = root / "logs" / job_id
    return [p.read_text(errors="replace") for p in sorted(folder.glob("local-*.log"))]


def _committed(root: Path, job_id: str = "t1") -> int:
    """Tasks committed so far (0 while the job is not there yet)."""
    out = cli(root, "status", job_id, "--json")
    if out.returncode != 0 or not out.stdout.strip():
        return 0
    return int(json.loads(out.stdout)["tasks"]["SUCCESS"])


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out, err


def test_a_worker_commits_while_submit_is_still_cutting(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 2000, batch_size=10, workers=2)
    root, gate = tmp_path / "root", tmp_path / "gate"
    proc = popen(
        root, "submit", str(config), "--no-progress", env=_held(gate, "submit.after_batch@50")
    )
    try:
        wait_for(lambda: _committed(root) >= 1, what="a committed task")
        s = status(root, "t1")
        assert proc.poll() is None, "submit still holds after its 50th batch"
        assert s["status"] == "RUNNING"
        # only the tasks written so far are counted: 50 batches of 10 items at most
        assert 10 <= s["items"]["total"] <= 500
        assert s["outputs"] == []
    finally:
        gate.touch()
    out, _ = _finish(proc)
    assert "job t1 submitted" in out
    assert "COMPLETED: 1996 succeeded, 4 failed permanently" in out
    assert_exactly_once(root, "t1", 2000)
    s = status(root, "t1")
    assert s["tasks"]["SUCCESS"] == 200 and s["items"]["total"] == 2000


def test_the_phase_waits_for_the_submit_done_marker(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 300, batch_size=10, workers=2)
    root, gate = tmp_path / "root", tmp_path / "gate"
    # held after every task is written and counted, just before the marker is set
    proc = popen(
        root, "submit", str(config), "--no-progress", env=_held(gate, "submit.before_done")
    )
    try:
        wait_for(lambda: _committed(root) == 30, what="every written task done")
        # both workers saw no task left and stay, waiting for the marker
        wait_for(
            lambda: sum(WAITING in text for text in _worker_logs(root)) == 2,
            what="both workers waiting for the marker",
        )
        s = status(root, "t1")
        assert s["status"] == "RUNNING", "the phase must not end before the marker"
        assert s["tasks"]["PENDING"] == 0 and s["tasks"]["RUNNING"] == 0
        assert s["outputs"] == []
        assert proc.poll() is None
        assert not any("has no task left, leaving" in t for t in _worker_logs(root))
    finally:
        gate.touch()
    out, _ = _finish(proc)
    assert "COMPLETED: 299 succeeded, 1 failed permanently" in out
    assert_exactly_once(root, "t1", 300)


def test_submit_killed_mid_stream_while_workers_run_then_resume(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 3000, batch_size=10, workers=2)
    root, gate = tmp_path / "root", tmp_path / "gate"
    proc = popen(
        root, "submit", str(config), "--no-progress", env=_held(gate, "submit.after_batch@120")
    )
    wait_for(lambda: _committed(root) >= 5, what="committed tasks")
    before = status(root, "t1")
    assert before["items"]["total"] < 3000
    proc.send_signal(signal.SIGKILL)  # the submit only: its workers are running
    proc.communicate(timeout=30)
    # the orphaned workers stop by themselves (their supervisor is gone)
    wait_for(lambda: status(root, "t1")["status"] == "STOPPED", what="the job shown STOPPED")
    resumed = cli(root, "resume", "t1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "job t1 was not fully submitted: carrying on with the submission" in resumed.stdout
    assert "COMPLETED: 2994 succeeded, 6 failed permanently" in resumed.stdout
    assert_exactly_once(root, "t1", 3000)
    s = status(root, "t1")
    assert s["tasks"]["SUCCESS"] == 300 and s["items"]["total"] == 3000
    assert s["items"]["pending"] == 0
    # the id width chosen at the first submit is kept by the resumed one (issue 13, hole 6)
    batches = root / "objects" / "jobs" / "t1" / "batches"
    names = stored_batches(batches)
    assert len(names) == len(set(names)) == 300
    assert {len(re.sub(r"\D", "", n)) for n in names} == {6}


def test_too_many_bad_lines_found_after_the_workers_started_leave_nothing(
    tmp_path: Path,
) -> None:
    config = make_job(tmp_path / "job", 200, batch_size=10, workers=2)
    with open(tmp_path / "job" / "input.jsonl", "a") as f:  # bad lines at the end only
        f.write("not json\n" * 50)
    root = tmp_path / "root"
    done = cli(root, "submit", str(config), "--no-progress")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'job' / 'input.jsonl'}: 50 bad lines of 250 (20.0%, 50 invalid "
        "JSON) exceed max_quarantine_share 0.01; fix the input or raise it"
    )
    assert "Traceback" not in done.stderr
    assert cli(root, "list", "--json").stdout.strip() == "[]"
    assert not (root / "objects" / "jobs" / "t1").exists()
