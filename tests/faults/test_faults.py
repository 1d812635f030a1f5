"""Fault injection on real jobs (local executor). Each test injects one fault, deterministic
(seeded), then checks docs/architecture.md's invariant 1 item by item."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
from pathlib import Path

import psutil

from tests.faults.chaos import live_workers
from tests.helpers import (
    assert_exactly_once,
    cli,
    failure_manifest,
    make_job,
    popen,
    status,
    task_manifests,
    task_records,
    wait_for,
)

QUICK = """
import time

def process(item, ctx):
    time.sleep(0.001)
    return {"id": item["id"], "n": item["n"]}
"""


def test_sigkill_a_worker_every_few_seconds(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job",
        20_000,
        handler=QUICK,
        batch_size=100,
        workers=3,
        extra="checkpoint_every: 20\n",
    )
    root = tmp_path / "root"
    rng = random.Random(20261128)
    proc = popen(root, "submit", str(config), "--no-progress")
    parent = psutil.Process(proc.pid)
    kills = 0
    while proc.poll() is None and kills < 6:
        try:
            proc.wait(timeout=1.5)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: still running, kill one
            live = live_workers(parent)
            if live:
                rng.choice(sorted(live, key=lambda p: p.pid)).send_signal(signal.SIGKILL)
                kills += 1
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert kills >= 3, "the job ended before the faults"
    assert_exactly_once(root, "t1", 20_000)
    tasks = task_records(root, "t1")
    assert len(tasks) == 200 and max(t.attempts for t in tasks.values()) >= 2
    # a SIGKILLed worker loses the manifests it had gathered, never a commit
    manifests = [m["task_id"] for m in task_manifests(root, "t1")]
    assert len(manifests) == len(set(manifests)) and set(manifests) <= set(tasks)


def test_finalize_killed_mid_aggregation_with_a_corrupt_part(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job",
        12_000,
        handler=QUICK.replace("0.001", "0"),
        batch_size=5,
        workers=2,
        extra="output: {fan_in: 4}\n",
    )
    root = tmp_path / "root"
    level1 = root / "objects/jobs/t1/aggregate/L1"
    proc = popen(root, "submit", str(config), "--no-progress")
    # part-*: the kill may leave a store's temp file (`.tmp-<pid>-…`) behind, never read
    wait_for(
        lambda: len(list(level1.glob("part-*.parquet"))) >= 10, timeout=300, what="aggregation"
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert status(root, "t1")["status"] == "STOPPED", "killed while aggregating: nobody runs it"
    done = sorted(level1.glob("part-*.parquet"))  # each put whole, its inputs in its footer
    assert 10 <= len(done) < 600
    kept = {p: p.stat().st_mtime_ns for p in done[1:10]}
    victim = done[0]
    victim.write_bytes(b"PAR1 garbage")  # corrupted on disk behind the store's back
    resumed = cli(root, "resume", "t1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "COMPLETED" in resumed.stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "finished parts were not redone"
    assert victim.read_bytes()[:4] == b"PAR1" and victim.stat().st_size > 100
    assert_exactly_once(root, "t1", 12_000)


def test_scratch_removed_under_running_workers(tmp_path: Path) -> None:
    handler = QUICK.replace("0.001", "0.01")
    config = make_job(
        tmp_path / "job",
        600,
        handler=handler,
        batch_size=50,
        workers=2,
        extra="checkpoint_every: 10\n",
    )
    root = tmp_path / "root"
    scratch = tmp_path / "job" / "scratch" / "job_t1"
    proc = popen(root, "submit", str(config), "--no-progress")
    wait_for(lambda: scratch.exists() and any(scratch.glob("task_*")), what="scratch")
    shutil.rmtree(scratch)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_exactly_once(root, "t1", 600)


SHARES = """
import hashlib, os
from slurmctl import PermanentError, TransientError

def process(item, ctx):
    bucket = int(hashlib.sha256(item["id"].encode()).hexdigest(), 16) % 100
    mark = os.path.join(os.environ["MARKS"], item["id"])
    first = not os.path.exists(mark)
    open(mark, "a").close()
    if bucket < 5:
        raise PermanentError("bad record")
    if bucket < 35 and first:
        raise TransientError("upstream hiccup")
    return {"id": item["id"]}
"""


def _bucket(i: int) -> int:
    return int(hashlib.sha256(str(i).encode()).hexdigest(), 16) % 100


def test_thirty_percent_transient_five_percent_permanent(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    config = make_job(
        tmp_path / "job",
        3000,
        handler=SHARES,
        batch_size=100,
        workers=2,
        extra="retry: {max_attempts: 3, backoff_s: 0.2}\n",
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", env={"MARKS": str(marks)})
    assert run.returncode == 0, run.stderr
    permanent = {str(i) for i in range(3000) if _bucket(i) < 5}
    transient = {str(i) for i in range(3000) if 5 <= _bucket(i) < 35}
    assert 100 < len(permanent) < 200 and 800 < len(transient) < 1000
    got = assert_exactly_once(root, "t1", 3000)
    assert set(got["failures"]) == permanent
    s = status(root, "t1")
    assert set(s["phases"]) == {"initial", "retry_1"}, "one retry phase recovered them all"
    assert s["phases"]["retry_1"]["SUCCESS"] == -(-len(transient) // 100)
    assert s["items"]["failed_transient"] == 0


POISON = """
import ctypes

def process(item, ctx):
    if item["id"] == "137":
        ctypes.string_at(0)  # segfault: the worker dies, every time
    return {"id": item["id"]}
"""


def test_poison_item_segfaults_its_worker_only_it_fails(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job",
        300,
        handler=POISON,
        batch_size=20,
        workers=2,
        extra="lease: {ttl_s: 2, heartbeat_s: 0.5}\n"
        "retry: {max_task_failures: 2, backoff_s: 0.1}\n",
    )
    config.write_text(config.read_text().replace("lease: {ttl_s: 3, heartbeat_s: 1}\n", ""))
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert run.returncode == 0, run.stderr
    got = assert_exactly_once(root, "t1", 300)
    assert got["failures"] == ["137"]
    failures = failure_manifest(root / "objects/jobs/t1", "initial")
    [poison] = failures["items"]
    assert poison["error_type"] == "poison" and poison["reason"] == "permanent error"
    assert status(root, "t1")["items"]["succeeded"] == 299
    assert task_records(root, "t1")["task-000006"].attempts >= 3
