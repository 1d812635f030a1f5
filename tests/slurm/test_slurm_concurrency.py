"""`concurrency: N` on the real Slurm: USR1 (what `--signal=USR1@lead` sends ahead of the time
limit) reaching a worker with items in flight."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import assert_exactly_once, cli, make_job, wait_for
from tests.slurm import util
from tests.slurm.util import calls

THREADS = """
import os, time

def process(item, ctx):
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(item["id"] + "\\n")
    time.sleep(0.1)
    return {"id": item["id"], "n": item["n"]}
"""
ASYNC = """
import asyncio, os

async def process(item, ctx):
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(item["id"] + "\\n")
    await asyncio.sleep(0.1)
    return {"id": item["id"], "n": item["n"]}
"""


@pytest.mark.parametrize("mode", ["threads", "async"])
def test_usr1_with_items_in_flight_keeps_them_and_every_item_runs_once(
    tmp_path: Path, job_id: Callable[[str], str], mode: str
) -> None:
    jid = job_id(f"usr1-{mode}")
    log = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        300,
        handler=THREADS if mode == "threads" else ASYNC,
        batch_size=100,
        workers=1,
        job_id=jid,
        extra=util.SLURM_JOB + "concurrency: 16\ncheckpoint_every: 10\n",
    )
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), env={"CALLS_FILE": str(log)})
    assert out.returncode == 0, out.stderr
    array = util.manifest(root, jid)["slurm_array_id"]
    element = f"{array}_0"
    wait_for(lambda: len(calls(log)) >= 110, timeout=60, what="the second task under way")
    signalled = subprocess.run(
        ["scancel", "--batch", "--signal=USR1", element], capture_output=True, text=True
    )
    assert signalled.returncode == 0, signalled.stderr
    assert len(calls(log)) < 200, "the second task still had items to start"

    def released() -> bool:
        t = util.task(root, jid, "task-000001")
        return t.status == "PENDING" and t.checkpoint_key is not None

    # within KillWait (30 s on the suite's cluster): no new item, the 16 in flight finished
    # and checkpointed, the checkpoint uploaded and the lease released
    wait_for(released, timeout=30, what="task-000001 released with its checkpoint")
    wait_for(lambda: not util.alive(element), timeout=30, what="the element gone")
    assert [(e.state, e.exit_code) for e in util.elements(element)] == [("FAILED", 143)]
    # finalize (afterany) finds the tasks left and submits the next workers
    util.wait_status(root, jid, "COMPLETED", timeout=180)
    assert_exactly_once(root, jid, 300)
    assert Counter(calls(log)) == Counter(str(i) for i in range(300)), "an item ran twice"
    resumed = next(m for m in util.task_manifests(root, jid) if m["task_id"] == "task-000001")
    # the 10 or more items started before USR1 finished, were kept and were not run again
    assert resumed["metrics"]["items_from_checkpoint"] >= 10, resumed["metrics"]
