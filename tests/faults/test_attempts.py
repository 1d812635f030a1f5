"""Two attempts of one task (issue 13, holes 1, 2 and 8 on the worker side): a worker suspended
past its lease and taken over, a heartbeat that meets a store error, a raw CR inside a line.
Real workers, real SIGSTOP/SIGCONT, a real injected store fault."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from tests.helpers import (
    assert_exactly_once,
    cli,
    failure_manifest,
    make_job,
    popen,
    status,
    wait_for,
)

SLOW = """
import os, time

def process(item, ctx):
    time.sleep(0.004)
    with open(os.path.join(os.environ["MARKS"], str(os.getpid())), "a") as f:
        f.write(item["id"] + "\\n")  # progress, per worker process, for the test to poll
    return {"id": item["id"], "n": item["n"]}
"""

SHORT_LEASE = "lease: {ttl_s: 1, heartbeat_s: 0.2}\ncheckpoint_every: 5\n"


def _job(tmp_path: Path, count: int, **kw: object) -> Path:
    config = make_job(tmp_path / "job", count, **kw)  # type: ignore[arg-type]
    text = config.read_text().replace("lease: {ttl_s: 3, heartbeat_s: 1}\n", "")
    config.write_text(text)
    return config


def _tasks(root: Path, job_id: str = "t1") -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{root / 'state.sqlite'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute("SELECT * FROM tasks WHERE job_id = ?", (job_id,)))
    finally:
        conn.close()


def _holding(root: Path, worker: psutil.Process) -> sqlite3.Row | None:
    """The task a worker process holds a lease on (its --worker-id is on its command line)."""
    args = worker.cmdline()
    worker_id = args[args.index("--worker-id") + 1]
    for t in _tasks(root):
        if t["status"] == "RUNNING" and t["worker_id"] == worker_id:
            return t
    return None


def _marks(marks: Path, pid: int) -> int:
    path = marks / str(pid)
    return len(path.read_text().splitlines()) if path.exists() else 0


def _live_workers(proc: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in proc.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "worker" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_worker_suspended_past_its_lease_and_taken_over(tmp_path: Path) -> None:
    """SIGSTOP a worker mid-task until another worker holds its task, then SIGCONT it while the
    new holder works on the same task: every item exactly once, round after round."""
    for round_ in range(3):
        _suspended_round(tmp_path / f"r{round_}")


def _suspended_round(tmp_path: Path) -> None:
    config = _job(
        tmp_path,
        600,
        handler=SLOW,
        batch_size=150,
        workers=2,
        extra=SHORT_LEASE,
    )
    root = tmp_path / "root"
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = popen(root, "submit", str(config), "--no-progress", env={"MARKS": str(marks)})
    parent = psutil.Process(proc.pid)
    holder: dict[str, object] = {}

    def one_holds_a_task() -> bool:
        for w in _live_workers(parent):
            t = _holding(root, w) if (root / "state.sqlite").exists() else None
            if t is not None and t["start_time"] is not None:
                holder.update(proc=w, task=t["task_id"], token=t["lease_token"])
                return True
        return False

    wait_for(one_holds_a_task, timeout=60, what="a worker holding a task")
    victim = holder["proc"]
    assert isinstance(victim, psutil.Process)
    wait_for(  # some of its items are in its checkpoint
        lambda: any((tmp_path / "job" / "scratch").rglob("checkpoint*")),
        timeout=30,
        what="a checkpoint",
    )
    victim.send_signal(signal.SIGSTOP)
    try:

        def taken_over() -> bool:
            for t in _tasks(root):
                if t["task_id"] == holder["task"] and t["lease_token"] != holder["token"]:
                    return bool(t["status"] == "RUNNING")
            return False

        wait_for(taken_over, timeout=60, what="another worker taking the task over")
        other = [w for w in _live_workers(parent) if w.pid != victim.pid]
        done_before = {w.pid: _marks(marks, w.pid) for w in other}
        wait_for(  # the new holder has checkpointed some of the task's items meanwhile
            lambda: any(_marks(marks, w.pid) >= done_before[w.pid] + 40 for w in other),
            timeout=60,
            what="progress of the new holder",
        )
    finally:
        victim.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    s = status(root, "t1")
    assert s["status"] == "COMPLETED"
    assert s["items"]["succeeded"] == 600 and s["items"]["pending"] == 0
    assert_exactly_once(root, "t1", 600)


STEADY = """
import time

def process(item, ctx):
    time.sleep(0.02)
    return {"id": item["id"], "n": item["n"]}
"""


def test_one_store_timeout_in_a_heartbeat_does_not_end_the_heartbeats(tmp_path: Path) -> None:
    """The store times out on each worker's third heartbeat: the heartbeats go on, no healthy
    task is taken over, the counters add up. Tasks of 3 s, a lease of 2 s: a worker whose
    heartbeats stopped loses its task; a loaded machine does not (a beat every 0.2 s)."""
    lease = "lease: {ttl_s: 2, heartbeat_s: 0.2}\ncheckpoint_every: 5\n"
    handler = STEADY.replace("0.02", "0.03")
    config = _job(tmp_path, 400, handler=handler, batch_size=100, workers=2, extra=lease)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", env={"SLURMCTL_FAULT": "heartbeat@3"})
    assert run.returncode == 0, run.stderr
    s = status(root, "t1")
    assert s["status"] == "COMPLETED"
    assert s["items"]["succeeded"] == 400 and s["items"]["pending"] == 0
    assert_exactly_once(root, "t1", 400)
    assert [t["attempts"] for t in _tasks(root)] == [1, 1, 1, 1], "a healthy task was taken over"
    logs = "".join(p.read_text() for p in (root / "objects/jobs/t1/logs").glob("*.jsonl"))
    assert "heartbeat failed (TimeoutError: injected fault at heartbeat #3)" in logs


def test_heartbeats_failing_past_the_lease_stop_the_task(tmp_path: Path) -> None:
    """The store fails every heartbeat of one stretch longer than the lease: the worker stops
    the task as lost (another worker takes it over) and nothing is counted twice."""
    config = _job(tmp_path, 400, handler=STEADY, batch_size=100, workers=2, extra=SHORT_LEASE)
    root = tmp_path / "root"
    run = cli(
        root, "submit", str(config), "--no-progress", env={"SLURMCTL_FAULT": "heartbeat@3-10"}
    )
    assert run.returncode == 0, run.stderr
    s = status(root, "t1")
    assert s["status"] == "COMPLETED"
    assert s["items"]["succeeded"] == 400 and s["items"]["pending"] == 0
    assert_exactly_once(root, "t1", 400)
    logs = "".join(p.read_text() for p in (root / "objects/jobs/t1/logs").glob("*.jsonl"))
    assert "lease lapsed: no heartbeat got through for" in logs


ECHO = """
def process(item, ctx):
    return {"id": item["id"], "n": item["n"]}
"""


def test_a_raw_cr_between_the_tokens_of_a_valid_line(tmp_path: Path) -> None:
    """CR is JSON whitespace: a line with one inside is a valid item, and the batch splits on
    newlines only."""
    config = make_job(tmp_path / "job", 100, handler=ECHO, batch_size=20, workers=1)
    lines = (tmp_path / "job" / "input.jsonl").read_bytes().split(b"\n")
    for i in (5, 6, 50):
        lines[i] = lines[i].replace(b", ", b",\r ")
    (tmp_path / "job" / "input.jsonl").write_bytes(b"\n".join(lines))
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert run.returncode == 0, run.stderr
    s = status(root, "t1")
    assert s["status"] == "COMPLETED" and s["items"]["succeeded"] == 100
    got = assert_exactly_once(root, "t1", 100)
    assert got["quarantine"] == []


def test_a_leftover_checkpoint_is_not_trusted_by_a_new_job_with_the_same_id(
    tmp_path: Path,
) -> None:
    """A job killed mid-task leaves its scratch checkpoint; its state root is removed and a new
    job with the same id and other input runs on the same scratch: no old row in its output."""
    config = make_job(
        tmp_path / "job",
        300,
        handler=SLOW,
        batch_size=300,
        workers=1,
        extra="checkpoint_every: 5\n",
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    root = tmp_path / "root"
    proc = popen(root, "submit", str(config), "--no-progress", env={"MARKS": str(marks)})
    scratch = tmp_path / "job" / "scratch"
    wait_for(
        lambda: sum(_marks(marks, int(p.name)) for p in marks.iterdir()) >= 60,
        timeout=60,
        what="the first job's progress",
    )
    wait_for(lambda: any(scratch.rglob("checkpoint*")), timeout=30, what="a checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(root)  # the state root is gone (or `clean` ran on another node)
    with open(tmp_path / "job" / "input.jsonl", "w") as f:
        for i in range(300):
            f.write(json.dumps({"id": str(i), "n": 1000 + i}) + "\n")
    run = cli(root, "submit", str(config), "--no-progress", env={"MARKS": str(marks)})
    assert run.returncode == 0, run.stderr
    assert_exactly_once(root, "t1", 300)
    [out] = status(root, "t1")["outputs"]
    rows = pq.read_table(out["path"]).to_pylist()
    stale = [r["id"] for r in rows if r["n"] != 1000 + int(r["id"])]
    assert stale == [], f"{len(stale)} rows of the old input in the new output"


UNSTORABLE = """
import time

def process(item, ctx):
    time.sleep(float(ctx.params["sleep"]))
    i = int(item["id"])
    if i == 7:
        return {"id": item["id"], "v": 2**70}  # beyond 64 bits: no Arrow type holds it
    if i == 20:
        return {"id": item["id"], "v": "twenty"}  # a string where the others are integers
    return {"id": item["id"], "v": i}
"""


def test_an_output_value_that_cannot_be_stored_fails_its_item_as_schema(tmp_path: Path) -> None:
    """Both ways an output reaches the result: through the checkpoint (durable chunks) and from
    memory (a task that finishes before its first checkpoint)."""
    for name, sleep, every in (("chunks", 0.01, 1), ("memory", 0, 1000)):
        config = make_job(
            tmp_path / name,
            40,
            handler=UNSTORABLE,
            batch_size=40,
            workers=1,
            extra=f"checkpoint_every: {every}\nparams: {{sleep: {sleep}}}\n",
        )
        root = tmp_path / name / "root"
        run = cli(root, "submit", str(config), "--no-progress")
        assert run.returncode == 0, run.stderr
        s = status(root, "t1")
        assert s["status"] == "COMPLETED"
        assert (s["items"]["succeeded"], s["items"]["failed_permanent"]) == (38, 2)
        got = assert_exactly_once(root, "t1", 40)
        assert sorted(got["failures"]) == ["20", "7"]
        failures = failure_manifest(root / "objects/jobs/t1", "initial")
        assert {(f["item_id"], f["error_type"]) for f in failures["items"]} == {
            ("7", "schema"),
            ("20", "schema"),
        }
        [out] = s["outputs"]
        assert pq.read_table(out["path"]).column("v").to_pylist()[:3] == [0, 1, 2]
