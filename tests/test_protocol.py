"""The task protocol's pure transitions (slurmctl/backends/protocol.py), without any store.

The contract suite (tests/contract/) checks that both stores apply these writes atomically; here
each transition is checked for what it decides from the record it is given."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from slurmctl.backends import protocol
from slurmctl.backends.protocol import (
    ABSENT,
    PRESENT,
    Ref,
    Write,
    all_of,
    any_of,
    eq,
    holds,
    le,
    lt,
)
from slurmctl.backends.statestore import (
    ITEMS_FAILED_PERMANENT,
    ITEMS_PENDING,
    ITEMS_SUCCEEDED,
    OUTPUT_ROWS,
    WORKERS_LOST,
    JobRecord,
    TaskCommit,
    TaskRecord,
    task_counter,
)
from slurmctl.states import JobStatus, TaskStatus

RUNNING, PENDING = TaskStatus.RUNNING, TaskStatus.PENDING


def _task(**kw: Any) -> TaskRecord:
    base = TaskRecord("j", "t1", "b1", "retry_1", "g", 10, "k", "s" * 64)
    return dataclasses.replace(base, **kw)


def _running(token: str = "tok", expires: float | None = 110.0, **kw: object) -> TaskRecord:
    return _task(
        status=RUNNING, lease_token=token, worker_id="w0", lease_expires=expires, attempts=1, **kw
    )


def _result(succeeded: int = 7, failed: int = 3, rows: int = 7) -> TaskCommit:
    return TaskCommit("out", "o" * 64, rows, "err", "e" * 64, succeeded, failed, 0, 5.0)


def _view(rec: TaskRecord) -> dict[str, object]:
    return dataclasses.asdict(rec)


# --- conditions ---------------------------------------------------------------------------------
def test_conditions_on_present_and_absent_records() -> None:
    rec = {"status": "RUNNING", "lease_token": None, "lease_expires": 10.0}
    assert holds(ABSENT, None) and not holds(ABSENT, rec)
    assert holds(PRESENT, rec) and not holds(PRESENT, None)
    assert holds(eq("status", RUNNING), rec)  # a StrEnum equals its stored string
    assert holds(eq("lease_token", None), rec)
    assert not holds(eq("lease_token", None), None)  # unset on a record that is not there: no
    assert holds(eq("missing_field", None), rec)
    assert holds(lt("lease_expires", 10.5), rec) and not holds(lt("lease_expires", 10.0), rec)
    assert holds(le("lease_expires", 10.0), rec) and not holds(le("lease_expires", 9.9), rec)
    assert not holds(lt("lease_token", 5), rec)  # an unset field is never below anything
    assert holds(all_of(PRESENT, eq("status", "RUNNING")), rec)
    assert not holds(all_of(PRESENT, eq("status", "PENDING")), rec)
    assert holds(any_of(ABSENT, eq("status", "PENDING")), None)
    assert not holds(any_of(ABSENT, eq("status", "PENDING")), rec)
    assert all_of(PRESENT) is PRESENT and any_of(ABSENT) is ABSENT


# --- claim --------------------------------------------------------------------------------------
def test_claim_of_a_pending_task_moves_it_to_running() -> None:
    rec = _task()
    step = protocol.claim(rec, "w1", "tok", 30.0, now=100.0)
    assert step is not None
    w, new = step
    assert w.ref == Ref("task", "j", "t1")
    assert new.status == RUNNING and new.lease_token == "tok" and new.worker_id == "w1"
    assert new.lease_expires == 130.0 and new.attempts == 1 and new.worker_losses == 0
    assert new.start_time == 100.0
    assert w.deltas == {task_counter("retry_1", PENDING): -1, task_counter("retry_1", RUNNING): 1}
    # the condition pins what was read, and holds on it but not on a record claimed meanwhile
    assert w.cond == all_of(eq("status", PENDING), eq("attempts", 0), eq("lease_token", None))
    assert holds(w.cond, _view(rec))
    assert not holds(w.cond, _view(new))
    assert {k: getattr(new, k) for k in w.sets} == dict(w.sets)


def test_claim_refuses_a_live_lease_and_finished_tasks() -> None:
    assert protocol.claim(None, "w", "t", 30, now=1.0) is None
    assert protocol.claim(_running(expires=110.0), "w", "t", 30, now=109.0) is None
    assert protocol.claim(_running(expires=110.0), "w", "t", 30, now=110.0) is None  # not yet past
    for status in (TaskStatus.SUCCESS, TaskStatus.FAILED):
        assert protocol.claim(_task(status=status), "w", "t", 30, now=1e9) is None


def test_takeover_of_a_lapsed_lease_counts_a_worker_loss_and_moves_no_counter() -> None:
    rec = _running(expires=110.0, start_time=80.0)
    step = protocol.claim(rec, "w2", "new", 30.0, now=110.5)
    assert step is not None
    w, new = step
    assert new.worker_losses == 1 and new.attempts == 2 and new.lease_token == "new"
    assert new.start_time == 80.0  # the task's first start is kept
    assert w.deltas == {}  # RUNNING stays RUNNING
    assert w.cond == all_of(
        eq("status", RUNNING),
        eq("attempts", 1),
        eq("lease_token", "tok"),
        lt("lease_expires", 110.5),
    )
    # a heartbeat of the old holder in between (expiry moved on) makes the takeover fail
    assert not holds(w.cond, {**_view(rec), "lease_expires": 140.0})


def test_takeover_of_a_running_task_without_expiry_pins_the_missing_expiry() -> None:
    step = protocol.claim(_running(expires=None), "w2", "new", 30.0, now=1.0)
    assert step is not None
    assert step[0].cond.parts[-1] == eq("lease_expires", None)
    assert step[1].worker_losses == 1


# --- fenced transitions -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "transition",
    [
        lambda rec: protocol.release(rec, "tok"),
        lambda rec: protocol.commit(rec, "tok", _result()),
        lambda rec: protocol.fail(rec, "tok", "bad batch", 5.0),
    ],
    ids=["release", "commit", "fail"],
)
def test_fenced_transitions_need_the_lease(
    transition: Callable[[TaskRecord | None], Write | None],
) -> None:
    assert transition(None) is None
    assert transition(_running(token="other")) is None
    assert transition(_task()) is None  # PENDING: nobody holds it
    assert transition(_task(status=TaskStatus.SUCCESS, lease_token="tok")) is None
    w = transition(_running())
    assert w is not None and w.cond == all_of(eq("status", RUNNING), eq("lease_token", "tok"))


def test_release_returns_the_task_to_pending_with_its_checkpoint() -> None:
    w = protocol.release(_running(), "tok", "ck", "c" * 64)
    assert w is not None
    assert w.sets == {
        "status": PENDING,
        "lease_token": None,
        "lease_expires": None,
        "worker_id": None,
        "checkpoint_key": "ck",
        "checkpoint_sha256": "c" * 64,
    }
    assert w.deltas == {task_counter("retry_1", RUNNING): -1, task_counter("retry_1", PENDING): 1}
    plain = protocol.release(_running(), "tok")
    assert plain is not None and "checkpoint_key" not in plain.sets


def test_commit_moves_item_counters_by_what_the_attempt_did() -> None:
    w = protocol.commit(_running(), "tok", _result(succeeded=7, failed=3, rows=7))
    assert w is not None
    assert w.sets["status"] == TaskStatus.SUCCESS and w.sets["output_rows"] == 7
    assert w.sets["lease_expires"] is None and "lease_token" not in w.sets  # the token stays
    assert w.deltas == {
        task_counter("retry_1", RUNNING): -1,
        task_counter("retry_1", TaskStatus.SUCCESS): 1,
        ITEMS_PENDING: -10,
        ITEMS_SUCCEEDED: 7,
        ITEMS_FAILED_PERMANENT: 3,
        OUTPUT_ROWS: 7,
    }  # zero deltas (failed_transient) are left out


def test_fail_and_heartbeat() -> None:
    w = protocol.fail(_running(), "tok", "bad batch", 5.0)
    assert w is not None
    assert w.sets == {
        "status": TaskStatus.FAILED,
        "lease_expires": None,
        "error": "bad batch",
        "end_time": 5.0,
    }
    assert w.deltas == {
        task_counter("retry_1", RUNNING): -1,
        task_counter("retry_1", TaskStatus.FAILED): 1,
    }
    hb = protocol.heartbeat("j", "t1", "tok", 30.0, now=100.0)
    assert hb.sets == {"lease_expires": 130.0} and hb.deltas == {}
    assert holds(hb.cond, _view(_running())) and not holds(hb.cond, _view(_running("other")))


# --- resolving a lost answer ----------------------------------------------------------------------
def test_applied_recognises_our_own_write_only() -> None:
    rec = _running()
    w = protocol.commit(rec, "tok", _result())
    assert w is not None
    after = {**_view(rec), **w.sets}
    assert protocol.applied(w, after)
    assert not protocol.applied(w, _view(rec))  # not applied yet
    # a later holder committed the same outputs: its token differs, so it is not our commit
    assert not protocol.applied(w, {**after, "lease_token": "other"})
    assert not protocol.applied(w, None)
    gone = protocol.release_job_lease("j", "me")
    assert protocol.applied(gone, None) and not protocol.applied(gone, {"holder": "me"})
    assert not protocol.applied(protocol.update_job("j", {}, counter_deltas={"x": 1}), {"x": 1})


# --- jobs and the job lease ---------------------------------------------------------------------
def test_job_writes() -> None:
    job = JobRecord(job_id="j", status=JobStatus.PENDING, workers=3)
    create = protocol.create_job(job)
    assert create.cond == ABSENT and create.sets["workers"] == 3 and create.ref == Ref("job", "j")
    w = protocol.update_job(
        "j", {"status": JobStatus.RUNNING}, {"submitted": False}, {"a": 2, "b": 0}
    )
    assert w.cond == all_of(PRESENT, eq("submitted", False)) and w.deltas == {"a": 2}
    assert protocol.update_job("j", {}, {"paused": False}).is_check
    assert not protocol.update_job("j", {}, counter_deltas={"a": 1}).is_check
    with pytest.raises(ValueError, match=r"unknown job fields \['nope', 'zzz'\]"):
        protocol.update_job("j", {"zzz": 1}, {"nope": 2})
    with pytest.raises(ValueError, match="a job's id cannot change"):
        protocol.update_job("j", {"job_id": "k"})


def test_job_lease_is_free_ours_or_lapsed() -> None:
    w = protocol.acquire_job_lease("j", "me", 30.0, now=100.0)
    assert w.sets == {"holder": "me", "expires": 130.0} and w.ref == Ref("lease", "j")
    assert holds(w.cond, None)
    assert holds(w.cond, {"holder": "me", "expires": 500.0})  # renewal
    assert holds(w.cond, {"holder": "other", "expires": 100.0})  # lapsed at its expiry
    assert not holds(w.cond, {"holder": "other", "expires": 100.5})
    release = protocol.release_job_lease("j", "me")
    assert release.delete and not release.is_check
    assert not holds(release.cond, {"holder": "other", "expires": 1.0})


def test_release_dead_frees_the_lease_and_counts_a_loss() -> None:
    assert protocol.release_dead(_running(token="other"), "tok") is None
    assert protocol.release_dead(_task(status=TaskStatus.SUCCESS, lease_token="tok"), "tok") is None
    w = protocol.release_dead(_running(worker_losses=2), "tok")
    assert w is not None and w.cond == all_of(eq("status", RUNNING), eq("lease_token", "tok"))
    assert w.sets == {**protocol.FREED, "worker_losses": 3}
    assert w.deltas == {
        task_counter("retry_1", RUNNING): -1,
        task_counter("retry_1", PENDING): 1,
        WORKERS_LOST: 1,
    }


def test_claim_records_the_holder() -> None:
    step = protocol.claim(_task(), "w1", "tok", 30.0, now=1.0, holder='{"pid": 7}')
    assert step is not None and step[1].holder == '{"pid": 7}' == step[0].sets["holder"]


def test_put_versioned_is_a_compare_and_swap_on_the_version() -> None:
    first = protocol.put_versioned("j", "output_schema", b"v1", 0)
    assert first.ref == Ref("doc", "j", "output_schema") and first.cond == ABSENT
    assert first.sets == {"version": 1, "value": b"v1"}
    later = protocol.put_versioned("j", "output_schema", b"v3", 2)
    assert later.sets == {"version": 3, "value": b"v3"}
    assert holds(later.cond, {"version": 2, "value": b"v2"})
    assert not holds(later.cond, {"version": 3, "value": b"x"}) and not holds(later.cond, None)


# --- one stored count of a phase's unfinished tasks (DynamoDB: a claim moves no counter) -------
def test_fold_running_makes_a_claim_and_a_release_move_nothing() -> None:
    from slurmctl.backends.records import WORKERS_LOST, fold_running

    p, r, s = (task_counter("initial", st) for st in (PENDING, RUNNING, TaskStatus.SUCCESS))
    assert fold_running({p: -1, r: 1}) == {}  # a claim
    assert fold_running({r: -1, p: 1}) == {}  # a release
    assert fold_running({r: -1, p: 1, WORKERS_LOST: 1}) == {WORKERS_LOST: 1}  # release_dead
    assert fold_running({r: -1, s: 1, "items.pending": -10}) == {p: -1, s: 1, "items.pending": -10}
    assert fold_running({task_counter("retry_2", RUNNING): -1}) == {
        task_counter("retry_2", PENDING): -1
    }


def test_split_running_keeps_the_sum_and_gives_running_to_the_newest_unfinished_phase() -> None:
    from slurmctl.backends.records import split_running

    def c(phase: str, status: TaskStatus) -> str:
        return task_counter(phase, status)

    stored = {
        c("initial", PENDING): 0,
        c("initial", TaskStatus.SUCCESS): 5,
        c("retry_1", PENDING): 3,
        "items.pending": 30,
    }
    out = split_running(stored, 2)
    assert (out[c("retry_1", RUNNING)], out[c("retry_1", PENDING)]) == (2, 1)
    assert (out[c("initial", RUNNING)], out[c("initial", PENDING)]) == (0, 0)
    assert out[c("initial", TaskStatus.SUCCESS)] == 5 and out["items.pending"] == 30
    # a job whose earlier claims stored RUNNING: the sum is what counts, the split is the index's
    old = {c("initial", PENDING): 1, c("initial", RUNNING): 3}
    assert split_running(old, 1) == {c("initial", PENDING): 3, c("initial", RUNNING): 1}
    # never more RUNNING than unfinished (the index may lag), never negative; newest phase first
    two = {c("initial", PENDING): 1, c("retry_10", PENDING): 2, c("retry_9", PENDING): 4}
    out = split_running(two, 9)
    assert [out[c(ph, RUNNING)] for ph in ("retry_10", "retry_9", "initial")] == [2, 4, 1]
    assert all(out[c(ph, PENDING)] == 0 for ph in ("retry_10", "retry_9", "initial"))
    assert split_running({c("initial", PENDING): 2}, -1)[c("initial", RUNNING)] == 0
