"""A strict loopback API for the rate-limit tests and the benchmark: the judge of the limiter.

`GET /item/<id>` answers 200, or 429 (`Retry-After: 1`) when the server-side token bucket
(examples/backfill/mock_api.py's, capacity `burst`, refill `rate`/s) has no token. Every request is
logged with its arrival time (`time.time()`, the workers' clock on loopback) and status, so tests
measure rates, the last request after a pause and the first after a resume from the server's side.
`inject_429(duration_s, retry_after)` makes the server answer every request 429 for a while (an
API's throttling episode), logged apart from the strict refusals.

`spawn_api(rate, burst)` runs it in a process of its own (`python -m tests.ratelimit.strict_api`)
and reads its log over HTTP (`/log`, `/inject`): the judge then shares no interpreter lock with
the test or benchmark that measures (a benchmark opening a backend in-process would otherwise
delay the server's threads, bunch requests at admission and cause 429s of its own making).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from examples.backfill.mock_api import TokenBucket

OK, STRICT_429, INJECTED_429 = 200, 429, 1429
"""Status codes in the log: an injected 429 is logged as 1429 (answered as a 429)."""


@dataclass
class Injection:
    until: float = 0.0
    retry_after: float | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, api: StrictAPI) -> None:
        super().__init__((api.host, 0), _Handler)
        self.api = api

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up (a worker killed at the end of a test) is normal


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        q = {k: float(v[0]) for k, v in parse_qs(url.query).items()}
        if url.path == "/stats":
            self._send(200, api.stats())
            return
        if url.path == "/log":
            self._send(200, api.log(q.get("since", 0.0), q.get("until", float("inf"))))
            return
        if url.path == "/workers":
            self._send(200, api.workers_seen())
            return
        if url.path == "/inject":
            self._send(200, api.inject_429(q["duration"], q.get("retry_after")))
            return
        code, retry_after = api.admit(self.headers.get("X-Worker"))
        if code == OK:
            self._send(200, {"id": self.path.rsplit("/", 1)[-1]})
        else:
            self._send(429, {"error": "rate limited"}, {"Retry-After": retry_after})


class LogView:
    """Measures over the request log: `log(since, until)` is all a subclass provides."""

    rate: float
    burst: int

    def log(self, since: float = 0.0, until: float = float("inf")) -> list[tuple[float, int]]:
        raise NotImplementedError

    def count(self, since: float = 0.0, until: float = float("inf"), code: int | None = OK) -> int:
        return sum(1 for _, c in self.log(since, until) if code is None or c == code)

    def last(self, code: int | None = None) -> float | None:
        got = [t for t, c in self.log() if code is None or c == code]
        return got[-1] if got else None

    def first_after(self, since: float) -> float | None:
        got = self.log(since)
        return got[0][0] if got else None

    def max_in_window(self, window: float, code: int = OK) -> int:
        """The most requests with this code in any window of `window` seconds."""
        times = [t for t, c in self.log() if c == code]
        best = j = 0
        for i, t in enumerate(times):
            while times[j] <= t - window:
                j += 1
            best = max(best, i - j + 1)
        return best

    def stats(self) -> dict[str, Any]:
        codes = [c for _, c in self.log()]
        return {
            "requests": len(codes),
            "ok": codes.count(OK),
            "status_429": codes.count(STRICT_429),
            "injected_429": codes.count(INJECTED_429),
            "rate": self.rate,
            "burst": self.burst,
        }


class StrictAPI(LogView):
    def __init__(self, rate: float, burst: int, host: str = "127.0.0.1") -> None:
        self.rate = rate
        self.burst = burst
        self.host = host
        self.bucket = TokenBucket(rate, burst)
        self.lock = threading.Lock()
        self.times: list[float] = []
        self.codes: list[int] = []
        self.injection = Injection()
        self._workers: dict[str, float] = {}
        self._server = _Server(self)
        self.port = int(self._server.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def admit(self, worker: str | None = None) -> tuple[int, str]:
        with self.lock:  # the time taken under the lock: the log stays sorted
            now = time.time()
            if worker is not None:
                self._workers.setdefault(worker, now)
            inj = self.injection
            if now < inj.until:
                code = INJECTED_429
                retry = "" if inj.retry_after is None else f"{inj.retry_after:g}"
            else:
                code = OK if self.bucket.try_acquire() else STRICT_429
                retry = "1"
            self.times.append(now)
            self.codes.append(code)
        return code, retry

    def inject_429(self, duration_s: float, retry_after: float | None = None) -> float:
        """Answer every request 429 for duration_s from now; returns the start time."""
        now = time.time()
        with self.lock:
            self.injection = Injection(now + duration_s, retry_after)
        return now

    def log(self, since: float = 0.0, until: float = float("inf")) -> list[tuple[float, int]]:
        with self.lock:
            lo = bisect.bisect_left(self.times, since)
            hi = bisect.bisect_left(self.times, until)
            return list(zip(self.times[lo:hi], self.codes[lo:hi], strict=True))

    def workers_seen(self) -> dict[str, float]:
        """When each worker (header X-Worker) sent its first request."""
        with self.lock:
            return dict(self._workers)

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> StrictAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RemoteAPI(LogView):
    """A StrictAPI in a process of its own, measured through its log over HTTP."""

    def __init__(self, rate: float, burst: int, workdir: Path) -> None:
        self.rate, self.burst = rate, burst
        port_file = workdir / f"strict-api-{os.getpid()}-{time.monotonic_ns()}.port"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.ratelimit.strict_api",
                *("--rate", str(rate), "--burst", str(burst), "--port-file", str(port_file)),
            ],
            cwd=Path(__file__).resolve().parents[2],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the strict API did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        port_file.unlink()

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def log(self, since: float = 0.0, until: float = float("inf")) -> list[tuple[float, int]]:
        q = f"since={since!r}" + (f"&until={until!r}" if until != float("inf") else "")
        return [(float(t), int(c)) for t, c in self._get(f"/log?{q}")]

    def workers_seen(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self._get("/workers").items()}

    def inject_429(self, duration_s: float, retry_after: float | None = None) -> float:
        q = f"duration={duration_s!r}" + (
            "" if retry_after is None else f"&retry_after={retry_after!r}"
        )
        return float(self._get(f"/inject?{q}"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> RemoteAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A strict loopback API (tests, benchmarks).")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--burst", type=int, required=True)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with StrictAPI(args.rate, args.burst) as api:
        tmp = f"{args.port_file}.tmp"
        Path(tmp).write_text(str(api.port))
        os.replace(tmp, args.port_file)
        stop.wait()


HANDLER = """
import json, urllib.request

def process(item, ctx):
    ctx.acquire()
    url = ctx.params["base_url"] + "/item/" + item["id"]
    request = urllib.request.Request(url, headers={"X-Worker": ctx.worker_id})
    with urllib.request.urlopen(request, timeout=10) as r:  # a 429 raises: `throttled`
        json.loads(r.read())
    return {"id": item["id"], "ok": True}
"""
"""The test and benchmark handler: one slot, one request; a 429 propagates (`throttled`)."""


if __name__ == "__main__":
    main()
