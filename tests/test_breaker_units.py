"""The breaker's job-wide window over real stores (embedded, and DynamoDB + S3 on a moto server):
two workers' Breakers, neither of whose own window fills, trip the job together; a healthy,
mixed, throttled or disabled one never trips."""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from slurmctl.backends import Backend
from slurmctl.backends.statestore import JobRecord
from slurmctl.jobs import read_history
from slurmctl.states import JobStatus
from slurmctl.worker.breaker import Breaker, reset_breaker
from tests.contract.conftest import BACKENDS, make_backend
from tests.moto_server import moto_endpoint, moto_server  # noqa: F401  (session fixtures)


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    window: int = 200
    share: float = 0.9


def _http(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://api/item", code, "down", Message(), None)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    endpoint = request.getfixturevalue("moto_endpoint") if request.param == "aws" else None
    b = make_backend(request.param, tmp_path, endpoint)
    b.state.create_job(JobRecord(job_id="j", status=JobStatus.RUNNING, workers=2))
    yield b
    b.close()


def _breaker_counters(backend: Backend) -> dict[str, int]:
    return {k: v for k, v in backend.state.counters("j").items() if k.startswith("breaker.")}


def test_two_workers_trip_the_job_wide_window_together(backend: Backend) -> None:
    a, b = (Breaker(backend, "j", Settings(), workers=2) for _ in range(2))
    for _ in range(150):  # 300 failures job-wide, 150 each: neither window of 200 fills
        a.failed("server", _http(503))
        b.failed("server", _http(503))
        if a.tripped or b.tripped:
            break
    tripper = a if a.reason else b
    assert tripper.tripped and tripper.reason is not None
    job = backend.state.get_job("j")
    assert job is not None and job.paused and job.error == tripper.reason
    n = int(tripper.reason.split(" of the last ")[1].split()[0])
    assert 200 <= n <= 250, tripper.reason
    assert tripper.reason == (
        f"paused by the breaker: {n} of the last {n} items failed: server: HTTPError 503"
    )
    other = b if tripper is a else a
    for _ in range(5):  # the other worker learns of it at its next read
        time.sleep(0.03)
        other.failed("server", _http(503))
    assert other.tripped and other.reason is None, "only one worker pauses the job"
    pauses = [h for h in read_history(backend, "j") if h["action"] == "pause"]
    assert [(h["by"], h["reason"]) for h in pauses] == [("breaker", tripper.reason)]
    assert backend.state.counters("j")["breaker.trips"] == 1

    reset_breaker(backend, "j")
    assert {k: v for k, v in _breaker_counters(backend).items() if v} == {"breaker.trips": 1}


def test_a_single_worker_trips_on_its_own_full_window(backend: Backend) -> None:
    w = Breaker(backend, "j", Settings(window=50), workers=1)
    for i in range(50):
        w.ok() if i < 4 else w.failed("not_found", _http(404))
    assert w.tripped
    assert (
        w.reason
        == "paused by the breaker: 46 of the last 50 items failed: not_found: HTTPError 404"
    )


def test_healthy_mixed_and_throttled_jobs_never_trip(backend: Backend) -> None:
    healthy = Breaker(backend, "j", Settings(), workers=1)
    for i in range(5000):  # 1% failures: nothing suspicious, nothing written
        healthy.failed("server", _http(503)) if i % 100 == 50 else healthy.ok()
    assert not healthy.tripped and _breaker_counters(backend) == {}

    mixed = Breaker(backend, "j", Settings(), workers=1)
    for i in range(1000):  # every item fails, but no one type reaches 90%
        mixed.failed("server" if i % 2 else "not_found", _http(503 if i % 2 else 404))
    assert not mixed.tripped

    throttled = Breaker(backend, "j", Settings(), workers=1)
    for _ in range(1000):  # the rate limiter's business
        throttled.failed("throttled", _http(429))
    assert not throttled.tripped
    job = backend.state.get_job("j")
    assert job is not None and not job.paused


def test_a_disabled_breaker_never_trips(backend: Backend) -> None:
    off = Breaker(backend, "j", Settings(enabled=False), workers=1)
    for _ in range(1000):
        off.failed("server", _http(503))
    assert not off.tripped and _breaker_counters(backend) == {}
