"""A worker paused near the end of its Slurm allocation checkpoints and leaves (exit 143, like
on a signal) rather than burn the allocation waiting; its task goes back to PENDING with the
checkpoint, for a fresh worker after `resume`."""

from __future__ import annotations

import time
from pathlib import Path

from slurmctl.backends import open_local
from slurmctl.config import load_job_definition
from slurmctl.coordinator.submit import submit
from slurmctl.states import TaskStatus
from slurmctl.worker.runner import EXIT_STOPPED
from tests.helpers import cli, make_job, popen, wait_for

HANDLER = """
import os

def process(item, ctx):
    ctx.acquire()
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(item["id"] + "\\n")
    return {"id": item["id"]}
"""


def test_paused_worker_near_its_time_limit_checkpoints_and_leaves(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        400,
        handler=HANDLER,
        batch_size=400,
        workers=1,
        extra="rate_limit: {tokens_per_sec: 40, burst: 1}\ncheckpoint_every: 5\n",
    )
    root = tmp_path / "root"
    backend = open_local(root)
    submit(backend, load_job_definition(config))
    env = {"CALLS_FILE": str(calls), "SLURM_JOB_END_TIME": str(int(time.time() + 120))}
    worker = popen(root, "worker", "--job-id", "t1", env=env)
    try:
        wait_for(lambda: calls.exists() and len(calls.read_text().split()) >= 20, what="calls")
        assert cli(root, "pause", "t1").returncode == 0
        t_pause = time.time()
        _out, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == EXIT_STOPPED, err
    assert time.time() - t_pause < 5
    assert "of the Slurm allocation left" in err and "checkpoint uploaded" in err
    task = backend.state.get_task("t1", "task-000000")
    assert task is not None and task.status == TaskStatus.PENDING and task.checkpoint_key
    assert task.worker_losses == 0  # a departure, not a death
