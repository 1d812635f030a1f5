"""The limiter's parts, one by one: Retry-After parsing, the allocation clock, the handler's
`ctx`, the worker-side limiter against a real store, buckets written by an older slurmctl."""

from __future__ import annotations

import email.utils
import io
import logging
import sqlite3
import threading
import time
import urllib.error
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from slurmctl.backends import open_local
from slurmctl.backends.local.statestore import SQLiteStateStore
from slurmctl.backends.statestore import Bucket
from slurmctl.errors import TransientError, UserError
from slurmctl.ratelimit import gcra
from slurmctl.ratelimit.allocation import AllocationClock, parse_end_time
from slurmctl.ratelimit.signals import parse_retry_after, retry_after_of
from slurmctl.worker.context import Context
from slurmctl.worker.limiter import DistributedRateLimiter, WorkerStopping


def _http_error(code: int, headers: dict[str, str]) -> urllib.error.HTTPError:
    msg = Message()
    for k, v in headers.items():
        msg[k] = v
    return urllib.error.HTTPError("http://x/", code, "no", msg, io.BytesIO(b""))


# --- Retry-After ------------------------------------------------------------------------------
def test_retry_after_from_every_kind_of_exception() -> None:
    assert retry_after_of(_http_error(429, {"Retry-After": "3"})) == 3.0
    assert retry_after_of(_http_error(429, {})) is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert retry_after_of(_http_error(503, {"retry-after": date}), now=1_000_000.0) == 30.0

    class Response:  # requests / httpx
        headers = {"retry-after": "1.5"}

    class RequestsError(Exception):
        response = Response()

    assert retry_after_of(RequestsError()) == 1.5

    class ClientError(Exception):  # botocore: a dict response
        response: dict[str, Any] = {"ResponseMetadata": {"HTTPHeaders": {"retry-after": "2"}}}

    assert retry_after_of(ClientError()) == 2.0

    class Mine(TransientError):
        retry_after = 7

    assert retry_after_of(Mine("slow down")) == 7.0
    try:  # the Retry-After of a cause, through a handler's own wrapping
        try:
            raise _http_error(429, {"Retry-After": "4"})
        except urllib.error.HTTPError as e:
            raise TransientError("throttled") from e
    except TransientError as wrapped:
        assert retry_after_of(wrapped) == 4.0
    assert parse_retry_after("soon") is None and parse_retry_after(-3) == 0.0
    assert parse_retry_after(True) is None


# --- the allocation clock ---------------------------------------------------------------------
def test_allocation_clock_env_then_squeue_cached() -> None:
    now = [1000.0]
    asked: list[str] = []

    def squeue(job_id: str) -> float | None:
        asked.append(job_id)
        return 1100.0

    clock = AllocationClock({"SLURM_JOB_END_TIME": "1500"}, squeue, lambda: now[0])
    assert clock.seconds_left() == 500.0 and not clock.near_end() and asked == []
    assert clock.near_end(margin_s=600)
    clock = AllocationClock({"SLURM_JOB_ID": "42"}, squeue, lambda: now[0])
    assert clock.near_end() and clock.seconds_left() == 100.0
    now[0] += 3600
    assert clock.seconds_left() == 100.0 - 3600
    assert asked == ["42"] and clock.squeue_calls == 1  # asked once per worker, never again
    unanswered = AllocationClock({"SLURM_JOB_ID": "43"}, lambda j: asked.append(j), lambda: 0.0)
    assert unanswered.seconds_left() is None and unanswered.seconds_left() is None
    assert asked == ["42", "43"]
    assert AllocationClock({}, squeue, lambda: now[0]).seconds_left() is None
    assert parse_end_time("N/A") is None and parse_end_time("Unknown") is None
    assert parse_end_time("2026-11-28T20:15:00") is not None


# --- the handler's ctx ------------------------------------------------------------------------
def test_ctx_reports_throttling_and_accounts_waits() -> None:
    reports: list[tuple[float | None, str | None]] = []
    ctx = Context(
        {},
        lambda n, bucket: 0.25 * n,
        logging.getLogger("t"),
        throttled=lambda ra, bucket: reports.append((ra, bucket)),
    )
    ctx.task_id = "task-000001"
    ctx.acquire(2, bucket="search")
    ctx.acquire()
    assert ctx.waited_s == 0.75
    ctx.throttled()  # the bucket last acquired from
    ctx.note_error("server", RuntimeError("503"))  # not a throttle: nothing
    ctx.note_error("throttled", _http_error(429, {"Retry-After": "2"}))
    assert reports == [(None, None), (2.0, None)]
    ctx.throttled(bucket="search")
    assert reports[-1] == (None, "search")
    with pytest.raises(UserError):
        ctx.throttled(retry_after=-1)
    snap = ctx.metrics.snapshot()["ratelimit"]
    assert snap["wait_s"] == 0.75 and snap["wait_s_by_bucket"] == {"search": 0.5, "default": 0.25}
    usage = ctx.take_usage()
    assert usage.total_wait_s == 0.75 and usage.busy_s >= 0 and ctx.waited_s == 0.0

    def broken(ra: float | None, bucket: str | None) -> None:
        raise OSError("store down")

    quiet = Context({}, lambda n, b: 0.0, logging.getLogger("t"), throttled=broken)
    quiet.note_error("throttled", _http_error(429, {}))  # logged, never raised


# --- the worker-side limiter against the embedded store ---------------------------------------
def _store(tmp_path: Path, rate: float, burst: int = 3) -> SQLiteStateStore:
    state = SQLiteStateStore(tmp_path / "state.sqlite")
    state.put_bucket(Bucket("j", "default", rate=rate, burst=burst))
    return state


def test_limiter_follows_set_rate_and_throttle(tmp_path: Path) -> None:
    state = _store(tmp_path, rate=100.0, burst=3)
    lim = DistributedRateLimiter("j", 100.0, state, active_workers=1)
    lim.acquire()
    assert lim.rate == 100.0 and lim._lease_size() == 25
    state.set_bucket_rate("j", "default", 400.0)
    lim.release_unused_tokens()
    lim.acquire()
    assert lim.configured == 400.0 and lim._lease_size() == 100  # the next lease follows
    b = lim.throttled()
    assert b is not None and lim.rate == 200.0 and not lim._slots  # own slots given back
    assert lim.throttled() is None  # reported a moment ago: not again
    lim.acquire()
    assert lim._lease_size() == 50 and lim.writes >= 4


def test_limiter_far_slot_sees_pause_and_stops(tmp_path: Path) -> None:
    """A low rate shared by many: a slot seconds ahead is not slept through a pause."""
    state = _store(tmp_path, rate=0.5)
    lim = DistributedRateLimiter("j", 0.5, state, active_workers=8)
    stop = threading.Event()
    lim.should_stop = stop.is_set
    paused_calls: list[float] = []
    lim.on_paused = lambda: paused_calls.append(time.time())
    lim.acquire()  # now
    state.reserve_slots("j", "default", 2, time.time())  # other workers: ours is 6 s ahead
    out: list[BaseException] = []

    def second() -> None:
        try:
            lim.acquire()
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            out.append(e)

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.1)
    state.set_buckets_paused("j", True)
    paused = time.time()
    deadline = time.time() + 5
    while not paused_calls and time.time() < deadline:
        time.sleep(0.02)
    assert paused_calls and paused_calls[0] - paused < 1.0  # noticed within a second
    stop.set()
    t.join(timeout=5)
    assert out and isinstance(out[0], WorkerStopping)
    assert lim.paused_s > 0


def test_limiter_waits_out_a_hold(tmp_path: Path) -> None:
    state = _store(tmp_path, rate=50.0, burst=1)
    lim = DistributedRateLimiter("j", 50.0, state)
    lim.throttled(retry_after=0.4)
    t0 = time.time()
    waited = lim.acquire()
    assert time.time() - t0 >= 0.35 and waited >= 0.35 and 25.0 <= lim.rate < 27.0


# --- buckets written by an older slurmctl -----------------------------------------------------
def test_sqlite_buckets_of_an_older_state_root(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE buckets (job_id, name, rate REAL, burst INTEGER, tat REAL, "
            "paused INTEGER, PRIMARY KEY (job_id, name)) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO buckets VALUES ('j', 'default', 10.0, 1, 0.0, 0)")
    state = SQLiteStateStore(path)
    assert state.get_bucket("j", "default") == Bucket("j", "default", 10.0, 1)
    assert state.reserve_slots("j", "default", 1, now=5.0).times == (5.0,)
    b = state.throttle_bucket("j", "default", now=5.0)
    assert b is not None and b.effective == 5.0


def test_dynamodb_bucket_of_an_older_slurmctl(moto_endpoint: str) -> None:
    from tests.aws.conftest import make_aws

    aws = make_aws(moto_endpoint)
    try:
        aws.ddb.put_item(
            TableName=aws.name,
            Item={
                "pk": {"S": "RATE#j#default"},
                "sk": {"S": "B"},
                "name": {"S": "default"},
                "rate": {"N": "10.0"},
                "burst": {"N": "3"},
                "tat": {"N": "0.0"},
                "paused": {"BOOL": False},
            },
        )
        state = aws.backend.state
        assert state.get_bucket("j", "default") == Bucket("j", "default", 10.0, 3)
        assert state.reserve_slots("j", "default", 2, now=5.0).times == (5.0, 5.1)
        b = state.throttle_bucket("j", "default", now=5.0, retry_after=1)
        assert b is not None and (b.effective, b.hold_until) == (5.0, 6.0)
        assert state.reserve_slots("j", "default", 1, now=5.5).hold_until == 6.0
        assert state.reserve_slots("j", "default", 1, now=6.0).rate == 5.0 + 0.5
    finally:
        aws.backend.close()


def test_set_rate_refuses_what_cannot_be(tmp_path: Path) -> None:
    from tests.helpers import cli, make_job

    config = make_job(tmp_path / "job", 10, extra="rate_limit: {tokens_per_sec: 5}\n")
    from slurmctl.config import load_job_definition
    from slurmctl.coordinator.submit import submit

    backend = open_local(tmp_path / "root")
    submit(backend, load_job_definition(config))
    bad = cli(tmp_path / "root", "set-rate", "t1", "--bucket", "search", "--rate", "3")
    assert bad.returncode == 2 and "no rate-limit bucket 'search' (buckets: default)" in bad.stderr
    bad = cli(tmp_path / "root", "set-rate", "t1", "--rate", "0")
    assert bad.returncode == 2 and "--rate" in bad.stderr
    ok = cli(tmp_path / "root", "set-rate", "t1", "--rate", "7.5", "--burst", "2")
    assert ok.returncode == 0 and "now 7.5/s burst 2 (was 5/s burst 3)" in ok.stdout
    b = backend.state.get_bucket("t1", "default")
    assert b is not None and (b.rate, b.burst) == (7.5, 2)
    assert gcra.effective_rate(b.rate, b.backoff, time.time()) == 7.5


def test_dynamodb_busy_bucket_reserves_in_one_write(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes reserving on a busy bucket: one UpdateItem each, no read, no conflict, and
    the same slots as one process reserving in that order."""
    from tests.aws.conftest import make_aws

    a = make_aws(moto_endpoint)
    try:
        from slurmctl.backends.aws import open_aws

        b_backend = open_aws(a.name, a.name, region="us-east-1", endpoint_url=moto_endpoint)
        sa, sb = a.backend.state, b_backend.state
        sa.put_bucket(Bucket("j", "default", rate=10.0, burst=4))
        now = 1000.0
        first = sa.reserve_slots("j", "default", 4, now)  # not busy yet: read + write
        sb.reserve_slots("j", "default", 1, now)  # b learns the settings
        calls: list[str] = []
        for store in (sa, sb):
            real = store.t.call  # type: ignore[attr-defined]

            def counted(op: str, _real: Any = real, **kw: Any) -> Any:
                calls.append(op)
                return _real(op, **kw)

            monkeypatch.setattr(store.t, "call", counted)  # type: ignore[attr-defined]
        grants = [s.reserve_slots("j", "default", 2, now) for s in (sa, sb, sa, sb)]
        assert calls == ["update_item"] * 4 and all(g.writes == 1 for g in grants)
        got = [round(t, 6) for g in grants for t in g.times]
        # the same schedule as one store would give: tau 0.1 s, then one slot every 0.1 s
        assert [round(t, 6) for t in first.times] == [1000.0, 1000.0, 1000.1, 1000.2]
        assert got == [round(1000.4 + 0.1 * k, 6) for k in range(8)]  # b had 1000.3
        # the TAT written by the addition still releases and reserves exactly
        assert sb.release_slots("j", "default", grants[-1].tat, grants[-1].tat - 0.1)
        again = sa.reserve_slots("j", "default", 1, now)
        assert [round(t, 6) for t in again.times] == [1001.1]  # the slot given back
        b_backend.close()
    finally:
        a.backend.close()
