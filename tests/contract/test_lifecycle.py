"""The job lifecycle's transitions (slurmctl/lifecycle.py) on every state store: each one is
conditional on the status it expects, sets `updated_at`, writes its history entry once, and says
whether it applied."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from slurmctl import lifecycle
from slurmctl.backends import Backend
from slurmctl.backends.statestore import ITEMS_PENDING, Bucket, JobRecord, task_counter
from slurmctl.jobs import BREAKER_PREFIX, read_history
from slurmctl.states import JobStatus

STALE = 1.0  # an `updated_at` long past: every transition that applies must move it


def _job(backend: Backend, status: JobStatus, **fields: Any) -> JobRecord:
    assert backend.state.create_job(
        JobRecord(job_id="j", status=status, updated_at=STALE, submitted=True, **fields)
    )
    return _get(backend)


def _get(backend: Backend) -> JobRecord:
    job = backend.state.get_job("j")
    assert job is not None
    return job


def _actions(backend: Backend) -> list[str]:
    return [h["action"] for h in read_history(backend, "j")]


TRANSITIONS: dict[str, tuple[JobStatus, Callable[[Backend], bool], JobStatus]] = {
    "start_run": (
        JobStatus.PENDING,
        lambda b: lifecycle.start_run(b, "j", 1, from_status=JobStatus.PENDING),
        JobStatus.RUNNING,
    ),
    "reopen": (
        JobStatus.FAILED,
        lambda b: lifecycle.reopen(b, "j", from_status=JobStatus.FAILED),
        JobStatus.RUNNING,
    ),
    "begin_retry_phase": (
        JobStatus.RUNNING,
        lambda b: lifecycle.begin_retry_phase(
            b, "j", from_phase="initial", new_phase="retry_1", not_before=5.0, counter_deltas={}
        ),
        JobStatus.RETRYING,
    ),
    "begin_aggregation": (
        JobStatus.RETRYING,
        lambda b: lifecycle.begin_aggregation(b, "j"),
        JobStatus.AGGREGATING,
    ),
    "complete": (
        JobStatus.AGGREGATING,
        lambda b: lifecycle.complete(b, "j", rows=3, output="out.parquet"),
        JobStatus.COMPLETED,
    ),
    "fail": (JobStatus.RUNNING, lambda b: lifecycle.fail(b, "j", "boom"), JobStatus.FAILED),
    "cancel": (JobStatus.RUNNING, lambda b: lifecycle.cancel(b, "j"), JobStatus.CANCELLED),
}


@pytest.mark.parametrize("name", list(TRANSITIONS))
def test_every_transition_sets_its_status_and_updated_at(backend: Backend, name: str) -> None:
    before, apply, after = TRANSITIONS[name]
    _job(backend, before)
    assert apply(backend) is True
    job = _get(backend)
    assert job.status == after
    assert job.updated_at > STALE


@pytest.mark.parametrize("name", ["pause", "lift_pause"])
def test_pause_and_lift_set_updated_at(backend: Backend, name: str) -> None:
    _job(backend, JobStatus.RUNNING, paused=name == "lift_pause")
    if name == "pause":
        assert lifecycle.pause(backend, "j")
    else:
        assert lifecycle.lift_pause(backend, "j", _get(backend)) == "pause"
    job = _get(backend)
    assert job.paused is (name == "pause") and job.status == JobStatus.RUNNING
    assert job.updated_at > STALE


def test_fail_keeps_the_first_reason(backend: Backend) -> None:
    _job(backend, JobStatus.RUNNING)
    assert lifecycle.fail(backend, "j", "first")
    assert not lifecycle.fail(backend, "j", "second")
    job = _get(backend)
    assert (job.status, job.error) == (JobStatus.FAILED, "first")
    assert [h.get("reason") for h in read_history(backend, "j")] == ["first"]


@pytest.mark.parametrize("terminal", [JobStatus.COMPLETED, JobStatus.CANCELLED])
def test_finished_jobs_keep_their_status(backend: Backend, terminal: JobStatus) -> None:
    _job(backend, terminal)
    assert not lifecycle.fail(backend, "j", "late")
    assert not lifecycle.cancel(backend, "j")
    assert not lifecycle.begin_aggregation(backend, "j")
    job = _get(backend)
    assert (job.status, job.error, job.updated_at) == (terminal, None, STALE)
    assert _actions(backend) == []


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.FAILED])
def test_complete_only_from_aggregating(backend: Backend, status: JobStatus) -> None:
    _job(backend, status)
    assert not lifecycle.complete(backend, "j", rows=3, output="out.parquet")
    assert _get(backend).status == status
    assert _actions(backend) == []


def test_complete_records_its_history(backend: Backend) -> None:
    _job(backend, JobStatus.RUNNING)
    assert lifecycle.begin_aggregation(backend, "j")
    assert lifecycle.begin_aggregation(backend, "j")  # again after a finalize killed mid-merge
    assert lifecycle.complete(backend, "j", rows=3, output="out.parquet")
    assert not lifecycle.complete(backend, "j", rows=3, output="out.parquet")
    [entry] = read_history(backend, "j")
    assert (entry["action"], entry["rows"], entry["output"]) == ("completed", 3, "out.parquet")


def test_start_run_and_reopen_are_conditional_on_the_status_read(backend: Backend) -> None:
    _job(backend, JobStatus.FAILED, error="handler cannot be imported")
    # a worker failed the job while the executor started the run: the failure stands
    assert not lifecycle.start_run(backend, "j", 1, from_status=JobStatus.PENDING)
    assert not lifecycle.reopen(backend, "j", from_status=JobStatus.CANCELLED)
    job = _get(backend)
    assert (job.status, job.run, job.updated_at) == (JobStatus.FAILED, 0, STALE)
    assert lifecycle.reopen(
        backend, "j", from_status=JobStatus.FAILED, to=JobStatus.AGGREGATING, clear_backoff=True
    )
    job = _get(backend)
    assert (job.status, job.error, job.not_before) == (JobStatus.AGGREGATING, None, 0.0)


def test_begin_retry_phase_happens_once_with_its_counters(backend: Backend) -> None:
    _job(backend, JobStatus.RUNNING)
    deltas = {task_counter("retry_1", "PENDING"): 2, ITEMS_PENDING: 7}

    def start() -> bool:
        return lifecycle.begin_retry_phase(
            backend,
            "j",
            from_phase="initial",
            new_phase="retry_1",
            not_before=42.0,
            counter_deltas=deltas,
        )

    assert start()
    assert not start()  # a second finalizer racing: the phase has moved on
    job = _get(backend)
    assert (job.status, job.phase, job.not_before) == (JobStatus.RETRYING, "retry_1", 42.0)
    counters = backend.state.counters("j")
    assert counters[task_counter("retry_1", "PENDING")] == 2 and counters[ITEMS_PENDING] == 7


def test_pause_and_lift_are_idempotent(backend: Backend) -> None:
    _job(backend, JobStatus.RUNNING)
    backend.state.put_bucket(Bucket("j", "api", 10.0, 1))
    seen = _get(backend)
    assert lifecycle.pause(backend, "j", by="operator")
    assert not lifecycle.pause(backend, "j", by="operator")
    bucket = backend.state.get_bucket("j", "api")
    assert bucket is not None and bucket.paused
    paused = _get(backend)
    assert lifecycle.lift_pause(backend, "j", seen) is None  # read before the pause: not paused
    assert lifecycle.lift_pause(backend, "j", paused) == "pause"
    assert lifecycle.lift_pause(backend, "j", paused) is None  # another resume lifted it first
    bucket = backend.state.get_bucket("j", "api")
    assert bucket is not None and not bucket.paused
    assert not _get(backend).paused
    assert _actions(backend) == ["pause", "resume"]


def test_a_breaker_pause_is_lifted_with_its_reason(backend: Backend) -> None:
    _job(backend, JobStatus.RUNNING)
    reason = BREAKER_PREFIX + "9 of 10 requests failed"
    assert lifecycle.pause(backend, "j", reason=reason, by="breaker")
    job = _get(backend)
    assert (job.paused, job.error, job.status) == (True, reason, JobStatus.RUNNING)
    assert lifecycle.lift_pause(backend, "j", job) == "breaker"
    job = _get(backend)
    assert (job.paused, job.error) == (False, None)
    history = read_history(backend, "j")
    assert [(h["action"], h.get("by"), h.get("lifted")) for h in history] == [
        ("pause", "breaker", None),
        ("resume", None, "breaker"),
    ]


def test_cancel_then_record_cancel(backend: Backend) -> None:
    _job(backend, JobStatus.RETRYING)
    assert lifecycle.cancel(backend, "j")
    assert not lifecycle.cancel(backend, "j")
    lifecycle.record_cancel(backend, "j", ["123", "124"])
    assert _get(backend).status == JobStatus.CANCELLED
    assert [(h["action"], h["slurm_job_ids"]) for h in read_history(backend, "j")] == [
        ("cancel", ["123", "124"])
    ]
