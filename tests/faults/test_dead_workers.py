"""Dead workers never block their tasks for a lease (issue 13, hole 9).

The executor that saw its worker die frees the dead worker's leases at once (a fenced
`release_dead` that counts a worker loss), so the tasks move on in a poll's time, not a lease
TTL's. The leases in these tests are long (120 s, the default) on purpose: a fix that waited
for their expiry would overrun the tests' timeouts.
"""

from __future__ import annotations

import json
import random
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import assert_exactly_once, cli, make_job, popen, status

LONG_LEASE = "lease: {ttl_s: 120, heartbeat_s: 10}\n"
SHORT_LEASE = "lease: {ttl_s: 3, heartbeat_s: 1}\n"


class _FlakyAPI(ThreadingHTTPServer):
    """`GET /item/<id>`: the first call for 1 id in 11 (id % 11 == 0) answers 503, every later
    call 200; calls are counted per id."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a worker killed mid-request hangs up: normal here


class _Handler(BaseHTTPRequestHandler):
    server: _FlakyAPI

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        item_id = self.path.rsplit("/", 1)[-1]
        with self.server.lock:
            n = self.server.calls[item_id] = self.server.calls.get(item_id, 0) + 1
        code = 503 if n == 1 and int(item_id) % 11 == 0 else 200
        body = json.dumps({"id": item_id}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def flaky_api() -> Iterator[_FlakyAPI]:
    api = _FlakyAPI()
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    yield api
    api.shutdown()
    api.server_close()


API_HANDLER = """
import time, urllib.request

def process(item, ctx):
    time.sleep(0.002)
    with urllib.request.urlopen(ctx.params["base_url"] + "/item/" + item["id"], timeout=30) as r:
        r.read()
    return {"id": item["id"], "n": item["n"]}
"""


def _live_workers(parent: psutil.Process) -> list[psutil.Process]:
    found = []
    try:
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "worker" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _lease(config: Path, lease: str) -> None:
    config.write_text(config.read_text().replace(SHORT_LEASE, lease))


def test_chaos_a_worker_sigkilled_every_3s_and_a_flaky_api(
    tmp_path: Path, flaky_api: _FlakyAPI
) -> None:
    """6,000 items, 4 workers, a worker SIGKILLed every 3 s, 1 id in 11 answering 503 once:
    COMPLETED, every item exactly once, within a timeout shorter than one lease."""
    url = f"http://127.0.0.1:{flaky_api.server_address[1]}"
    config = make_job(
        tmp_path / "job",
        6000,
        handler=API_HANDLER,
        batch_size=50,
        workers=4,
        extra=f"params: {{base_url: '{url}'}}\ncheckpoint_every: 10\n"
        "retry: {max_attempts: 3, backoff_s: 1}\n",
    )
    _lease(config, LONG_LEASE)
    root = tmp_path / "root"
    rng = random.Random(20261201)
    proc = popen(root, "submit", str(config), "--no-progress")
    parent = psutil.Process(proc.pid)
    kills = 0
    while proc.poll() is None:
        try:
            proc.wait(timeout=3)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: still running, kill one
            live = _live_workers(parent)
            if live:
                rng.choice(sorted(live, key=lambda p: p.pid)).send_signal(signal.SIGKILL)
                kills += 1
            if kills > 40:  # 120 s of chaos: far beyond an undisturbed run (~15 s)
                proc.kill()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, (kills, out, err)
    assert kills >= 3, "the job ended before the faults"
    assert "COMPLETED: 6000 succeeded, 0 failed permanently, 0 failed transiently" in out
    assert_exactly_once(root, "t1", 6000)
    flaky = [str(i) for i in range(6000) if i % 11 == 0]
    assert all(flaky_api.calls[i] >= 2 for i in flaky), "each flaky id failed once, then passed"
    s = status(root, "t1")
    assert set(s["phases"]) == {"initial", "retry_1"} and s["items"]["failed_transient"] == 0


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
    _lease(config, lease)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", timeout=100)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "COMPLETED: 399 succeeded, 1 failed permanently" in run.stdout
    got = assert_exactly_once(root, "t1", 400)
    assert got["failures"] == ["137"]
    failures = json.loads((root / "objects/jobs/t1/failures/initial.json").read_text())
    [poison] = failures["items"]
    assert poison["error_type"] == "poison"
    assert poison["message"].startswith("poison: the worker died while this item was in flight")
    task = json.loads((root / "objects/jobs/t1/tasks/task-000006.json").read_text())
    assert task["attempts"] > max_task_failures  # the deaths, then the isolating attempts
    others = [
        json.loads(p.read_text())
        for p in (root / "objects/jobs/t1/tasks").glob("*.json")
        if p.name != "task-000006.json"
    ]
    assert len(others) == 19 and all(m["attempts"] == 1 for m in others)


SETUP_CRASH = """
def setup(ctx):
    raise RuntimeError("cannot reach the database")

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
