"""Faults on the real Slurm: requeue (preemption), time limits, cancel and resume."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.helpers import assert_exactly_once, cli, make_job, wait_for
from tests.slurm import util
from tests.slurm.util import SLOW_HANDLER, calls


def test_requeued_element_resumes_its_task_from_the_uploaded_checkpoint(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("requeue")
    log = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        300,
        handler=SLOW_HANDLER,
        batch_size=100,
        workers=1,
        job_id=jid,
        extra=util.SLURM_JOB + "checkpoint_every: 10\n",
    )
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), env={"CALLS_FILE": str(log), "ITEM_S": "0.03"})
    assert out.returncode == 0, out.stderr
    array = util.manifest(root, jid)["slurm_array_id"]
    element = f"{array}_0"
    wait_for(lambda: 30 <= len(calls(log)) < 90, timeout=60, what="the worker half way in a task")
    requeued_at = time.time()
    util.scontrol("requeue", element)
    # TERM reached the worker: it uploaded its checkpoint and released its task...
    task_id = "task-000000" if len(calls(log)) < 100 else "task-000001"

    def released() -> bool:
        t = util.task(root, jid, task_id)
        return t.status == "PENDING" and t.checkpoint_key is not None

    wait_for(released, timeout=30, what="the task released with its checkpoint")
    # ...and exited at once, so the element is back in the queue, held ~120 s by Slurm
    wait_for(
        lambda: [(e.state, e.reason) for e in util.elements(element)] == [("PENDING", "BeginTime")],
        timeout=30,
        what="the requeued element pending on BeginTime",
    )
    assert (util.jobdir(root, jid) / "checkpoints" / f"{task_id}.sqlite").exists()
    done_before = len(calls(log))
    # Slurm revokes the element's old credential at the requeue and compares times at 1 s
    # resolution: an element restarted within the same second fails ("Job credential revoked")
    # and finalize replaces it. The ~120 s hold is there for this; we wait out the second.
    wait_for(lambda: time.time() >= int(requeued_at) + 2, timeout=5, what="the next second")
    util.scontrol("update", f"JobId={element}", "StartTime=now")
    util.wait_status(root, jid, "COMPLETED", timeout=120)
    assert_exactly_once(root, jid, 300)
    resumed = next(m for m in util.task_manifests(root, jid) if m["task_id"] == task_id)
    assert resumed["metrics"]["items_from_checkpoint"] >= 10, resumed["metrics"]
    assert resumed["worker_id"].startswith(element + "@")
    assert len(calls(log)) <= 300 + 10, "more than one checkpoint interval was redone"
    assert done_before < 300
    actions = [h["action"] for h in util.history(root, jid)]
    assert actions.count("workers") == 1, "the requeued element finished the job itself"


def test_two_requeued_elements_resume_their_tasks(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    """Preemption of two array elements at once: both release their tasks with checkpoints,
    both come back, every item is accounted for exactly once."""
    from slurmctl.backends import open_local

    jid = job_id("requeue2")
    log = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        400,
        handler=SLOW_HANDLER,
        batch_size=100,
        workers=2,
        job_id=jid,
        extra=util.SLURM_JOB + "checkpoint_every: 10\n",
    )
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), env={"CALLS_FILE": str(log), "ITEM_S": "0.03"})
    assert out.returncode == 0, out.stderr
    array = util.manifest(root, jid)["slurm_array_id"]
    elements = [f"{array}_0", f"{array}_1"]
    state = open_local(root).state

    def running() -> list[str]:
        return [t.task_id for t in state.iter_tasks(jid) if t.status == "RUNNING"]

    wait_for(lambda: len(running()) == 2 and len(calls(log)) >= 40, timeout=60, what="2 busy")
    held = running()
    requeued_at = time.time()
    for element in elements:
        util.scontrol("requeue", element)

    def released() -> bool:
        tasks = [util.task(root, jid, t) for t in held]
        return all(t.status == "PENDING" and t.checkpoint_key for t in tasks)

    wait_for(released, timeout=30, what="both tasks released with their checkpoints")
    wait_for(
        lambda: (
            {(e.state, e.reason) for e in util.elements(*elements)} == {("PENDING", "BeginTime")}
        ),
        timeout=30,
        what="both elements pending on BeginTime",
    )
    wait_for(lambda: time.time() >= int(requeued_at) + 2, timeout=5, what="the next second")
    for element in elements:
        util.scontrol("update", f"JobId={element}", "StartTime=now")
    util.wait_status(root, jid, "COMPLETED", timeout=180)
    assert_exactly_once(root, jid, 400)
    resumed = [m for m in util.task_manifests(root, jid) if m["task_id"] in held]
    assert len(resumed) == 2
    assert all(m["metrics"]["items_from_checkpoint"] >= 10 for m in resumed), resumed
    assert len(calls(log)) <= 400 + 2 * 10, "more than one checkpoint interval redone per task"


def test_time_limit_stops_workers_and_finalize_resubmits_them(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("timelimit")
    log = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        160,
        handler=SLOW_HANDLER,
        batch_size=20,
        workers=1,
        job_id=jid,
        # min_remaining 0: claim until USR1 comes (no walltime rule), to see the stop itself
        extra=util.SLURM_JOB + 'slurm: {time: "00:01:00", min_remaining: 0}\ncheckpoint_every: 5\n',
    )
    root = tmp_path / "root"
    out = cli(
        root,
        "submit",
        str(config),
        "--follow",
        "--no-progress",
        timeout=360,
        env={"CALLS_FILE": str(log), "ITEM_S": "0.2"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert_exactly_once(root, jid, 160)
    history = util.history(root, jid)
    runs = [h for h in history if h["action"] == "workers"]
    assert len(runs) >= 2, "the 32 s of work did not fit in one worker's time limit"
    first = util.elements(runs[0]["array"])
    # the first worker was stopped by its time limit: USR1 ahead of it (exit 143) or the kill
    assert [(e.state, e.exit_code) for e in first] in (
        [("FAILED", 143)],
        [("TIMEOUT", 143)],
        [("TIMEOUT", 137)],
    ), first
    # finalize (a Slurm job) submitted the next workers, not the CLI
    resubmitted = [h for h in history if h["action"] == "finalize" and h["submitted"]]
    assert [h["submitted"] for h in resubmitted] == [[r["array"]] for r in runs[1:]]
    assert len(calls(log)) <= 160 + 5 * len(runs)


def test_cancel_then_resume_completes_the_job(tmp_path: Path, job_id: Callable[[str], str]) -> None:
    jid = job_id("cancel")
    log = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        400,
        handler=SLOW_HANDLER,
        batch_size=20,
        workers=2,
        job_id=jid,
        extra=util.SLURM_JOB + "checkpoint_every: 5\n",
    )
    root = tmp_path / "root"
    env = {"CALLS_FILE": str(log), "ITEM_S": "0.02"}
    out = cli(root, "submit", str(config), env=env)
    assert out.returncode == 0, out.stderr
    first = util.manifest(root, jid)["slurm_job_ids"]
    wait_for(lambda: len(calls(log)) >= 40, timeout=60, what="progress")
    cancelled = cli(root, "cancel", jid)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled" in cancelled.stdout and all(i in cancelled.stdout for i in first)
    assert util.job(root, jid).status == "CANCELLED"
    wait_for(lambda: not util.alive(*first), timeout=45, what="every Slurm job of the job gone")
    stopped_at = len(calls(log))
    assert stopped_at < 400
    assert all(e.state == "CANCELLED" for e in util.elements(*first))
    again = cli(root, "cancel", jid)
    assert again.returncode == 2 and "nothing to cancel" in again.stderr

    resumed = cli(root, "resume", jid, "--follow", "--no-progress", env=env, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "workers queued on Slurm" in resumed.stdout
    assert f"job {jid}: COMPLETED: 400 succeeded" in resumed.stdout
    assert_exactly_once(root, jid, 400)
    actions = [h["action"] for h in util.history(root, jid)]
    assert actions.index("cancel") < actions.index("resume") < actions.index("completed")
    assert len(util.manifest(root, jid)["slurm_job_ids"]) == 4


LONG_LEASE = "lease: {ttl_s: 120, heartbeat_s: 10}\n"


def _sigkill_a_holder(root: Path, jid: str) -> tuple[str, str]:
    """SIGKILL the worker process that holds a task (found by the worker id it claimed with):
    (task id, its array element)."""
    from slurmctl.backends import open_local

    backend = open_local(root)
    try:
        running = [t for t in backend.state.unfinished_tasks(jid) if t.status == "RUNNING"]
    finally:
        backend.close()
    worker_id = running[0].worker_id
    assert worker_id is not None
    [proc] = [p for p in psutil.process_iter(["cmdline"]) if worker_id in (p.info["cmdline"] or [])]
    proc.send_signal(signal.SIGKILL)
    return running[0].task_id, worker_id.split("@", 1)[0]


def _has_running_task(root: Path, jid: str) -> bool:
    from slurmctl.backends import open_local

    backend = open_local(root)
    try:
        return any(t.status == "RUNNING" for t in backend.state.unfinished_tasks(jid))
    finally:
        backend.close()


def test_sigkilled_element_finalize_frees_its_lease_at_once(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    """The only worker is SIGKILLed holding a task with a 120 s lease: finalize (after the
    array) sees the element ended, frees the lease, and the next worker takes the task at once:
    COMPLETED well within one lease."""
    jid = job_id("killed")
    log = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        200,
        handler=SLOW_HANDLER,
        batch_size=50,
        workers=1,
        job_id=jid,
        extra=util.SLURM_JOB + "checkpoint_every: 5\n",
    )
    config.write_text(config.read_text().replace("lease: {ttl_s: 3, heartbeat_s: 1}\n", LONG_LEASE))
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), env={"CALLS_FILE": str(log), "ITEM_S": "0.02"})
    assert out.returncode == 0, out.stderr
    wait_for(
        lambda: len(calls(log)) >= 20 and _has_running_task(root, jid),
        timeout=60,
        what="the worker busy with a task",
    )
    task_id, element = _sigkill_a_holder(root, jid)
    util.wait_status(root, jid, "COMPLETED", timeout=90)
    assert_exactly_once(root, jid, 200)
    [ended] = util.elements(element)
    assert ended.state == "FAILED", ended
    t = util.task(root, jid, task_id)
    assert t.worker_losses == 1 and t.attempts == 2
    history = util.history(root, jid)
    assert [h["action"] for h in history].count("workers") == 2
    resubmitted = [h for h in history if h["action"] == "finalize" and h["submitted"]]
    assert len(resubmitted) == 1, "finalize freed the lease and resubmitted, no fruitless run"


def test_sigkilled_element_its_sibling_takes_the_task_at_once(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    """Two elements on one node, the embedded backend: one is SIGKILLed holding a task with a
    120 s lease; the other, idle at the phase's end, sees the holder's process gone and frees
    the lease, and the job completes without a second array."""
    jid = job_id("sibling")
    log = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        400,
        handler=SLOW_HANDLER,
        batch_size=50,
        workers=2,
        job_id=jid,
        extra=util.SLURM_JOB + "checkpoint_every: 5\n",
    )
    config.write_text(config.read_text().replace("lease: {ttl_s: 3, heartbeat_s: 1}\n", LONG_LEASE))
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), env={"CALLS_FILE": str(log), "ITEM_S": "0.01"})
    assert out.returncode == 0, out.stderr
    wait_for(
        lambda: len(calls(log)) >= 20 and _has_running_task(root, jid),
        timeout=60,
        what="the workers busy",
    )
    task_id, _ = _sigkill_a_holder(root, jid)
    util.wait_status(root, jid, "COMPLETED", timeout=90)
    assert_exactly_once(root, jid, 400)
    t = util.task(root, jid, task_id)
    assert t.worker_losses == 1 and t.attempts == 2
    actions = [h["action"] for h in util.history(root, jid)]
    assert actions.count("workers") == 1, "the live sibling finished the killed one's task"
