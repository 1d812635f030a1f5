"""Streaming submit (issue 16) on the real Slurm: the array is queued as soon as the first tasks
are durable, its elements commit tasks while submit still cuts batches (held at an exact line by
`SLURMCTL_HOLD_AT`), and a submit SIGKILLed mid-stream is carried on by `resume`."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from tests.helpers import (
    assert_exactly_once,
    cli,
    make_job,
    popen,
    status,
    task_records,
    wait_for,
)
from tests.slurm import util


def _committed(root: Path, job_id: str) -> int:
    out = cli(root, "status", job_id, "--json")
    if out.returncode != 0 or not out.stdout.strip():
        return 0
    return int(json.loads(out.stdout)["tasks"]["SUCCESS"])


def test_slurm_elements_commit_while_submit_is_still_cutting(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("stream")
    config = make_job(
        tmp_path / "job", 600, batch_size=10, workers=2, job_id=jid, extra=util.SLURM_JOB
    )
    root, gate = tmp_path / "root", tmp_path / "gate"
    hold = {"SLURMCTL_HOLD_AT": f"submit.after_batch@30={gate}"}
    proc = popen(root, "submit", str(config), "--follow", "--no-progress", env=hold)
    try:
        wait_for(lambda: _committed(root, jid) >= 1, timeout=120, what="a committed task")
        assert proc.poll() is None, "submit still holds after its 30th batch"
        s = status(root, jid)
        assert s["status"] == "RUNNING" and s["outputs"] == []
        assert 10 <= s["items"]["total"] <= 300
        # the committed tasks' holders (the state store's record: a worker gathers its task
        # manifests and writes them later) are elements of the job's array
        done = [t for t in task_records(root, jid).values() if t.status == "SUCCESS"]
        assert {t.worker_id.split("_")[0] for t in done} == {
            util.manifest(root, jid)["slurm_array_id"]
        }
    finally:
        gate.touch()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    assert "workers queued on Slurm" in out
    assert f"job {jid}: COMPLETED: 598 succeeded, 2 failed permanently" in out
    assert_exactly_once(root, jid, 600)
    workers = [h for h in util.history(root, jid) if h["action"] == "workers"]
    assert len(workers) == 1 and workers[0]["count"] == 2  # queued once, at the first tasks


def test_slurm_submit_killed_mid_stream_then_resume(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("streamkill")
    config = make_job(
        tmp_path / "job", 800, batch_size=10, workers=2, job_id=jid, extra=util.SLURM_JOB
    )
    root, gate = tmp_path / "root", tmp_path / "gate"
    hold = {"SLURMCTL_HOLD_AT": f"submit.after_batch@40={gate}"}
    proc = popen(root, "submit", str(config), "--no-progress", env=hold)
    wait_for(lambda: _committed(root, jid) >= 3, timeout=120, what="committed tasks")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    array = util.manifest(root, jid)["slurm_array_id"]
    # the elements see the submit gone, finish the tasks written so far and leave
    wait_for(lambda: not util.alive(array), timeout=120, what="the array's elements to end")
    assert util.job(root, jid).submitted is False
    resumed = cli(root, "resume", jid, "--follow", "--no-progress", timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"job {jid} was not fully submitted: carrying on with the submission" in resumed.stdout
    assert f"job {jid}: COMPLETED: 798 succeeded, 2 failed permanently" in resumed.stdout
    assert_exactly_once(root, jid, 800)
    s = status(root, jid)
    assert s["tasks"]["SUCCESS"] == 80 and s["items"]["total"] == 800
