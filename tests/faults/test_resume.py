"""Resume anywhere on the local executor: a submit killed half way, a run stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
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
from tests.test_faults_local import SLOW_HANDLER, _calls


def _batches(root: Path) -> int:
    return len(stored_batches(root / "objects" / "jobs" / "t1" / "batches"))


def test_submit_killed_half_way_carries_on(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 60_000, batch_size=10, workers=2)
    root = tmp_path / "root"
    proc = popen(root, "submit", str(config), "--no-progress")
    wait_for(lambda: _batches(root) >= 300, what="half-written batches")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = _batches(root)
    assert 300 <= written < 6000, "killed while batching"
    [job] = json.loads(cli(root, "list", "--json").stdout)
    # streaming submit: its workers ran (STOPPED now) unless killed before they started
    assert job["status"] in ("PENDING", "STOPPED")
    again = cli(root, "resume", "t1", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "job t1 was not fully submitted: carrying on with the submission" in again.stdout
    assert _batches(root) == 6000
    got = assert_exactly_once(root, "t1", 60_000)
    assert len(got["failures"]) == 120
    s = status(root, "t1")
    assert s["tasks"]["SUCCESS"] == 6000 and s["items"]["total"] == 60_000


def test_ctrl_c_stops_at_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        600,
        handler=SLOW_HANDLER,
        batch_size=50,
        workers=2,
        extra="checkpoint_every: 10\n",
    )
    root = tmp_path / "root"
    env = {"CALLS_FILE": str(calls)}
    proc = popen(root, "submit", str(config), env=env)
    wait_for(lambda: len(_calls(calls)) >= 150, what="progress")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "`slurmctl resume t1` carries on" in err
    assert "Traceback" not in err
    s = status(root, "t1")
    assert s["status"] == "STOPPED" and s["tasks"]["RUNNING"] == 0, "leases released"
    stopped_at = len(_calls(calls))
    resumed = cli(root, "resume", "t1", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "COMPLETED: 600 succeeded" in resumed.stdout
    assert_exactly_once(root, "t1", 600)
    # items checkpointed before Ctrl-C were not run again (at most one chunk per task redone)
    assert len(_calls(calls)) <= 600 + 2 * 10, (stopped_at, len(_calls(calls)))


def test_submit_again_carries_on_a_half_written_job(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 30_000, batch_size=10, workers=2)
    root = tmp_path / "root"
    proc = popen(root, "submit", str(config), "--no-progress")
    wait_for(lambda: _batches(root) >= 200, what="half-written batches")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _batches(root) < 3000
    again = cli(root, "submit", str(config), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "job t1 exists: carrying on where it stopped" in again.stdout
    assert_exactly_once(root, "t1", 30_000)


def test_two_resumes_at_once_one_acts(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(tmp_path / "job", 400, handler=SLOW_HANDLER, batch_size=20, workers=2)
    root = tmp_path / "root"
    env = {"CALLS_FILE": str(calls)}
    proc = popen(root, "submit", str(config), env=env)
    wait_for(lambda: len(_calls(calls)) >= 50, what="progress")
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    first = popen(root, "resume", "t1", "--no-progress", env=env)
    second = popen(root, "resume", "t1", "--no-progress", env=env)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == second.returncode == 0, err1 + err2
    outs = sorted([out1, out2], key=lambda o: "being resumed" in o)
    assert "COMPLETED: 400 succeeded" in outs[0]
    assert "being resumed by another slurmctl process" in outs[1]
    assert_exactly_once(root, "t1", 400)


def test_clean_scratch_then_everything(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 100, batch_size=10, workers=1)
    root = tmp_path / "root"
    assert cli(root, "submit", str(config), "--no-progress").returncode == 0
    stale = tmp_path / "job" / "scratch" / "job_t1" / "task_task-000001"
    stale.mkdir(parents=True)
    asked = cli(root, "clean", "t1")  # no terminal to answer: it refuses rather than guess
    assert asked.returncode != 0 and stale.exists()
    scratch = cli(root, "clean", "t1", "--yes")
    assert scratch.returncode == 0, scratch.stderr
    assert not stale.parent.exists()
    assert status(root, "t1")["status"] == "COMPLETED", "the job itself is kept"
    gone = cli(root, "clean", "t1", "--everything", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(cli(root, "list", "--json").stdout) == []
    assert not (root / "objects" / "jobs" / "t1").exists()
    assert cli(root, "status", "t1").returncode == 2


def test_clean_refuses_a_running_job(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(tmp_path / "job", 300, handler=SLOW_HANDLER, batch_size=20, workers=1)
    root = tmp_path / "root"
    proc = popen(root, "submit", str(config), env={"CALLS_FILE": str(calls)})
    wait_for(lambda: len(_calls(calls)) >= 10, what="progress")
    refused = cli(root, "clean", "t1", "--everything", "--yes")
    assert refused.returncode == 2 and "is running" in refused.stderr
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_exactly_once(root, "t1", 300)
