"""Units of observability: signature normalisation, the bounded time series, the alert rules,
ctx.http's accounting, the Prometheus text."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurmctl.backends import Backend, open_local
from slurmctl.backends.statestore import JobRecord
from slurmctl.observe import alerts, timeseries
from slurmctl.observe.alerts import AlertSettings
from slurmctl.observe.errors import Tally, hot_spots, normalise, worker_place
from slurmctl.observe.metrics import TaskObserver
from slurmctl.states import JobStatus
from slurmctl.worker.classify import classify
from slurmctl.worker.context import Metrics
from slurmctl.worker.http import HttpError, HttpSession, summarise
from tests.observe.conftest import Recorder


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("PermanentError: item 507 is broken", "PermanentError: item N is broken"),
        (
            "ConnectionRefusedError: connection refused to 10.0.1.251:8080",
            "ConnectionRefusedError: connection refused to <ip>",
        ),
        (
            "HttpError: HTTP 503 Service Unavailable from https://api.example.com/u/4411?k=1",
            "HttpError: HTTP 503 Service Unavailable from <url:api.example.com>",
        ),
        (
            "OSError: no route to [fe80::1]:443 via 2001:db8::7",
            "OSError: no route to <ip> via <ip>",
        ),
        ("KeyError: 'user_id'", "KeyError: '…'"),
        (
            "S3Error: object 3f2a1c9e-1b2c-4d5e-8f90-1234567890ab etag deadbeefcafe1234 of a@b.org",
            "S3Error: object <uuid> etag <hex> of <email>",
        ),
        ("ValueError: user_12345 at 12:30:45", "ValueError: N at N:N:N"),
        ("TimeoutError: timed out", "TimeoutError: timed out"),
    ],
)
def test_signature_normalises_ids_numbers_and_addresses(message: str, expected: str) -> None:
    assert normalise(message) == expected


def test_signatures_of_the_same_failure_are_equal() -> None:
    a = classify(ConnectionResetError("reset by 192.168.0.12 after 3012 ms")).message
    b = classify(ConnectionResetError("reset by 192.168.7.1 after 15 ms")).message
    assert normalise(a) == normalise(b) == "ConnectionResetError: reset by <ip> after N ms"


def test_hot_spots_flag_only_abnormal_shares() -> None:
    tally = Tally()
    for i in range(20):
        tally.add(f"batch-{i:06d}", 100, 40 if i == 3 else 2)
    rate = (40 + 19 * 2) / 2000
    [spot] = hot_spots(tally, rate, "batch")
    assert (spot["key"], spot["failures"], spot["items"]) == ("batch-000003", 40, 100)
    assert hot_spots(Tally({"a": 10}, {"a": 10}), 0.5, "node") == []  # one key: no comparison
    assert worker_place("4242_17@node-3") == ("node-3", "17")
    assert worker_place("local-1-0") == (None, None)


def test_buckets_cover_every_age_and_stay_bounded() -> None:
    keys = set()
    previous_end = 0
    for age in [*range(0, 3600, 5), *range(3600, 40 * 86400, 37)]:
        level, index = timeseries.bucket_of(age)
        start, width = timeseries.bucket_span(level, index)
        keys.add((level, index))
        if level < timeseries.MAX_LEVEL:
            assert start <= age < start + width, age
        assert start >= previous_end - width  # buckets never go back in time
        previous_end = max(previous_end, start + width)
    assert len(keys) == timeseries.MAX_POINTS == 224
    assert timeseries.bucket_of(-5) == (0, 0)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    b = open_local(tmp_path / "root")
    yield b
    b.close()


def _job(backend: Backend, created_at: float, **kw: Any) -> JobRecord:
    job = JobRecord("j1", JobStatus.RUNNING, created_at=created_at, updated_at=created_at, **kw)
    backend.state.create_job(job)
    return job


def test_a_month_of_commits_keeps_a_bounded_series(backend: Backend) -> None:
    """5000 commits spread over 30 days, through the real state store."""
    t0 = 1_700_000_000.0
    _job(backend, t0)
    obs = TaskObserver(backend, "j1", "w")
    metrics = {"succeeded": 95, "failed_permanent": 5, "failed_transient": 0, "wall_s": 1.0}
    for i in range(5000):
        now = t0 + i * (30 * 86400 / 5000)
        backend.state.update_job("j1", {}, counter_deltas=obs.job_deltas(metrics, now))
    counters = backend.state.counters("j1")
    series = {k: v for k, v in counters.items() if k.startswith("obs.ts.")}
    assert len(series) <= timeseries.MAX_POINTS
    assert sum(series.values()) == 5000 * 100
    points = timeseries.read_series(counters, t0)
    assert sum(p.failed for p in points) == 5000 * 5
    starts = [p.start for p in points]
    assert starts == sorted(starts) and starts[0] == t0
    assert counters["obs.tasks"] == 5000


def test_rates_and_eta(backend: Backend) -> None:
    now = 1_700_000_000.0
    job = _job(backend, now - 100)
    counters = {"obs.ts.0.5": 300, "obs.ts.0.6": 150}  # 75..105 s: the current and previous
    status = {"items": {"pending": 1000}, "phases": {"initial": {"RUNNING": 3}}}
    fig = timeseries.progress_figures(job, counters, status, now)
    assert fig["items_per_s"]["now"] == round(450 / 25, 3)  # since the previous bucket began
    assert fig["items_per_s"]["average"] == 4.5
    assert fig["eta_s"] == round(1000 / 18, 1)
    assert fig["workers_running"] == 3
    slurm = {**status, "slurm": {"workers_running": 7}}
    assert timeseries.progress_figures(job, counters, slurm, now)["workers_running"] == 7


def _status(left: int = 2, slurm: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"phases": {"initial": {"PENDING": left, "RUNNING": 0}}}
    if slurm is not None:
        out["slurm"] = slurm
    return out


def test_stalled_rule() -> None:
    s = AlertSettings(stall_minutes=10)
    job = JobRecord("j", JobStatus.RUNNING, created_at=0.0)
    assert alerts.stalled(s, job, _status(), progress_at=1000, now=1000 + 599).active is False
    fired = alerts.stalled(s, job, _status(), progress_at=1000, now=1000 + 600)
    assert fired.active and fired.message == (
        "no item completed in the last 10m00s while 2 task(s) are running or queued"
    )
    assert not alerts.stalled(s, job, _status(left=0), 0, 10_000).active  # nothing left to do
    paused = JobRecord("j", JobStatus.RUNNING, paused=True)
    assert not alerts.stalled(s, paused, _status(), 0, 10_000).active
    backoff = JobRecord("j", JobStatus.RETRYING, not_before=20_000)
    assert not alerts.stalled(s, backoff, _status(), 0, 10_000).active
    assert not alerts.stalled(AlertSettings(stall_minutes=None), job, _status(), 0, 1e6).active


def test_error_rate_rule_uses_a_sliding_window() -> None:
    s = AlertSettings(error_rate=0.2, error_window_minutes=1, error_min_items=50)
    job = JobRecord("j", JobStatus.RUNNING, created_at=0.0)
    old_failures = {"obs.ts.0.0": 100, "obs.tf.0.0": 90}  # 0..15 s: outside the last minute
    recent = {"obs.ts.0.20": 100, "obs.tf.0.20": 25}  # 300..315 s
    assert not alerts.error_rate(s, job, {**old_failures, "obs.ts.0.20": 100}, 320).active
    fired = alerts.error_rate(s, job, {**old_failures, **recent}, 320)
    assert fired.active and fired.message.startswith("25% of the items completed in the last 1m")
    few = {"obs.ts.0.20": 10, "obs.tf.0.20": 10}
    assert not alerts.error_rate(s, job, few, 320).active  # under error_min_items


def test_rate_limit_rule() -> None:
    s = AlertSettings(rate_limit_wait_share=0.9, rate_limit_min_busy_s=60, throttled_per_window=5)
    job = JobRecord("j", JobStatus.RUNNING, created_at=0.0)
    waiting = {"worker.busy_ms": 200_000, "ratelimit.wait_ms": 190_000}
    assert alerts.rate_limit(s, job, waiting, {}, 100).active
    calm = {"busy_ms": 100_000, "wait_ms": 100_000}  # since this sample: 100 s busy, 90 s wait
    assert alerts.rate_limit(s, job, waiting, calm, 100).active
    recovered = {"worker.busy_ms": 300_000, "ratelimit.wait_ms": 200_000}
    assert not alerts.rate_limit(
        s, job, recovered, {"busy_ms": 200_000, "wait_ms": 190_000}, 1
    ).active
    assert not alerts.rate_limit(s, job, {}, {}, 100).active  # no limiter counters: no opinion
    throttled = alerts.rate_limit(s, job, {"obs.ts.0.1": 9, "obs.tt.0.1": 6}, {}, 20)
    assert throttled.active and "6 throttled answers (HTTP 429)" in throttled.message


def test_infrastructure_rule_for_slurm_jobs() -> None:
    s = AlertSettings()
    job = JobRecord("j", JobStatus.RUNNING, executor="slurm")
    gone = {"workers_running": 0, "workers_queued": 0, "finalize_queued": []}
    fired = alerts.infrastructure(s, job, _status(slurm=gone), 0)
    assert fired.active and "no Slurm worker running or queued" in fired.message
    queued = {**gone, "workers_queued": 4}
    assert not alerts.infrastructure(s, job, _status(slurm=queued), 0).active
    assert not alerts.infrastructure(s, job, _status(left=0, slurm=gone), 0).active
    down = alerts.infrastructure(s, job, _status(slurm={"error": "squeue: timeout"}), 0)
    assert down.active and down.message == "cannot query Slurm: squeue: timeout"
    assert not alerts.infrastructure(s, job, _status(), 0).active  # local: no Slurm key


def test_alert_settings_are_checked() -> None:
    s = AlertSettings.from_params({"alerts": {"webhook": "${X}", "stall_minutes": 5}})
    assert s.webhook == "${X}" and s.stall_minutes == 5.0 and s.error_rate == 0.2
    with pytest.raises(Exception, match=r"unknown setting.*stall_minute.*valid: "):
        AlertSettings.from_params({"alerts": {"stall_minute": 5}})
    assert AlertSettings.from_params({"alerts": {"error_rate": None}}).error_rate is None


def test_episodes_are_claimed_once(backend: Backend, tmp_path: Path) -> None:
    """Two evaluators at once: one delivery per transition."""
    from slurmctl.config import JobDefinition

    _job(backend, time.time() - 3600)
    definition = JobDefinition.model_validate(
        {
            "job_id": "j1",
            "job_type": "t",
            "handler": "h:p",
            "input": "in.jsonl",
            "id_field": "id",
            "params": {"alerts": {"stall_minutes": 1}},
        }
    )
    backend.objects.put_json(
        "jobs/j1/definition.json",
        {"definition": definition.to_stored_dict(), "config_file": str(tmp_path / "job.yaml")},
    )
    backend.state.update_job("j1", {}, counter_deltas={"initial.tasks.PENDING": 3})
    sent: list[str] = []

    def send(url: str, text: str) -> str:
        sent.append(text)
        return "sent"

    status = {
        "job_id": "j1",
        "status": "RUNNING",
        "items": {"pending": 3},
        "phases": {"initial": {"PENDING": 3, "RUNNING": 0}},
    }
    first = alerts.evaluate(backend, "j1", status=status, send=send)
    second = alerts.evaluate(backend, "j1", status=status, send=send)
    assert [e.rule for e in first.events] == ["stalled"] and second.events == []
    assert first.events[0].webhook == "not configured" and sent == []
    backend.objects.delete("jobs/j1/alerts.json")  # a racing evaluator that saw no state
    third = alerts.evaluate(backend, "j1", status=status, send=send)
    assert third.events == [] and "stalled" in third.open


def test_http_session_counts_requests_bytes_and_latency(http_server: Recorder) -> None:
    metrics = Metrics()
    http = HttpSession(metrics)
    ok = http.get(http_server.url + "/users/7", params={"q": "1"})
    assert ok.ok and ok.json() == {"id": "7?q=1", "name": "user-7?q=1"}
    busy = http.get(http_server.url + "/users/42")
    assert busy.status == 429 and not busy.ok
    with pytest.raises(HttpError) as raised:
        busy.raise_for_status()
    assert classify(raised.value).type == "throttled"
    posted = http.post(http_server.url + "/hook", json={"a": 1})
    assert posted.ok
    with pytest.raises(OSError):
        http.get("http://127.0.0.1:9/nothing-listens-here", timeout=2)
    c = metrics.counters
    assert c["http.requests"] == 4 and c["http.errors"] == 1
    assert c["http.status.200"] == 2 and c["http.status.429"] == 1
    assert c["http.bytes_sent"] == len(json.dumps({"a": 1}))
    summary = summarise(c)
    assert summary is not None and summary["requests"] == 4
    assert summary["status"] == {"200": 2, "429": 1}
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["max"]
    assert summarise({}) is None
    http_server.bodies.clear()


def test_http_session_is_thread_safe(http_server: Recorder) -> None:
    metrics = Metrics()
    http = HttpSession(metrics)
    threads = [
        threading.Thread(target=lambda: [http.get(http_server.url + "/users/1") for _ in range(20)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.counters["http.requests"] == 80
