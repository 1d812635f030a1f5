"""Faults on the local executor: killed and stopped workers, pause, the lease fence."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from slurmctl.backends import open_local
from slurmctl.backends.statestore import WORKERS_LOST
from slurmctl.config import load_job_definition
from slurmctl.coordinator.submit import submit
from slurmctl.finalize.finalize import finalize
from slurmctl.states import JobStatus
from slurmctl.worker.context import Context
from slurmctl.worker.handler import load_handler
from slurmctl.worker.runner import Worker
from slurmctl.worker.task import Outcome, TaskRunner
from tests.helpers import (
    assert_exactly_once,
    cli,
    failure_manifest,
    make_job,
    popen,
    status,
    task_manifests,
    wait_for,
)

SLOW_HANDLER = """
import os, time

def process(item, ctx):
    ctx.acquire()
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(item["id"] + "\\n")
    time.sleep(0.01)
    return {"id": item["id"], "n": item["n"]}
"""


def _workers(proc: psutil.Process) -> list[psutil.Process]:
    return [c for c in proc.children(recursive=True) if "worker" in c.cmdline()]


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_sigkilled_worker_task_is_freed_at_once_and_taken_over(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        400,
        handler=SLOW_HANDLER,
        batch_size=50,
        workers=2,
        extra="checkpoint_every: 10\n",
    )
    root = tmp_path / "root"
    submit_proc = popen(root, "submit", str(config), env={"CALLS_FILE": str(calls)})
    parent = psutil.Process(submit_proc.pid)
    wait_for(
        lambda: len(_calls(calls)) >= 30 and len(_workers(parent)) == 2, what="two busy workers"
    )
    victim = _workers(parent)[0]
    victim.send_signal(signal.SIGKILL)
    out, err = submit_proc.communicate(timeout=120)
    assert submit_proc.returncode == 0, err
    assert "COMPLETED: 400 succeeded" in out
    assert_exactly_once(root, "t1", 400)
    manifests = task_manifests(root, "t1")
    taken_over = [m for m in manifests if m["attempts"] >= 2]
    assert len(taken_over) == 1, "the killed worker's task was claimed again"
    # freed by release_dead (the executor saw the worker die), not by its lease expiring
    backend = open_local(root)
    try:
        assert backend.state.counters("t1")[WORKERS_LOST] == 1
        task = backend.state.get_task("t1", taken_over[0]["task_id"])
        assert task is not None and task.worker_losses == 1
    finally:
        backend.close()
    # nothing but committed outputs reached the final dataset
    final = json.loads((root / "objects/jobs/t1/final/manifest.json").read_text())
    assert final["rows"] == 400 and final["inputs"] == 8


def test_sigterm_worker_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        300,
        handler=SLOW_HANDLER,
        batch_size=100,
        workers=1,
        extra="checkpoint_every: 10\n",
    )
    root = tmp_path / "root"
    submit_proc = popen(root, "submit", str(config), env={"CALLS_FILE": str(calls)})
    parent = psutil.Process(submit_proc.pid)
    wait_for(lambda: len(_calls(calls)) >= 35 and len(_workers(parent)) == 1, what="a busy worker")
    _workers(parent)[0].send_signal(signal.SIGTERM)
    _out, err = submit_proc.communicate(timeout=120)
    assert submit_proc.returncode == 0, err
    assert_exactly_once(root, "t1", 300)
    per_batch: dict[int, int] = {}
    for item_id in _calls(calls):
        per_batch[int(item_id) // 100] = per_batch.get(int(item_id) // 100, 0) + 1
    assert all(n <= 100 + 10 for n in per_batch.values()), per_batch
    assert sum(per_batch.values()) <= 300 + 10
    manifests = task_manifests(root, "t1")
    resumed = [m for m in manifests if m["metrics"]["items_from_checkpoint"] > 0]
    assert len(resumed) == 1 and resumed[0]["metrics"]["items_from_checkpoint"] >= 30
    # it resumed from the checkpoint uploaded to the object store on SIGTERM
    assert (root / "objects/jobs/t1/checkpoints" / f"{resumed[0]['task_id']}.sqlite").exists()
    actions = [json.loads(x)["action"] for x in (root / "objects/jobs/t1/history.jsonl").open()]
    assert actions.count("workers") == 2


def test_pause_stops_progress_and_resume_restarts_it(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        900,  # 6 s at the rate: the pause lands after ~200, in mid-job even on a loaded machine
        handler=SLOW_HANDLER,
        batch_size=50,
        workers=2,
        extra="rate_limit: {tokens_per_sec: 150, burst: 5}\n",
    )
    root = tmp_path / "root"
    submit_proc = popen(root, "submit", str(config), env={"CALLS_FILE": str(calls)})
    wait_for(lambda: len(_calls(calls)) >= 200, what="progress")
    paused = cli(root, "pause", "t1")
    assert paused.returncode == 0 and "paused" in paused.stdout
    t_pause = time.monotonic()
    assert status(root, "t1")["status"] == "PAUSED"
    # within a second no handler call goes out; then none for a while
    time.sleep(1.0)
    settled = len(_calls(calls))
    time.sleep(1.5)
    assert len(_calls(calls)) == settled, "calls went on while paused"
    assert settled < 900 and time.monotonic() - t_pause < 5
    resumed = cli(root, "resume", "t1")
    assert resumed.returncode == 0, resumed.stderr
    assert "pause lifted" in resumed.stdout
    wait_for(lambda: len(_calls(calls)) > settled, what="progress after resume", timeout=10)
    _out, err = submit_proc.communicate(timeout=120)
    assert submit_proc.returncode == 0, err
    assert_exactly_once(root, "t1", 900)
    actions = [json.loads(x)["action"] for x in (root / "objects/jobs/t1/history.jsonl").open()]
    assert "pause" in actions and "resume" in actions


def test_expired_lease_cannot_commit_and_its_output_is_never_read(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 200, batch_size=50, workers=1)
    backend = open_local(tmp_path / "root")
    definition = load_job_definition(config)
    submit(backend, definition)
    state = backend.state
    old = state.claim_task("t1", "task-000000", "w-old", "old", 1.0, time.time() - 10)
    new = state.claim_task("t1", "task-000000", "w-new", "new", 60.0, time.time())
    assert old is not None and new is not None and new.attempts == 2
    handler = load_handler(definition.handler, definition.config_dir)

    def runner(worker_id: str) -> TaskRunner:
        ctx = Context({}, lambda n, b: 0.0, __import__("logging").getLogger("t"))
        return TaskRunner(
            backend,
            "t1",
            worker_id,
            handler,
            ctx,
            "id",
            60.0,
            30.0,
            10,
            tmp_path / f"scratch-{worker_id}",
        )

    assert runner("w-new").run(new) == Outcome.COMMITTED
    assert runner("w-old").run(old) == Outcome.LEASE_LOST
    stale = tmp_path / "root/objects/jobs/t1/results/task-000000/old.parquet"
    assert stale.exists(), "the fenced-off worker did write its bytes"
    assert Worker(backend, "t1", "w-rest", tmp_path / "scratch", poll_s=0.1).run() == 0
    assert finalize(backend, "t1").status == JobStatus.COMPLETED
    # 4 outputs, fan-in 10: one merge, straight into the final output; its footer names them
    final = tmp_path / "root/objects/jobs/t1/final/t1-00000.parquet"
    inputs = json.loads(pq.read_schema(final).metadata[b"slurmctl.part"])["inputs"]
    assert "jobs/t1/results/task-000000/new.parquet" in inputs
    assert not any("old" in k for k in inputs)
    assert_exactly_once(tmp_path / "root", "t1", 200)


def test_secret_never_written_anywhere(tmp_path: Path) -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    handler = """
    def process(item, ctx):
        token = ctx.params["api_token"]
        assert token.startswith("s3cr3t-")
        if int(item["id"]) % 7 == 0:
            raise ValueError("token " + token + " rejected for " + item["id"])
        ctx.log.info("processing %s", item["id"])
        return {"id": item["id"], "auth": "Bearer " + token[:3]}
    """
    config = make_job(
        tmp_path / "job",
        300,
        handler=handler,
        batch_size=30,
        workers=2,
        extra='params: {api_token: "${SECRET_TOKEN}", base: "x"}\n'
        "retry: {max_attempts: 2, backoff_s: 0.2}\n",
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), env={"SECRET_TOKEN": secret})
    assert run.returncode == 0, run.stderr
    assert secret not in run.stdout + run.stderr
    assert status(root, "t1")["items"]["failed_transient"] == 43
    scanned = 0
    for folder in (root, tmp_path / "job" / "scratch"):
        for path in folder.rglob("*"):
            if path.is_file():
                scanned += 1
                assert secret.encode() not in path.read_bytes(), path
    assert scanned > 20
    definition = (root / "objects/jobs/t1/definition.json").read_text()
    assert "${SECRET_TOKEN}" in definition
    failures = failure_manifest(root / "objects/jobs/t1", "retry_1")
    assert failures["count"] == 43
    assert {f["reason"] for f in failures["items"]} == {"retries exhausted"}
    assert failures["items"][0]["message"].startswith("ValueError: token *** rejected")
