"""The chaos job of issue 13, shared by its test (tests/faults/test_dead_workers.py) and its
benchmark (bench/chaos.py): a loopback API whose first call for 1 id in 11 answers 503, and a
killer that SIGKILLs one live worker every few seconds while the job runs."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import make_job, popen

CHAOS_ITEMS = 6000
LONG_LEASE = "lease: {ttl_s: 120, heartbeat_s: 10}\n"
"""The default lease: a fix that waited for expiries would take minutes, not seconds."""
SHORT_LEASE = "lease: {ttl_s: 3, heartbeat_s: 1}\n"
"""What tests.helpers.make_job writes."""

API_HANDLER = """
import time, urllib.request

def process(item, ctx):
    time.sleep(0.005)  # 6,000 items take ~9 s of 4 workers: several kills land in the run
    with urllib.request.urlopen(ctx.params["base_url"] + "/item/" + item["id"], timeout=30) as r:
        r.read()
    return {"id": item["id"], "n": item["n"]}
"""


class FlakyAPI(ThreadingHTTPServer):
    """`GET /item/<id>`: the first call for 1 id in 11 (id % 11 == 0) answers 503, every later
    call 200; calls are counted per id."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a worker killed mid-request hangs up: normal here

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[FlakyAPI]:
        api = cls()
        thread = threading.Thread(target=api.serve_forever, daemon=True)
        thread.start()
        try:
            yield api
        finally:
            api.shutdown()
            api.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FlakyAPI

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


def set_lease(config: Path, lease: str) -> None:
    config.write_text(config.read_text().replace(SHORT_LEASE, lease))


def chaos_job(folder: Path, url: str, items: int = CHAOS_ITEMS, workers: int = 4) -> Path:
    config = make_job(
        folder,
        items,
        handler=API_HANDLER,
        batch_size=50,
        workers=workers,
        extra=f"params: {{base_url: '{url}'}}\ncheckpoint_every: 10\n"
        "retry: {max_attempts: 3, backoff_s: 1}\n",
    )
    set_lease(config, LONG_LEASE)
    return config


@dataclass
class ChaosRun:
    returncode: int | None
    kills: int
    wall_s: float
    out: str
    err: str


def live_workers(parent: psutil.Process) -> list[psutil.Process]:
    """Live worker processes (a killed one stays a zombie until its parent reaps it)."""
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


def run_chaos(
    root: Path, config: Path, *, kill_every_s: float | None, timeout_s: float, seed: int = 1201
) -> ChaosRun:
    """`slurmctl submit` the job, SIGKILLing a random live worker every kill_every_s (None: an
    undisturbed run), until it ends or timeout_s passes (then it is killed: returncode None)."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    proc = popen(root, "submit", str(config), "--no-progress")
    parent = psutil.Process(proc.pid)
    kills = 0
    while proc.poll() is None:
        left = timeout_s - (time.monotonic() - t0)
        if left <= 0:
            proc.kill()
            break
        try:
            proc.wait(timeout=min(kill_every_s or left, left))
        except subprocess.TimeoutExpired:
            live = live_workers(parent) if kill_every_s else []
            if live:
                rng.choice(sorted(live, key=lambda p: p.pid)).send_signal(signal.SIGKILL)
                kills += 1
    out, err = proc.communicate(timeout=30)
    wall = time.monotonic() - t0
    code = proc.returncode if wall < timeout_s else None
    return ChaosRun(code, kills, wall, out, err)
