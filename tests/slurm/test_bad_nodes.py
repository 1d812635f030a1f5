"""Worker crashes on the real Slurm: judged from squeue's states, exit codes and node names, the
node recorded as bad, shown by `status` and `analyze-errors`. The test cluster has one node, so
it is kept (excluding it would leave the workers nowhere to run); the exclusion itself is tested
at the level of the sbatch arguments in test_decisions.py."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job
from tests.slurm import util

CRASHING_HANDLER = """
import os, signal

def process(item, ctx):
    mark = os.path.join(os.environ["MARKS"], item["id"])
    if item["id"] in ("0", "1") and not os.path.exists(mark):
        open(mark, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # the worker crashes, once per item
    return {"id": item["id"]}
"""


def test_crashes_make_the_node_bad_and_status_and_analyze_errors_show_it(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("badnode")
    marks = tmp_path / "marks"
    marks.mkdir()
    config = make_job(
        tmp_path / "job",
        4,
        handler=CRASHING_HANDLER,
        batch_size=1,
        workers=2,
        job_id=jid,
        extra=util.SLURM_JOB,
    )
    root = tmp_path / "root"
    env = {"MARKS": str(marks)}
    out = cli(root, "submit", str(config), "--follow", "--no-progress", env=env, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_exactly_once(root, jid, 4)
    node = socket.gethostname().split(".")[0]
    deaths = util.manifest(root, jid)["slurm_deaths"]
    assert [(d["node"], d["kind"], d["exit_code"]) for d in deaths.values()] == [
        (node, "crash", 137)
    ] * 2
    status = json.loads(cli(root, "status", jid, "--json").stdout)["slurm"]
    assert status["bad_nodes"] == {node: 2} and status["kept_bad_nodes"] == [node]
    assert status["worker_deaths"] == {"crash": 2}
    shown = cli(root, "status", jid, env={"COLUMNS": "200"}).stdout  # one line per row
    assert f"{node} (2 worker crashes, not excluded: every node of the partition is bad)" in shown
    errors = cli(root, "analyze-errors", jid)
    assert errors.returncode == 0, errors.stderr
    assert f"bad nodes: {node} (2 worker crashes, not excluded: every node of the partition " in (
        errors.stdout
    )
    assert "slurm worker deaths: crash 2" in errors.stdout
    assert [h["node"] for h in util.history(root, jid) if h["action"] == "bad_node"] == [node]
