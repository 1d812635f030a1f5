"""The job lifecycle through the CLI: a cancelled local job stops, `resume` carries it to the end
(every item once), and a finished job refuses `cancel`; each transition leaves one history entry.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job, popen, status, wait_for

SLOW_HANDLER = """
import time


def process(item, ctx):
    time.sleep(0.01 if item["n"] < 100 else 0.03)  # slower after the first tasks: cancel lands
    return {"id": item["id"], "double": item["n"] * 2}
"""


def _actions(root: Path) -> list[str]:
    path = root / "objects/jobs/t1/history.jsonl"
    return [json.loads(line)["action"] for line in path.read_text().splitlines()]


def _succeeded(root: Path) -> int:
    return int(status(root, "t1")["items"]["succeeded"])


def test_cancel_then_resume_completes_the_job(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 300, handler=SLOW_HANDLER, batch_size=20, workers=2)
    root = tmp_path / "root"
    submit = popen(root, "submit", str(config), "--no-progress")
    wait_for(lambda: (root / "state.sqlite").exists() and _succeeded(root) >= 40, what="progress")
    cancelled = cli(root, "cancel", "t1")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == "job t1 cancelled; `slurmctl resume t1` carries on\n"
    _out, err = submit.communicate(timeout=60)
    assert submit.returncode == 3, err  # README: 3 = stopped
    s = status(root, "t1")
    assert s["status"] == "CANCELLED"
    assert s["items"]["succeeded"] < 300

    again = cli(root, "cancel", "t1")
    assert again.returncode == 2
    assert again.stderr.strip().endswith("job t1 is CANCELLED: nothing to cancel")

    resumed = cli(root, "resume", "t1", "--no-progress", timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    s = status(root, "t1")
    assert (s["status"], s["error"]) == ("COMPLETED", None)
    assert_exactly_once(root, "t1", 300)
    actions = _actions(root)
    assert actions.count("cancel") == 1 and actions.count("completed") == 1
    assert actions.index("cancel") < actions.index("resume") < actions.index("completed")

    finished = cli(root, "cancel", "t1")
    assert finished.returncode == 2
    assert finished.stderr.strip().endswith("job t1 is COMPLETED: nothing to cancel")


def test_a_job_command_in_a_folder_without_a_state_root_creates_none(tmp_path: Path) -> None:
    root = tmp_path / "nothing-here"
    for command in (["status", "nope"], ["resume", "nope"], ["cancel", "nope"], ["logs", "nope"]):
        run = cli(root, *command)
        assert run.returncode == 2, (command, run.stderr)
        assert run.stderr == (
            "error: no job 'nope' in this state root; `slurmctl list` shows the jobs\n"
        ), command
    assert not root.exists()
