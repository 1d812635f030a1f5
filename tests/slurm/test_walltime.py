"""Walltime-aware claiming on the real Slurm: a worker never starts a task it cannot finish
before USR1 may come; it leaves cleanly and finalize's fresh workers do the rest."""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job
from tests.slurm import util

TIMED_HANDLER = """
import os, time

def process(item, ctx):
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(f"{item['id']} {time.time():.3f} {os.environ['SLURM_JOB_ID']}\\n")
    time.sleep(float(os.environ["ITEM_S"]))
    return {"id": item["id"]}
"""
ITEM_S = 6.0
TIME = "00:02:00"
ROOM_S = 120 - 60 - 30
"""Seconds from an element's start until USR1 may come: 2:00 less its 60 s lead (half the limit)
and the 30 s by which Slurm may signal early. (Slurm rounds limits up to whole minutes.)"""


def _start(element: str) -> float:
    out = subprocess.run(
        ["squeue", "-h", "-j", element, "-t", "all", "-o", "%S"],
        capture_output=True,
        text=True,
        check=True,
    )
    return datetime.datetime.fromisoformat(out.stdout.split()[0]).timestamp()


def test_no_task_is_started_that_cannot_finish_before_usr1(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("walltime")
    log = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        5,
        handler=TIMED_HANDLER,
        batch_size=1,
        workers=1,
        job_id=jid,
        extra=util.SLURM_JOB + f'slurm: {{time: "{TIME}"}}\n',
    )
    root = tmp_path / "root"
    env = {"CALLS_FILE": str(log), "ITEM_S": str(ITEM_S)}
    out = cli(root, "submit", str(config), "--follow", "--no-progress", timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_exactly_once(root, jid, 5)
    calls = [line.split() for line in log.read_text().splitlines()]
    # none lost, none redone: every item was started once, and ran to its end
    assert sorted(c[0] for c in calls) == ["0", "1", "2", "3", "4"]
    runs = [h for h in util.history(root, jid) if h["action"] == "workers"]
    assert len(runs) >= 2, "5 tasks of 6 s do not fit in one worker's 30 s before USR1"
    elements = util.elements(*(r["array"] for r in runs))
    # every worker left on its own (exit 0): none was stopped by USR1 or its time limit
    assert [(e.state, e.exit_code) for e in elements] == [("COMPLETED", 0)] * len(runs)
    # none started late: each task began early enough to end before USR1 could come
    starts = {c[2]: _start(c[2]) for c in calls}  # SLURM_JOB_ID: its element's start
    late = [(c[0], round(float(c[1]) - starts[c[2]], 1)) for c in calls]
    assert all(at + ITEM_S <= ROOM_S for _, at in late), late
    first_log = root / "logs" / jid / f"worker-{runs[0]['array']}_0.log"
    assert "claiming no more tasks, leaving" in first_log.read_text()
