#!/usr/bin/env python3
"""A mock user API with a strict rate limit, for the backfill example.

`GET /users/<id>` answers 200 with a deterministic user record, or:

* 429 (header `Retry-After: 1`) when the server-side token bucket (capacity `burst`, refill
  `rate` per second) has no token. The bucket covers every request except `/stats`: it is the
  judge of whether clients respect the rate.
* 401 when a token is configured and `Authorization: Bearer <token>` is missing or wrong.
* 404 for ids where `int(id) % not_found_every == 0` (a stable hash for non-integer ids).
* 503 for the first `fail_attempts` admitted requests of a deterministic share `fail_share` of
  the ids (chosen by a hash of seed and id); later attempts for the same id succeed.

`GET /stats` (not rate limited, not counted) answers the counters as JSON.

Run by hand:
    python3 mock_api.py --port 0 --rate 50 --burst 5 --token-env API_TOKEN --port-file port.txt
Import for tests:
    api = start_server(rate=50, burst=5); ...; api.stats(); api.stop()
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

COUNTRIES = ("US", "DE", "FR", "BR", "IN", "JP", "NG", "CA")
USERS_PREFIX = "/users/"


def _hash64(text: str) -> int:
    """A stable 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def followers_for(user_id: str) -> int:
    return _hash64(f"followers:{user_id}") % 100_000


def country_for(user_id: str) -> str:
    return COUNTRIES[_hash64(f"country:{user_id}") % len(COUNTRIES)]


def user_record(user_id: str) -> dict[str, Any]:
    """The body of a 200 answer for this id (the same in every run)."""
    return {
        "user_id": user_id,
        "name": f"user-{user_id}",
        "followers": followers_for(user_id),
        "country": country_for(user_id),
    }


def is_not_found(user_id: str, not_found_every: int) -> bool:
    """True for ids that always answer 404."""
    if not_found_every <= 0:
        return False
    try:
        number = int(user_id)
    except ValueError:
        number = _hash64(f"id:{user_id}")
    return number % not_found_every == 0


def in_failing_share(user_id: str, fail_share: float, seed: int = 0) -> bool:
    """True for ids whose first attempt(s) answer 503."""
    if fail_share <= 0:
        return False
    return _hash64(f"fail:{seed}:{user_id}") / 2**64 < fail_share


class TokenBucket:
    """Capacity `burst`, refilled at `rate` tokens per second; starts full. Thread-safe."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = float(rate)
        self.capacity = float(burst)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        """Take one token if there is one; never waits."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._last = now
            if self._tokens >= 1.0 - 1e-9:
                self._tokens = max(0.0, self._tokens - 1.0)
                return True
            return False


class _State:
    """Everything the request threads share: limiter, counters, per-id attempts."""

    def __init__(
        self,
        rate: float,
        burst: int,
        fail_share: float,
        fail_attempts: int,
        not_found_every: int,
        token: str | None,
        seed: int,
    ) -> None:
        self.bucket = TokenBucket(rate, burst)
        self.rate = rate
        self.burst = burst
        self.fail_share = fail_share
        self.fail_attempts = fail_attempts
        self.not_found_every = not_found_every
        self.token = token
        self.seed = seed
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self._window: collections.deque[float] = collections.deque()
        self._admitted_window: collections.deque[float] = collections.deque()
        self.max_requests_1s = 0
        self.max_admitted_1s = 0
        self.first_request_at: float | None = None
        self.last_request_at: float | None = None
        # Attempts are kept only for ids in the failing share, so memory stays small.
        self.attempts: dict[str, int] = {}

    def admit(self) -> bool:
        """Count one request and ask the token bucket; False means answer 429."""
        admitted = self.bucket.try_acquire()
        now = time.monotonic()
        wall = time.time()
        with self.lock:
            self.counts["requests"] += 1
            if self.first_request_at is None:
                self.first_request_at = wall
            self.last_request_at = wall
            self.max_requests_1s = max(self.max_requests_1s, _slide(self._window, now))
            if admitted:
                self.max_admitted_1s = max(self.max_admitted_1s, _slide(self._admitted_window, now))
            else:
                self.counts["status_429"] += 1
        return admitted

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def should_fail(self, user_id: str) -> bool:
        """Count this attempt for the id; True if it must answer 503."""
        if not in_failing_share(user_id, self.fail_share, self.seed):
            return False
        with self.lock:
            attempt = self.attempts.get(user_id, 0) + 1
            self.attempts[user_id] = attempt
        return attempt <= self.fail_attempts

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        return hmac.compare_digest(header or "", f"Bearer {self.token}")

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            first, last = self.first_request_at, self.last_request_at
            return {
                "requests": self.counts["requests"],
                "ok": self.counts["ok"],
                "status_429": self.counts["status_429"],
                "status_503": self.counts["status_503"],
                "status_404": self.counts["status_404"],
                "status_401": self.counts["status_401"],
                "max_requests_1s": self.max_requests_1s,
                "max_admitted_1s": self.max_admitted_1s,
                "first_request_at": first,
                "last_request_at": last,
                "duration_s": (last - first) if first is not None and last is not None else 0.0,
                "rate": self.rate,
                "burst": self.burst,
            }


def _slide(window: collections.deque[float], now: float) -> int:
    """Add `now` to a window of timestamps, drop those older than 1 s, return its size."""
    window.append(now)
    while window and window[0] <= now - 1.0:
        window.popleft()
    return len(window)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: _State, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.state = state
        self.verbose = verbose

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer is normal under load; anything else is printed.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        if path == "/stats":
            self._send_json(200, state.snapshot())
            return
        if not state.admit():
            self._send_json(429, {"error": "rate limited"}, {"Retry-After": "1"})
            return
        if not state.authorized(self.headers.get("Authorization")):
            state.count("status_401")
            self._send_json(401, {"error": "missing or wrong bearer token"})
            return
        rest = path[len(USERS_PREFIX) :] if path.startswith(USERS_PREFIX) else ""
        if not rest or "/" in rest:
            state.count("status_404")
            self._send_json(404, {"error": f"no route {path}"})
            return
        user_id = unquote(rest)
        if is_not_found(user_id, state.not_found_every):
            state.count("status_404")
            self._send_json(404, {"error": f"user {user_id} not found"})
            return
        if state.should_fail(user_id):
            state.count("status_503")
            self._send_json(503, {"error": "temporarily unavailable"})
            return
        state.count("ok")
        self._send_json(200, user_record(user_id))


class MockAPI:
    """A running mock API (serving in a daemon thread)."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.url = f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        return self._server.state.snapshot()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> MockAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    rate: float = 50.0,
    burst: int = 5,
    fail_share: float = 0.05,
    not_found_every: int = 97,
    token: str | None = None,
    seed: int = 0,
    fail_attempts: int = 1,
    verbose: bool = False,
) -> MockAPI:
    """Bind, start serving in a daemon thread, return at once (the socket already listens)."""
    state = _State(rate, burst, fail_share, fail_attempts, not_found_every, token, seed)
    server = _Server((host, port), state, verbose)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return MockAPI(server, thread)


def _write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)  # atomic: a reader never sees a half-written file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mock user API with a strict rate limit.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second")
    parser.add_argument("--burst", type=int, default=5, help="token bucket capacity")
    parser.add_argument("--fail-share", type=float, default=0.05, help="share of ids with 503s")
    parser.add_argument("--fail-attempts", type=int, default=1, help="503s per failing id")
    parser.add_argument("--not-found-every", type=int, default=97, help="0 disables 404s")
    parser.add_argument("--token-env", default=None, help="env var holding the bearer token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port-file", default=None, help="write the bound port here")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env) or None
        if token is None:
            print(f"warning: ${args.token_env} is not set: no authentication", file=sys.stderr)

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    api = start_server(
        host=args.host,
        port=args.port,
        rate=args.rate,
        burst=args.burst,
        fail_share=args.fail_share,
        not_found_every=args.not_found_every,
        token=token,
        seed=args.seed,
        fail_attempts=args.fail_attempts,
        verbose=args.verbose,
    )
    try:
        if args.port_file:
            _write_port_file(args.port_file, api.port)
        print(f"mock API listening on {api.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        api.stop()
        if args.port_file:
            with contextlib.suppress(FileNotFoundError):
                os.remove(args.port_file)
    print(f"mock API stopped: {json.dumps(api.stats())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
