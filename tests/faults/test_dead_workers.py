"""Dead workers never block their tasks for a lease (issue 13, hole 9).

The executor that saw its worker die frees the dead worker's leases at once (a fenced
`release_dead` that counts a worker loss), so the tasks move on in a poll's time, not a lease
TTL's. The leases in these tests are long (120 s, the default) on purpose: a fix that waited
for their expiry would overrun the tests' timeouts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.chaos import (
    CHAOS_ITEMS,
    LONG_LEASE,
    SHORT_LEASE,
    FlakyAPI,
    chaos_job,
    run_chaos,
    set_lease,
)
from tests.helpers import (
    assert_exactly_once,
    cli,
    failure_manifest,
    make_job,
    status,
    task_records,
)


@pytest.fixture
def flaky_api() -> Iterator[FlakyAPI]:
    with FlakyAPI.running() as api:
        yield api


def test_chaos_a_worker_sigkilled_every_3s_and_a_flaky_api(
    tmp_path: Path, flaky_api: FlakyAPI
) -> None:
    """6,000 items, 4 workers, a worker SIGKILLed every 3 s, 1 id in 11 answering 503 once:
    COMPLETED, every item exactly once, within a timeout shorter than one lease (bench/chaos.py
    compares its wall time with an undisturbed run's)."""
    config = chaos_job(tmp_path / "job", flaky_api.url)
    root = tmp_path / "root"
    run = run_chaos(root, config, kill_every_s=3.0, timeout_s=110)
    assert run.returncode == 0, run
    assert run.kills >= 3, "the job ended before the faults"
    assert "COMPLETED: 6000 succeeded, 0 failed permanently, 0 failed transiently" in run.out
    assert_exactly_once(root, "t1", CHAOS_ITEMS)
    flaky = [str(i) for i in range(CHAOS_ITEMS) if i % 11 == 0]
    assert all(flaky_api.calls[i] >= 2 for i in flaky), "each flaky id failed once, then passed"
    s = status(root, "t1")
    assert set(s["phases"]) == {"initial", "retry_1"} and s["items"]["failed_transient"] == 0
    assert 1 <= s["workers_lost"] <= run.kills  # a kill between two tasks holds no lease


POISON_KILL = """
import os, time

def process(item, ctx):
    if item["id"] == "137":
        os.kill(os.getpid(), 9)  # the worker dies on this item, every time
    time.sleep(0.001)
    return {"id": item["id"]}
"""


@pytest.mark.parametrize(
    ("workers", "max_task_failures", "lease"),
    [(2, 4, LONG_LEASE), (1, 6, SHORT_LEASE)],
    ids=["4-failures-lease-120s", "6-failures-1-worker-lease-3s"],
)
def test_poison_item_that_sigkills_its_worker_is_isolated(
    tmp_path: Path, workers: int, max_task_failures: int, lease: str
) -> None:
    """Every death frees the lease at once and counts a worker loss, so no run that ends in
    one is fruitless, and isolation gets its chance (a 120 s lease: no wait for its expiry; one
    worker, a 3 s lease: before, each death made a fruitless run and the job FAILED first)."""
    config = make_job(
        tmp_path / "job",
        400,
        handler=POISON_KILL,
        batch_size=20,
        workers=workers,
        extra=f"retry: {{max_task_failures: {max_task_failures}, backoff_s: 0.1}}\n",
    )
    set_lease(config, lease)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", timeout=100)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "COMPLETED: 399 succeeded, 1 failed permanently" in run.stdout
    got = assert_exactly_once(root, "t1", 400)
    assert got["failures"] == ["137"]
    failures = failure_manifest(root / "objects/jobs/t1", "initial")
    [poison] = failures["items"]
    assert poison["error_type"] == "poison"
    assert poison["message"].startswith("poison: the worker died while this item was in flight")
    tasks = task_records(root, "t1")
    # the deaths, then the isolating attempts
    assert tasks.pop("task-000006").attempts > max_task_failures
    assert len(tasks) == 19 and all(t.attempts == 1 for t in tasks.values())


SETUP_CRASH = """
import os

def setup(ctx):
    os._exit(1)  # the worker dies at start (a missing library, a node without the venv)

def process(item, ctx):
    return {"id": item["id"]}
"""


def test_workers_that_crash_at_start_fail_the_job_without_progress(tmp_path: Path) -> None:
    """No lease freed, no item done: the fruitless-runs rule still ends the job."""
    config = make_job(tmp_path / "job", 40, handler=SETUP_CRASH, batch_size=10, workers=2)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", timeout=100)
    assert run.returncode == 1, run.stdout + run.stderr
    s = status(root, "t1")
    assert s["status"] == "FAILED"
    assert s["error"].startswith("workers exited with codes [1] 5 times without progress; see ")
    history = [json.loads(x) for x in (root / "objects/jobs/t1/history.jsonl").open()]
    assert [h["action"] for h in history].count("failed") == 1
