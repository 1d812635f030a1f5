"""Outcomes a script can trust, through the CLI: framework errors named as the job's reason,
exit codes, every-item-failed jobs, and the status of a local job whose `submit` was stopped."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job, popen, status, wait_for
from tests.test_faults_local import SLOW_HANDLER, _calls

FAULT = "SLURMCTL_FAULT_ERROR"


def _history(root: Path, job_id: str = "t1") -> list[dict[str, object]]:
    out = cli(root, "history", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


# --- point 3: a framework error is the job's reason, never a lost worker ------------------------
def test_framework_error_fails_the_job_with_the_exception(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 200, batch_size=50, workers=2)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", env={FAULT: "output"})
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "without progress" not in run.stderr
    reason = re.search(
        r"^error: (task-\d{6}): framework error: RuntimeError: fault injected at output "
        r"\(SLURMCTL_FAULT_ERROR\)$",
        run.stderr,
        re.MULTILINE,
    )
    assert reason is not None, run.stderr
    task_id = reason[1]
    s = status(root, "t1")
    assert s["status"] == "FAILED" and s["error"] == reason[0].removeprefix("error: ")
    assert s["tasks"]["FAILED"] >= 1

    logs = cli(root, "logs", "t1", "--level", "error")
    assert logs.returncode == 0, logs.stderr
    prefix = (
        f" {task_id} {task_id}: framework error: RuntimeError: fault injected at output "
        "(SLURMCTL_FAULT_ERROR) (classified unknown; "
    )
    mine = [line for line in logs.stdout.splitlines() if " ERROR " in line and prefix in line]
    assert [line.split(prefix)[1] for line in mine] == [
        "1 of 3: trying the task again)",
        "2 of 3: trying the task again)",
        "3 times: failing the job)",
    ], "tried again up to retry.max_task_failures, then the job's reason"
    assert "    Traceback (most recent call last):" in logs.stdout
    assert 'faults.inject_error("output")' in logs.stdout

    analysis = cli(root, "analyze-errors", "t1")
    assert analysis.returncode == 0, analysis.stderr
    assert re.search(r"^\s+\d+  framework \(permanent\), \d+ final", analysis.stdout, re.M)
    # other workers may hit the same fault in their own tasks first: the job's task is listed
    samples = re.search(r"e\.g\. tasks (.+)$", analysis.stdout, re.M)
    assert samples is not None and task_id in samples.group(1).split(", "), analysis.stdout
    failed = [h for h in _history(root) if h["action"] == "failed"]
    assert failed and failed[0]["reason"] == s["error"]


# --- point 5: exit codes and every-item-failed jobs -------------------------------------------
KEYERROR_HANDLER = """
def process(item, ctx):
    return {"id": item["id"], "v": item["missing"]}
"""
STR_HANDLER = """
def process(item, ctx):
    return "not a row"
"""


def test_every_item_raising_keyerror_exits_non_zero(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job", 100, handler=KEYERROR_HANDLER, extra="retry: {max_attempts: 1}\n"
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert run.returncode == 1, run.stderr
    assert "job t1: FAILED: 0 succeeded, " in run.stdout
    assert run.stderr.strip().splitlines()[-1] == "error: all 100 items failed"
    assert "Traceback" not in run.stderr
    assert status(root, "t1")["status"] == "FAILED"
    again = cli(root, "submit", str(config), "--no-progress")
    assert again.returncode == 1, "submitting a FAILED job again still says FAILED"
    assert "job t1 already FAILED" in again.stdout


def test_every_item_returning_a_str_exits_non_zero(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 60, handler=STR_HANDLER)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert run.returncode == 1, run.stderr
    assert "job t1: FAILED: 0 succeeded, 60 failed permanently, 0 failed transiently" in run.stdout
    assert run.stderr.strip().splitlines()[-1] == "error: all 60 items failed"
    assert "Traceback" not in run.stderr


HALF_HANDLER = """
from slurmctl import PermanentError

def process(item, ctx):
    if int(item["id"]) % 10 < {bad}:
        raise PermanentError("gone")
    return {{"id": item["id"]}}
"""


def test_default_max_failure_share_is_one_half(tmp_path: Path) -> None:
    root = tmp_path / "root"
    over = make_job(tmp_path / "over", 100, handler=HALF_HANDLER.format(bad=6), job_id="over")
    run = cli(root, "submit", str(over), "--no-progress")
    assert run.returncode == 1, run.stderr
    assert (
        run.stderr.strip().splitlines()[-1]
        == "error: 60 of 100 items failed (60.0%), over max_failure_share 0.5"
    )
    within = make_job(tmp_path / "within", 100, handler=HALF_HANDLER.format(bad=4), job_id="ok")
    run = cli(root, "submit", str(within), "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "job ok: COMPLETED: 60 succeeded, 40 failed permanently" in run.stdout
    assert cli(root, "status", "ok").returncode == 0
    assert cli(root, "status", "over").returncode == 1
    assert cli(root, "aggregate", "over").returncode == 1
    assert cli(root, "resume", "ok").returncode == 0
    assert cli(root, "status", "nope").returncode == 2


def test_null_max_failure_share_still_fails_a_job_whose_every_item_failed(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job",
        50,
        handler=HALF_HANDLER.format(bad=10),
        extra="max_failure_share: null\n",
    )
    run = cli(tmp_path / "root", "submit", str(config), "--no-progress")
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == "error: all 50 items failed"


# --- point 8: status of a stopped local job ---------------------------------------------------
def _stopped_status(root: Path) -> str:
    text = cli(root, "status", "t1")
    assert text.returncode == 3, text.stderr
    assert "STOPPED" in text.stdout
    assert "ETA" not in text.stdout and "workers running" not in text.stdout
    assert "`slurmctl resume t1` carries on" in text.stdout
    s = status(root, "t1")  # exit code 3 checked by the helper
    assert s["status"] == "STOPPED" and s["eta_s"] is None and s["workers_running"] == 0
    return text.stdout


def _slow_job(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        400,
        handler=SLOW_HANDLER,
        batch_size=50,
        workers=2,
        extra="checkpoint_every: 10\n",
    )
    return config, {"CALLS_FILE": str(calls)}, calls


def test_ctrl_c_leaves_a_stopped_job_and_history_says_so(tmp_path: Path) -> None:
    config, env, calls = _slow_job(tmp_path)
    root = tmp_path / "root"
    proc = popen(root, "submit", str(config), "--no-progress", env=env)
    wait_for(lambda: len(_calls(calls)) >= 60, what="progress")
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    _stopped_status(root)
    [listed] = json.loads(cli(root, "list", "--json").stdout)
    assert listed["status"] == "STOPPED"
    interrupted = [h for h in _history(root) if h["action"] == "interrupted"]
    assert [h["reason"] for h in interrupted] == ["Ctrl-C (SIGINT)"]
    resumed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "COMPLETED: 400 succeeded" in resumed.stdout
    assert_exactly_once(root, "t1", 400)


def test_killed_submit_leaves_a_stopped_job_recorded_once(tmp_path: Path) -> None:
    config, env, calls = _slow_job(tmp_path)
    root = tmp_path / "root"
    proc = popen(root, "submit", str(config), "--no-progress", env=env)
    wait_for(lambda: len(_calls(calls)) >= 60, what="progress")
    os.kill(proc.pid, signal.SIGKILL)  # the submit only: its workers notice and stop
    proc.communicate(timeout=60)
    wait_for(lambda: status(root, "t1")["tasks"]["RUNNING"] == 0, what="workers to leave")
    first = len(_calls(calls))
    _stopped_status(root)
    _stopped_status(root)
    assert len(_calls(calls)) == first, "no worker runs on unsupervised"
    interrupted = [h for h in _history(root) if h["action"] == "interrupted"]
    assert len(interrupted) == 1, interrupted
    assert interrupted[0]["reason"] == f"slurmctl process {proc.pid} died (killed)"
    resumed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "COMPLETED: 400 succeeded" in resumed.stdout
    assert_exactly_once(root, "t1", 400)
    assert len([h for h in _history(root) if h["action"] == "interrupted"]) == 1


SETUP_FAILS = """
def setup(ctx):
    ctx.params["missing"]


def process(item, ctx):
    return {"id": item["id"]}
"""


def test_handler_setup_failure_is_the_jobs_reason(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 20, handler=SETUP_FAILS, workers=1)
    run = cli(tmp_path / "root", "submit", str(config), "--no-progress")
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "error: handler setup() failed: KeyError: 'missing'"
    )
    assert "Traceback" not in run.stderr


def test_secret_unset_on_the_workers_is_the_jobs_reason(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job", 20, workers=1, extra='params: {api_token: "${OUTCOME_UNSET_TOKEN}"}\n'
    )
    run = cli(tmp_path / "root", "submit", str(config), "--no-progress")
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "error: worker local-1-0: params.api_token: environment variable OUTCOME_UNSET_TOKEN is "
        "not set (needed by ${OUTCOME_UNSET_TOKEN})"
    )
    assert "Traceback" not in run.stderr
