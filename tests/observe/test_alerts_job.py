"""A job stalls (its handler hangs on a batch) while `slurmctl watch` follows it: the stalled
alert reaches a local webhook exactly once, then resolves once when items complete again."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.helpers import cli, make_job, popen, status, wait_for
from tests.observe.conftest import Recorder

HANDLER = """
import os, time

def process(item, ctx):
    while int(item["id"]) >= 5 and os.path.exists(ctx.params["gate"]):
        time.sleep(0.05)
    return {"id": item["id"]}
"""

FIRING = (
    "[slurmctl] t1: job stalled: no item completed in the last 2s while 1 task(s) are running "
    "or queued"
)
RESOLVED = "[slurmctl] t1: resolved: job stalled: items are completing again"


def test_stalled_alert_once_per_episode_then_resolved(tmp_path: Path, webhook: Recorder) -> None:
    gate = tmp_path / "hang"
    gate.touch()
    config = make_job(
        tmp_path / "job",
        10,
        handler=HANDLER,
        batch_size=5,
        workers=1,
        extra=(
            f'params: {{gate: "{gate}", alerts: {{webhook: "${{HOOK_URL}}", '
            "stall_minutes: 0.0333}}\n"
        ),
    )
    root = tmp_path / "root"
    env = {"HOOK_URL": webhook.url + "/hook"}
    submit = popen(root, "submit", str(config), env=env)
    watch = None
    try:
        wait_for(
            lambda: _succeeded(root) == 5,
            timeout=60,
            what="the first batch",
        )
        watch = popen(root, "watch", "t1", "--interval", "0.2", env=env)
        wait_for(lambda: len(webhook.bodies) >= 1, timeout=30, what="the stalled alert")
        time.sleep(1.5)  # several more evaluations while it stays stalled: still one message
        assert webhook.bodies == [{"text": FIRING}]
        gate.unlink()
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 0, err
        submit.communicate(timeout=60)
        assert submit.returncode == 0
    finally:
        for proc in (submit, watch):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert webhook.bodies == [{"text": FIRING}, {"text": RESOLVED}]
    assert f"ALERT {FIRING} (webhook: sent)" in out
    # the resolution is delivered once, by the first evaluator to see items complete again:
    # this watch, or the submit's finalize when the job completes before the watch's next look
    # (each claims the event before sending it; the loser sends and prints nothing)
    assert out.count("RESOLVED ") <= 1
    if "RESOLVED " in out:
        assert f"RESOLVED {RESOLVED} (webhook: sent)" in out
    assert "t1 COMPLETED 10/10 items" in out.splitlines()[-1]
    state = json.loads((root / "objects/jobs/t1/alerts.json").read_text())
    assert state["rules"]["stalled"]["open"] is False
    assert state["rules"]["stalled"]["episode"] == 1
    assert [(e["rule"], e["state"]) for e in state["events"]] == [
        ("stalled", "firing"),
        ("stalled", "resolved"),
    ]
    assert webhook.url not in json.dumps(state)  # the webhook is a secret: never stored
    # a later evaluation (finalize, another watch) sends nothing more
    again = cli(root, "watch", "t1", "--once", env=env)
    assert again.returncode == 0 and "ALERT" not in again.stdout
    assert len(webhook.bodies) == 2


def _succeeded(root: Path) -> int:
    """Items succeeded so far; 0 while the job is not there yet."""
    if not (root / "state.sqlite").exists():
        return 0
    try:
        return int(status(root, "t1")["items"]["succeeded"])
    except (AssertionError, ValueError):
        return 0
