"""`concurrency: N`: a worker keeps N items of its task in flight, on threads for a sync
`process` and on one event loop for an `async def process`; every item exactly once through a
SIGKILL and `resume`, errors classified per item, out-of-order completion with checkpoints, and
`try` running an async handler, all through the real CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

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

THREADS = """
import os, random, threading, time
from slurmctl import PermanentError

def process(item, ctx):
    ctx.acquire()
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(item["id"] + " " + threading.current_thread().name + "\\n")
    time.sleep(random.uniform(0.005, 0.03))
    if int(item["id"]) % 100 == 99:  # a slow last item: the next task starts meanwhile
        time.sleep(float(os.environ.get("TAIL_S", "0")))
    with open(os.environ["CALLS_FILE"] + ".done", "a") as f:
        f.write(item["id"] + "\\n")
    ctx.metrics.incr("api_requests")
    if int(item["id"]) % 7 == 3:
        raise PermanentError("item %s is broken" % item["id"])
    if int(item["id"]) % 7 == 5:
        raise ConnectionResetError("reset by peer")
    return {"id": item["id"], "double": item["n"] * 2}
"""
ASYNC = """
import asyncio, os, random
from slurmctl import PermanentError

async def setup(ctx):
    await asyncio.sleep(0)
    ctx.in_flight = 0
    ctx.peak = 0

async def process(item, ctx):
    await ctx.acquire_async()
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(item["id"] + " loop\\n")
    ctx.in_flight += 1
    ctx.peak = max(ctx.peak, ctx.in_flight)
    try:
        await asyncio.sleep(random.uniform(0.005, 0.03))
        if int(item["id"]) % 100 == 99:  # a slow last item: the next task starts meanwhile
            await asyncio.sleep(float(os.environ.get("TAIL_S", "0")))
        with open(os.environ["CALLS_FILE"] + ".done", "a") as f:
            f.write(item["id"] + "\\n")
    finally:
        ctx.in_flight -= 1
    ctx.metrics.incr("api_requests")
    if int(item["id"]) % 7 == 3:
        raise PermanentError("item %s is broken" % item["id"])
    if int(item["id"]) % 7 == 5:
        raise ConnectionResetError("reset by peer")
    return {"id": item["id"], "double": item["n"] * 2}

async def teardown(ctx):
    with open(os.environ["CALLS_FILE"] + ".peak", "w") as f:
        f.write(str(ctx.peak))
"""
HANDLERS = {"threads": THREADS, "async": ASYNC}
EXTRA = "concurrency: 16\ncheckpoint_every: 10\nretry: {max_attempts: 1}\nmax_failure_share: null\n"


def _calls(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def _failures(root: Path) -> dict[str, str]:
    jobdir = root / "objects/jobs/t1"
    phases = {f.name.split(".")[0] for f in (jobdir / "failures").glob("*.json")}
    return {
        str(i["item_id"]): i["error_type"]
        for phase in sorted(phases)
        for i in failure_manifest(jobdir, phase)["items"]
    }


def _expected_failures(count: int) -> dict[str, str]:
    kinds = {3: "validation", 5: "network"}
    return {str(i): kinds[i % 7] for i in range(count) if i % 7 in kinds}


@pytest.mark.parametrize("mode", ["threads", "async"])
def test_items_in_flight_errors_per_item_and_input_order(tmp_path: Path, mode: str) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job", 300, handler=HANDLERS[mode], batch_size=100, workers=1, extra=EXTRA
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), env={"CALLS_FILE": str(calls)}, timeout=120)
    assert run.returncode == 0, run.stderr
    ids = _calls(calls)
    assert sorted(ids, key=int) == [str(i) for i in range(300)], "every item called once"
    finished = _calls(Path(str(calls) + ".done"))
    assert sorted(finished, key=int) == [str(i) for i in range(300)]
    assert finished != sorted(finished, key=int), "items finished out of order"
    got = assert_exactly_once(root, "t1", 300)
    assert _failures(root) == _expected_failures(300)
    assert len(got["output"]) == 300 - len(_expected_failures(300))
    s = status(root, "t1")
    # each task's output keeps the input's order, whatever order its items finished in
    for o in s["outputs"]:
        out_ids = [int(x) for x in pq.read_table(o["path"]).column("id").to_pylist()]
        assert out_ids == sorted(out_ids)
    manifests = task_manifests(root, "t1")
    assert sum(m["metrics"]["handler"]["counters"]["api_requests"] for m in manifests) == 300
    if mode == "threads":
        threads = {line.split()[1] for line in calls.read_text().splitlines()}
        assert 2 <= len(threads) <= 16 and all(t.startswith("slurmctl-item") for t in threads)
    else:
        assert 2 <= int(Path(str(calls) + ".peak").read_text()) <= 16


@pytest.mark.parametrize("mode", ["threads", "async"])
def test_sigkill_mid_task_then_resume_is_exactly_once(tmp_path: Path, mode: str) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job", 400, handler=HANDLERS[mode], batch_size=100, workers=1, extra=EXTRA
    )
    root = tmp_path / "root"
    env = {"CALLS_FILE": str(calls)}
    proc = popen(root, "submit", str(config), env=env)
    parent = psutil.Process(proc.pid)
    wait_for(lambda: len(_calls(calls)) >= 170, what="the second task well on")
    os.killpg(proc.pid, signal.SIGKILL)  # the submit and its worker, mid-task
    proc.communicate(timeout=30)
    wait_for(lambda: not parent.is_running() or parent.status() == "zombie", what="all dead")
    before = len(_calls(calls))
    assert before < 400, "killed mid-job"
    run = cli(root, "resume", "t1", env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert_exactly_once(root, "t1", 400)
    assert _failures(root) == _expected_failures(400)
    redone = sum(n - 1 for n in Counter(_calls(calls)).values())
    # at most the items in flight (16) and those not yet checkpointed (checkpoint_every, or
    # CHECKPOINT_MIN_INTERVAL_S of work, whichever is more)
    print("REDONE", redone, before)
    assert redone <= 16 + 40, redone
    manifests = task_manifests(root, "t1")
    assert sum(m["metrics"]["items_from_checkpoint"] for m in manifests) >= 30


def test_try_runs_an_async_handler(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 8, handler=ASYNC, extra="concurrency: 4\n")
    env = {"CALLS_FILE": str(tmp_path / "calls.txt")}
    run = cli(tmp_path / "root", "try", str(config), "--items", "6", env=env)
    assert run.returncode == 1, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[:6] == [
        '0\tok\t{"id": "0", "double": 0}',
        '1\tok\t{"id": "1", "double": 2}',
        '2\tok\t{"id": "2", "double": 4}',
        "3\tvalidation (permanent)\tPermanentError: item 3 is broken",
        '4\tok\t{"id": "4", "double": 8}',
        "5\tnetwork\tConnectionResetError: reset by peer",
    ]
    assert lines[6].startswith('4 ok, 2 failed; metrics {"counters": {"api_requests": 6}')
    assert int(Path(str(env["CALLS_FILE"]) + ".peak").read_text()) == 4  # all in flight
    assert "Traceback" not in run.stderr and "never awaited" not in run.stderr
    assert not (tmp_path / "root").exists(), "try writes no state"


def test_a_bad_concurrency_is_one_line(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 3, extra="concurrency: 0\n")
    run = cli(tmp_path / "root", "submit", str(config))
    assert run.returncode == 2
    assert run.stderr == (
        f"error: {config}:10: concurrency: expected an integer from 1 to 1024, found 0\n"
    )
    assert not (tmp_path / "root" / "objects").exists()


def _worker(parent: psutil.Process) -> psutil.Process:
    found: list[psutil.Process] = []

    def one() -> bool:
        found.clear()
        for c in parent.children(recursive=True):
            try:  # a short-lived child of submit may have exited meanwhile: not the worker
                if c.status() != psutil.STATUS_ZOMBIE and "worker" in c.cmdline():
                    found.append(c)
            except psutil.NoSuchProcess:  # ZombieProcess too
                continue
        return len(found) == 1

    wait_for(one, what="the worker")
    return found[0]


@pytest.mark.parametrize("mode", ["threads", "async"])
def test_sigterm_lets_items_in_flight_finish_and_none_is_called_twice(
    tmp_path: Path, mode: str
) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job", 300, handler=HANDLERS[mode], batch_size=100, workers=1, extra=EXTRA
    )
    root = tmp_path / "root"
    env = {"CALLS_FILE": str(calls)}
    proc = popen(root, "submit", str(config), env=env)
    worker = _worker(psutil.Process(proc.pid))
    wait_for(lambda: len(_calls(calls)) >= 150, what="the second task half done")
    worker.send_signal(signal.SIGTERM)  # Slurm's stop: a new worker takes the task over
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_exactly_once(root, "t1", 300)
    assert _failures(root) == _expected_failures(300)
    # the items in flight finished and were kept: the next attempt called none of them again
    assert Counter(_calls(calls)) == Counter(str(i) for i in range(300))
    manifests = task_manifests(root, "t1")
    resumed = [m for m in manifests if m["metrics"]["items_from_checkpoint"]]
    assert len(resumed) == 1 and resumed[0]["metrics"]["items_from_checkpoint"] >= 50


@pytest.mark.parametrize("mode", ["threads", "async"])
def test_pause_holds_every_item_in_flight(tmp_path: Path, mode: str) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        600,
        handler=HANDLERS[mode],
        batch_size=100,
        workers=1,
        extra=EXTRA + "rate_limit: {tokens_per_sec: 100, burst: 5}\n",
    )
    root = tmp_path / "root"
    proc = popen(root, "submit", str(config), env={"CALLS_FILE": str(calls)})
    wait_for(lambda: len(_calls(calls)) >= 200, what="progress")
    paused = cli(root, "pause", "t1")
    assert paused.returncode == 0, paused.stderr
    wait_for(lambda: status(root, "t1")["status"] == "PAUSED", what="paused")
    # the items in flight finish within a second (an observation window, nothing to poll);
    # then no new call goes out
    time.sleep(1.0)
    before = len(_calls(calls))
    time.sleep(1.0)
    assert len(_calls(calls)) == before < 600, "calls went on while paused"
    resumed = cli(root, "resume", "t1")
    assert resumed.returncode == 0, resumed.stderr
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_exactly_once(root, "t1", 600)
    assert _failures(root) == _expected_failures(600)
    assert Counter(_calls(calls)) == Counter(str(i) for i in range(600)), "none called twice"


def test_a_blocking_acquire_inside_an_async_handler_fails_the_item(tmp_path: Path) -> None:
    handler = """
async def process(item, ctx):
    ctx.acquire()  # would stall every item in flight on the loop
    return {"id": item["id"]}
"""
    config = make_job(tmp_path / "job", 2, handler=handler, extra="concurrency: 2\n")
    run = cli(tmp_path / "root", "try", str(config))
    assert run.returncode == 1, run.stderr
    line = (
        "validation (permanent)\tPermanentError: ctx.acquire() blocks the event loop of an "
        "async handler: use `await ctx.acquire_async()`"
    )
    assert run.stdout.strip().splitlines()[:2] == [f"0\t{line}", f"1\t{line}"]


def test_items_in_flight_share_the_rate_limit_against_a_strict_api(tmp_path: Path) -> None:
    from tests.ratelimit.strict_api import HANDLER, OK, STRICT_429, RemoteAPI

    with RemoteAPI(80.0, 5, tmp_path) as api:
        extra = (
            "concurrency: 8\nrate_limit: {tokens_per_sec: 80, burst: 5}\n"
            f"params: {{base_url: '{api.url}'}}\n"
        )
        config = make_job(tmp_path / "job", 400, handler=HANDLER, extra=extra, workers=1)
        run = cli(tmp_path / "root", "submit", "--no-progress", str(config), timeout=120)
        assert run.returncode == 0, run.stderr
        assert api.count(code=STRICT_429) == 0, "8 items in flight stay under the limit"
        assert api.count(code=OK) == 400
    assert_exactly_once(tmp_path / "root", "t1", 400)


TIMED = """
import asyncio, os, time

async def process(item, ctx):
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write("%s start %.6f\\n" % (item["id"], time.time()))
    await asyncio.sleep(0.1 + 0.04 * (int(item["id"]) % 8))  # slots free one by one
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write("%s end %.6f\\n" % (item["id"], time.time()))
    return {"id": item["id"]}
"""


def test_the_next_task_starts_while_the_last_items_of_the_previous_are_in_flight(
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job", 200, handler=TIMED, batch_size=40, workers=1, extra="concurrency: 8\n"
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), env={"CALLS_FILE": str(calls)}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert_exactly_once(root, "t1", 200)
    at: dict[tuple[str, str], float] = {}
    for line in calls.read_text().splitlines():
        item, what, t = line.split()
        at[(item, what)] = float(t)
    assert len(at) == 400, "every item started and ended once"
    overlaps = 0
    for k in range(1, 5):  # batch k's first item starts before batch k-1's last one ends
        first_start = min(at[(str(i), "start")] for i in range(40 * k, 40 * k + 40))
        last_end = max(at[(str(i), "end")] for i in range(40 * k - 40, 40 * k))
        overlaps += first_start < last_end
    print("OVERLAPS", overlaps)
    assert overlaps >= 3, f"only {overlaps} of 4 task boundaries kept the window full"
    flight = status(root, "t1")["in_flight"]
    shown = cli(root, "status", "t1")
    row = next(line for line in shown.stdout.splitlines() if "items in flight" in line)
    want = f"{flight['items_per_worker']:.1f} per worker, {flight['item_latency_ms']:.0f} ms each"
    assert row.split("│")[2].strip() == want, row
    assert flight["items_timed"] == 200
    assert 240 <= flight["item_latency_ms"] < 1000  # 240 ms on average, plus the thread hops
    assert 4 < flight["items_per_worker"] <= 8


def _running(root: Path) -> list[str]:
    if not (root / "state.sqlite").exists():
        return []
    conn = sqlite3.connect(f"file:{root / 'state.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT task_id FROM tasks WHERE status = 'RUNNING' ORDER BY task_id")
        return [r[0] for r in rows]
    except sqlite3.OperationalError:  # the store is being created
        return []
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["threads", "async"])
def test_sigkill_with_several_tasks_in_hand_then_resume_is_exactly_once(
    tmp_path: Path, mode: str
) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job", 400, handler=HANDLERS[mode], batch_size=100, workers=1, extra=EXTRA
    )
    root = tmp_path / "root"
    env = {"CALLS_FILE": str(calls), "TAIL_S": "2"}
    proc = popen(root, "submit", str(config), env=env)
    parent = psutil.Process(proc.pid)
    # the last item of each task takes 2 s: the worker claims the next tasks meanwhile, and
    # starts their items
    wait_for(
        lambda: len(_running(root)) >= 2 and len(_calls(calls)) > 210,
        what="several tasks in hand, items done in more than two",
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the submit and its worker
    proc.communicate(timeout=30)
    wait_for(lambda: not parent.is_running() or parent.status() == "zombie", what="all dead")
    held = _running(root)
    assert len(held) >= 2, held
    assert len(_calls(calls)) < 400, "killed mid-job"
    run = cli(root, "resume", "t1", env={**env, "TAIL_S": "0"}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert_exactly_once(root, "t1", 400)
    assert _failures(root) == _expected_failures(400)
    redone = sum(n - 1 for n in Counter(_calls(calls)).values())
    # at most the items in flight (16, over all the tasks in hand) and those of each task in
    # hand not yet checkpointed (checkpoint_every each)
    assert redone <= 16 + 10 * len(held), (redone, held)
    manifests = task_manifests(root, "t1")
    resumed = {m["task_id"]: m["metrics"]["items_from_checkpoint"] for m in manifests}
    # the oldest task in hand had all but its slow last item done: resumed from its checkpoint
    assert resumed[held[0]] >= 90, (resumed, held)


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (
            "",
            "2 workers x concurrency 1 / the API's latency per item (set expected_latency_s to "
            "see the figure)",
        ),
        (
            "concurrency: 4\nexpected_latency_s: 0.2\n",
            "40 items/s, 40% of the rate limit 100/s (2 workers x concurrency 4 / 0.2 s expected "
            "latency = 40 items/s; concurrency 10 reaches it)",
        ),
        (
            "concurrency: 16\nexpected_latency_s: 0.2\n",
            "100 items/s, the rate limit (2 workers x concurrency 16 / 0.2 s expected latency = "
            "160 items/s)",
        ),
    ],
)
def test_dry_run_prints_the_throughput_the_definition_can_reach(
    tmp_path: Path, extra: str, line: str
) -> None:
    config = make_job(
        tmp_path / "job",
        10,
        workers=2,
        extra=extra + "rate_limit: {tokens_per_sec: 100, burst: 10}\n",
    )
    run = cli(tmp_path / "root", "submit", str(config), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == f"  throughput    {line}"


def test_a_bad_latency_hint_is_one_line(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 3, extra="expected_latency_s: 0\n")
    run = cli(tmp_path / "root", "submit", str(config), "--dry-run")
    assert run.returncode == 2
    assert run.stderr == (
        f"error: {config}:10: expected_latency_s: expected a number > 0 and <= 3600, found 0\n"
    )
