"""Tests for examples/backfill/mock_api.py and examples/backfill/gen_input.py."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "backfill"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"backfill_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mock_api = _load("mock_api")
gen_input = _load("gen_input")


def get(url: str, token: str | None = None) -> tuple[int, dict[str, Any], Any]:
    """(status, headers, parsed body) without raising on 4xx/5xx."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), json.loads(e.read())


@pytest.fixture
def api_factory() -> Iterator[Any]:
    started: list[Any] = []

    def start(**kwargs: Any) -> Any:
        kwargs.setdefault("fail_share", 0.0)
        api = mock_api.start_server(**kwargs)
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


def ids_that_never_fail(count: int, not_found_every: int = 97) -> list[str]:
    return [str(n) for n in range(1, 10 * count) if n % not_found_every][:count]


# --- mock API ---------------------------------------------------------------------------------


def test_user_record_is_deterministic(api_factory: Any) -> None:
    api = api_factory(rate=1000, burst=10)
    status, headers, body = get(f"{api.url}/users/42")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body == mock_api.user_record("42")
    assert body["user_id"] == "42" and body["name"] == "user-42"
    assert isinstance(body["followers"], int)
    assert body["country"] in mock_api.COUNTRIES
    assert get(f"{api.url}/users/42")[2] == body


def test_burst_then_exactly_429(api_factory: Any) -> None:
    burst = 5
    # One token every 5 s: no refill can happen while 8 requests are fired back to back.
    api = api_factory(rate=0.2, burst=burst)
    results = [get(f"{api.url}/users/{uid}") for uid in ids_that_never_fail(burst + 3)]
    assert [status for status, _, _ in results] == [200] * burst + [429] * 3
    for _, headers, body in results[burst:]:
        assert headers["Retry-After"] == "1"
        assert body == {"error": "rate limited"}
    stats = api.stats()
    assert stats["requests"] == burst + 3
    assert stats["ok"] == burst
    assert stats["status_429"] == 3
    assert stats["max_requests_1s"] == burst + 3
    assert stats["max_admitted_1s"] == burst


def test_refill_after_one_over_rate(api_factory: Any) -> None:
    rate, burst = 20.0, 2
    api = api_factory(rate=rate, burst=burst)
    url = f"{api.url}/users/1"
    start = time.monotonic()
    assert [get(url)[0] for _ in range(burst)] == [200] * burst
    assert get(url)[0] == 429
    # Poll: the next token arrives 1/rate after the first request consumed the full bucket.
    while (status := get(url)[0]) == 429:
        assert time.monotonic() - start < 2.0, "bucket never refilled"
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    assert status == 200
    assert 1 / rate <= elapsed < 1 / rate + 0.5


def test_token_bucket_exact_with_fake_clock() -> None:
    now = [100.0]
    bucket = mock_api.TokenBucket(rate=50, burst=5, clock=lambda: now[0])
    assert [bucket.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.019
    assert not bucket.try_acquire()
    now[0] += 0.001  # 20 ms in all: one token
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    now[0] += 60  # refill is capped at the capacity
    assert [bucket.try_acquire() for _ in range(6)] == [True] * 5 + [False]


def test_404_for_multiples(api_factory: Any) -> None:
    api = api_factory(rate=1000, burst=50, not_found_every=7)
    assert get(f"{api.url}/users/14")[0] == 404
    assert get(f"{api.url}/users/14")[0] == 404  # always
    assert get(f"{api.url}/users/15")[0] == 200
    assert get(f"{api.url}/nothing/here")[0] == 404
    assert mock_api.is_not_found("0", 7) and not mock_api.is_not_found("1", 7)
    # Non-integer ids use a stable hash: the same answer every time, about 1 in N.
    words = [f"name-{i}" for i in range(700)]
    first = [mock_api.is_not_found(w, 7) for w in words]
    assert first == [mock_api.is_not_found(w, 7) for w in words]
    assert 50 <= sum(first) <= 150
    assert api.stats()["status_404"] == 3


def test_401_without_token(api_factory: Any) -> None:
    api = api_factory(rate=1000, burst=50, token="s3cret")
    assert get(f"{api.url}/users/1")[0] == 401
    assert get(f"{api.url}/users/1", token="wrong")[0] == 401
    assert get(f"{api.url}/users/1", token="s3cret")[0] == 200
    stats = api.stats()
    assert (stats["requests"], stats["status_401"], stats["ok"]) == (3, 2, 1)


def test_rate_limit_covers_unauthorized_requests(api_factory: Any) -> None:
    api = api_factory(rate=0.2, burst=2, token="t")
    assert [get(f"{api.url}/users/1")[0] for _ in range(3)] == [401, 401, 429]


def test_503_then_200_for_failing_share(api_factory: Any) -> None:
    share, seed = 0.3, 7
    candidates = [str(n) for n in range(1, 200) if n % 97]
    failing = [u for u in candidates if mock_api.in_failing_share(u, share, seed)]
    healthy = [u for u in candidates if not mock_api.in_failing_share(u, share, seed)]
    assert 0.15 * len(candidates) < len(failing) < 0.45 * len(candidates)
    api = api_factory(rate=1000, burst=100, fail_share=share, seed=seed)
    uid = failing[0]
    assert [get(f"{api.url}/users/{uid}")[0] for _ in range(3)] == [503, 200, 200]
    assert get(f"{api.url}/users/{healthy[0]}")[0] == 200
    # Same seed, same ids fail in a fresh server.
    again = api_factory(rate=1000, burst=100, fail_share=share, seed=seed)
    assert get(f"{again.url}/users/{uid}")[0] == 503
    stats = api.stats()
    assert (stats["requests"], stats["ok"], stats["status_503"]) == (4, 3, 1)


def test_fail_attempts(api_factory: Any) -> None:
    api = api_factory(rate=1000, burst=100, fail_share=1.0, fail_attempts=2)
    assert [get(f"{api.url}/users/5")[0] for _ in range(3)] == [503, 503, 200]


def test_stats_exact_and_not_counted(api_factory: Any) -> None:
    api = api_factory(rate=0.2, burst=4, not_found_every=97, token="t")
    empty = get(f"{api.url}/stats")[2]
    assert empty["requests"] == 0 and empty["first_request_at"] is None
    before = time.time()
    assert get(f"{api.url}/users/1", token="t")[0] == 200
    assert get(f"{api.url}/users/97", token="t")[0] == 404
    assert get(f"{api.url}/users/2")[0] == 401
    assert get(f"{api.url}/users/3", token="t")[0] == 200
    assert get(f"{api.url}/users/4", token="t")[0] == 429
    for _ in range(20):  # /stats is neither limited nor counted
        assert get(f"{api.url}/stats")[0] == 200
    stats = get(f"{api.url}/stats")[2]
    assert stats == api.stats()
    expected = {
        "requests": 5,
        "ok": 2,
        "status_429": 1,
        "status_503": 0,
        "status_404": 1,
        "status_401": 1,
        "max_requests_1s": 5,
        "max_admitted_1s": 4,
        "rate": 0.2,
        "burst": 4,
    }
    assert {k: stats[k] for k in expected} == expected
    assert before <= stats["first_request_at"] <= stats["last_request_at"] <= time.time()


def test_cli_port_file_and_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    env = {**os.environ, "API_TOKEN": "abc"}
    cmd = [sys.executable, str(EXAMPLE / "mock_api.py"), "--port", "0", "--rate", "50"]
    cmd += ["--burst", "5", "--fail-share", "0", "--token-env", "API_TOKEN"]
    cmd += ["--port-file", str(port_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server listens
        port = int(port_file.read_text())
        assert line.strip() == f"mock API listening on http://127.0.0.1:{port}"
        assert get(f"http://127.0.0.1:{port}/users/1")[0] == 401
        assert get(f"http://127.0.0.1:{port}/users/1", token="abc")[0] == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert '"requests": 2' in out
    assert not port_file.exists()


# --- gen_input --------------------------------------------------------------------------------


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_gen_input_counts_and_unique_ids(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "users.jsonl"
    assert gen_input.main(["--count", "1000", "--out", str(out), "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("wrote 1000 items")
    rows = [json.loads(line) for line in read_lines(out)]
    assert len(rows) == 1000
    ids = [row["user_id"] for row in rows]
    assert all(isinstance(uid, str) for uid in ids)
    assert sorted(int(uid) for uid in ids) == list(range(1, 1001))
    assert ids != [str(n) for n in range(1, 1001)]  # shuffled
    assert all(len(row["signup"]) == 10 for row in rows)
    # Deterministic for a seed, different for another.
    gen_input.generate(str(tmp_path / "again.jsonl"), 1000, seed=3)
    assert read_lines(tmp_path / "again.jsonl") == read_lines(out)
    gen_input.generate(str(tmp_path / "other.jsonl"), 1000, seed=4)
    assert read_lines(tmp_path / "other.jsonl") != read_lines(out)


def test_gen_input_edge_counts(tmp_path: Path) -> None:
    for count in (0, 1, 2):
        out = tmp_path / f"n{count}.jsonl"
        assert gen_input.generate(str(out), count) == count
        assert sorted(json.loads(line)["user_id"] for line in read_lines(out)) == [
            str(n) for n in range(1, count + 1)
        ]


def test_gen_input_bad_lines_at_positions(tmp_path: Path) -> None:
    out = tmp_path / "users.jsonl"
    count, bad = 100, 6
    gen_input.generate(str(out), count, seed=1, bad_lines=bad)
    lines = read_lines(out)
    assert len(lines) == count + bad
    positions = gen_input.bad_line_positions(count, bad)
    assert positions == sorted(set(positions)) and len(positions) == bad
    good_ids: list[str] = []
    for n, line in enumerate(lines):
        if n not in positions:
            good_ids.append(json.loads(line)["user_id"])
            continue
        kind = gen_input.BAD_KINDS[positions.index(n) % len(gen_input.BAD_KINDS)]
        if kind == "not_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)
        elif kind == "missing_id":
            assert "user_id" not in json.loads(line)
        else:
            assert json.loads(line)["user_id"] == json.loads(lines[n - 1])["user_id"]
    assert sorted(int(uid) for uid in good_ids) == list(range(1, count + 1))
