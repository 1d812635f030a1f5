from __future__ import annotations

import dataclasses

from slurmctl.backends import Backend
from slurmctl.backends.statestore import (
    ITEMS_PENDING,
    ITEMS_SUCCEEDED,
    OUTPUT_ROWS,
    WORKERS_LOST,
    Bucket,
    JobRecord,
    TaskCommit,
    TaskRecord,
    Versioned,
    task_counter,
)
from slurmctl.ratelimit import gcra
from slurmctl.states import JobStatus, TaskStatus


def _task(i: int, phase: str = "initial", items: int = 10) -> TaskRecord:
    return TaskRecord(
        job_id="j",
        task_id=f"task-{i:06d}",
        batch_id=f"batch-{i:06d}",
        phase=phase,
        group="initial_batch",
        items=items,
        batch_key=f"jobs/j/batches/batch-{i:06d}.jsonl",
        batch_sha256="ab" * 32,
    )


def _commit(rows: int = 10) -> TaskCommit:
    return TaskCommit("out", "s" * 64, rows, "err", "e" * 64, rows, 0, 0, 2.0)


def _setup(backend: Backend, n: int = 3) -> None:
    assert backend.state.create_job(JobRecord(job_id="j", status=JobStatus.PENDING))
    assert backend.state.put_tasks([_task(i) for i in range(n)]) == n
    assert backend.state.update_job(
        "j",
        {"status": JobStatus.RUNNING, "submitted": True},
        expect={"submitted": False},
        counter_deltas={task_counter("initial", "PENDING"): n, ITEMS_PENDING: 10 * n},
    )


def test_job_create_is_put_if_absent(backend: Backend) -> None:
    assert backend.state.create_job(JobRecord(job_id="j", status=JobStatus.PENDING, workers=3))
    assert not backend.state.create_job(JobRecord(job_id="j", status=JobStatus.RUNNING))
    job = backend.state.get_job("j")
    assert job is not None and job.status == JobStatus.PENDING and job.workers == 3
    assert backend.state.get_job("other") is None
    assert [j.job_id for j in backend.state.list_jobs()] == ["j"]


def test_update_job_is_conditional_and_moves_counters(backend: Backend) -> None:
    _setup(backend)
    assert not backend.state.update_job(
        "j", {"status": JobStatus.FAILED}, expect={"submitted": False}, counter_deltas={"x": 5}
    )
    job = backend.state.get_job("j")
    assert job is not None and job.status == JobStatus.RUNNING and job.submitted
    assert "x" not in backend.state.counters("j")
    assert backend.state.counters("j")[task_counter("initial", "PENDING")] == 3
    assert backend.state.update_job("j", {"paused": True}, expect={"status": JobStatus.RUNNING})
    assert backend.state.get_job("j").paused  # type: ignore[union-attr]


def test_put_tasks_is_idempotent(backend: Backend) -> None:
    _setup(backend, n=3)
    assert backend.state.put_tasks([_task(i) for i in range(5)]) == 2
    assert [t.task_id for t in backend.state.iter_tasks("j")] == [f"task-{i:06d}" for i in range(5)]


def test_claim_is_exclusive_until_lease_expires(backend: Backend) -> None:
    _setup(backend)
    a = backend.state.claim_task("j", "task-000000", "w1", "tok-a", 10, now=100.0)
    assert a is not None and a.status == TaskStatus.RUNNING and a.attempts == 1
    assert a.lease_token == "tok-a" and a.worker_id == "w1"
    assert backend.state.claim_task("j", "task-000000", "w2", "tok-b", 10, now=105.0) is None
    c = backend.state.counters("j")
    assert c[task_counter("initial", "PENDING")] == 2
    assert c[task_counter("initial", "RUNNING")] == 1
    # heartbeat extends: still not claimable at 115
    assert backend.state.heartbeat("j", "task-000000", "tok-a", 10, now=108.0)
    assert backend.state.claim_task("j", "task-000000", "w2", "tok-b", 10, now=115.0) is None
    b = backend.state.claim_task("j", "task-000000", "w2", "tok-b", 10, now=118.5)
    assert b is not None and b.attempts == 2 and b.worker_losses == 1
    # a takeover does not move the counters again
    assert backend.state.counters("j")[task_counter("initial", "RUNNING")] == 1
    assert not backend.state.heartbeat("j", "task-000000", "tok-a", 10, now=119.0)
    assert backend.state.claim_task("j", "task-999999", "w2", "tok-c", 10, now=1.0) is None


def test_commit_is_fenced_by_token(backend: Backend) -> None:
    _setup(backend)
    backend.state.claim_task("j", "task-000001", "w1", "old", 10, now=100.0)
    backend.state.claim_task("j", "task-000001", "w2", "new", 10, now=200.0)
    assert not backend.state.commit_task("j", "task-000001", "old", _commit())
    t = backend.state.get_task("j", "task-000001")
    assert t is not None and t.status == TaskStatus.RUNNING and t.output_key is None
    assert backend.state.commit_task("j", "task-000001", "new", _commit(rows=7))
    assert not backend.state.commit_task("j", "task-000001", "new", _commit())  # once only
    t = backend.state.get_task("j", "task-000001")
    assert t is not None and t.status == TaskStatus.SUCCESS and t.output_rows == 7
    c = backend.state.counters("j")
    assert c[task_counter("initial", "SUCCESS")] == 1
    assert c[task_counter("initial", "RUNNING")] == 0
    assert c[ITEMS_SUCCEEDED] == 7 and c[OUTPUT_ROWS] == 7 and c[ITEMS_PENDING] == 30 - 7


def test_release_and_fail(backend: Backend) -> None:
    _setup(backend)
    backend.state.claim_task("j", "task-000002", "w1", "t1", 10, now=100.0)
    assert not backend.state.release_task("j", "task-000002", "wrong")
    assert backend.state.release_task(
        "j", "task-000002", "t1", checkpoint_key="ck", checkpoint_sha256="c"
    )
    t = backend.state.get_task("j", "task-000002")
    assert t is not None and t.status == TaskStatus.PENDING and t.checkpoint_key == "ck"
    assert t.worker_losses == 0 and t.lease_token is None  # a signal is not a death
    assert backend.state.claim_task("j", "task-000002", "w2", "t2", 10, now=101.0) is not None
    assert backend.state.fail_task("j", "task-000002", "t2", "corrupt batch", now=102.0)
    c = backend.state.counters("j")
    assert c[task_counter("initial", "FAILED")] == 1
    assert c[task_counter("initial", "PENDING")] == 2
    assert c[task_counter("initial", "RUNNING")] == 0


def test_release_dead_frees_a_dead_holders_lease_and_counts_a_loss(backend: Backend) -> None:
    _setup(backend)
    holder = '{"host":"n1","pid":4242}'
    a = backend.state.claim_task("j", "task-000001", "w1", "t1", 1000, now=100.0, holder=holder)
    assert a is not None and a.holder == holder
    got = backend.state.get_task("j", "task-000001")
    assert got is not None and got.holder == holder and got.worker_id == "w1"
    assert not backend.state.release_dead("j", "task-000001", "wrong")  # fenced by the token
    assert backend.state.release_dead("j", "task-000001", "t1")
    assert not backend.state.release_dead("j", "task-000001", "t1")  # once only
    t = backend.state.get_task("j", "task-000001")
    assert t is not None and t.status == TaskStatus.PENDING and t.worker_losses == 1
    assert t.lease_token is None and t.lease_expires is None and t.worker_id is None
    c = backend.state.counters("j")
    assert c[task_counter("initial", "PENDING")] == 3
    assert c[task_counter("initial", "RUNNING")] == 0
    assert c[WORKERS_LOST] == 1
    assert [x.task_id for x in backend.state.unfinished_tasks("j")] == [
        f"task-{i:06d}" for i in range(3)
    ]
    # claimable at once (long before the lease would have expired); no second loss counted
    b = backend.state.claim_task("j", "task-000001", "w2", "t2", 1000, now=101.0)
    assert b is not None and b.attempts == 2 and b.worker_losses == 1 and b.holder is None
    # a holder that finished is never released: the commit is final
    assert backend.state.commit_task("j", "task-000001", "t2", _commit())
    assert not backend.state.release_dead("j", "task-000001", "t2")
    assert backend.state.counters("j")[WORKERS_LOST] == 1


def test_unfinished_index(backend: Backend) -> None:
    _setup(backend, n=4)
    backend.state.claim_task("j", "task-000000", "w", "a", 10, now=1.0)
    backend.state.commit_task("j", "task-000000", "a", _commit())
    backend.state.claim_task("j", "task-000001", "w", "b", 10, now=1.0)
    assert [t.task_id for t in backend.state.unfinished_tasks("j")] == [
        "task-000001",
        "task-000002",
        "task-000003",
    ]
    assert list(backend.state.unfinished_tasks("j", phase="retry_1")) == []
    assert [t.task_id for t in backend.state.iter_tasks("j", status=TaskStatus.SUCCESS)] == [
        "task-000000"
    ]


def test_job_lease(backend: Backend) -> None:
    _setup(backend)
    assert backend.state.acquire_job_lease("j", "r1", 30, now=0.0)
    assert backend.state.acquire_job_lease("j", "r1", 30, now=1.0)  # re-entrant
    assert not backend.state.acquire_job_lease("j", "r2", 30, now=10.0)
    assert backend.state.acquire_job_lease("j", "r2", 30, now=40.0)  # expired
    backend.state.release_job_lease("j", "r1")  # not the holder: no effect
    assert not backend.state.acquire_job_lease("j", "r3", 30, now=41.0)
    assert backend.state.job_lease("j") == ("r2", 70.0)
    backend.state.release_job_lease("j", "r2")
    assert backend.state.job_lease("j") is None
    assert backend.state.acquire_job_lease("j", "r3", 30, now=41.0)


def test_buckets_schedule_pause_release(backend: Backend) -> None:
    _setup(backend)
    backend.state.put_bucket(Bucket("j", "default", rate=10.0, burst=4))
    g = backend.state.reserve_slots("j", "default", 4, now=100.0)
    assert not g.paused
    assert [round(t, 6) for t in g.times] == [100.0, 100.0, 100.1, 100.2]
    assert round(g.tat, 6) == 100.4
    # give back the last two: the next grant starts where they were
    assert backend.state.release_slots("j", "default", g.tat, g.tat - 0.2)
    assert not backend.state.release_slots("j", "default", g.tat, 0.0)  # stale: TAT moved
    g2 = backend.state.reserve_slots("j", "default", 1, now=100.0)
    assert [round(t, 6) for t in g2.times] == [100.1]
    backend.state.set_buckets_paused("j", True)
    assert backend.state.reserve_slots("j", "default", 1, now=100.0).paused
    backend.state.set_buckets_paused("j", False)
    backend.state.put_bucket(Bucket("j", "default", rate=20.0, burst=1))
    b = backend.state.get_bucket("j", "default")
    assert b is not None and b.rate == 20.0 and b.burst == 1 and round(b.tat, 6) == 100.3
    assert [x.name for x in backend.state.list_buckets("j")] == ["default"]


def test_bucket_grants_carry_rates_and_set_rate(backend: Backend) -> None:
    _setup(backend)
    backend.state.put_bucket(Bucket("j", "default", rate=10.0, burst=1))
    g = backend.state.reserve_slots("j", "default", 2, now=100.0)
    # burst 1 keeps no spare token: its slots are paced with slack (gcra.paced_rate)
    assert g.configured_rate == 10.0 and g.rate == gcra.paced_rate(10.0, 1) < 10.0
    assert g.writes >= 1 and g.hold_until == 0.0
    before = backend.state.set_bucket_rate("j", "default", 40.0, burst=4)
    assert before is not None and before.rate == 10.0 and before.burst == 1
    b = backend.state.get_bucket("j", "default")
    assert b is not None and (b.rate, b.burst) == (40.0, 4) and b.tat == g.tat  # TAT kept
    g2 = backend.state.reserve_slots("j", "default", 2, now=100.0)
    assert g2.configured_rate == 40.0 == g2.rate
    # tau: one slot at 40/s behind the TAT the first grant left
    assert [round(t, 6) for t in g2.times] == [round(g.tat - 0.025, 6), round(g.tat, 6)]
    assert backend.state.set_bucket_rate("j", "nope", 1.0) is None
    before = backend.state.set_bucket_rate("j", "default", 20.0)  # burst kept
    assert before is not None and backend.state.get_bucket("j", "default").burst == 4  # type: ignore[union-attr]


def test_bucket_throttle_cuts_holds_and_set_rate_clears(backend: Backend) -> None:
    _setup(backend)
    backend.state.put_bucket(Bucket("j", "default", rate=10.0, burst=1))
    b = backend.state.throttle_bucket("j", "default", now=200.0, retry_after=2.0)
    assert b is not None and (b.effective, b.changed_at, b.hold_until) == (5.0, 200.0, 202.0)
    assert backend.state.get_bucket("j", "default") == b
    # a second report within the cooldown: the same event, nothing written
    assert backend.state.throttle_bucket("j", "default", now=200.5) == b
    held = backend.state.reserve_slots("j", "default", 3, now=201.0)
    assert held.times == () and held.hold_until == 202.0 and not held.paused
    g = backend.state.reserve_slots("j", "default", 3, now=202.0)
    assert g.rate == 5.0 + 0.5 * 2.0  # recovered by 5% of 10/s a second for 2 s
    assert [round(t, 6) for t in g.times] == [202.0, round(202.0 + 1 / 6, 6), round(202 + 2 / 6, 6)]
    # a release moves TAT back by the grant's own interval
    assert backend.state.release_slots("j", "default", g.tat, g.tat - 1 / g.rate)
    backend.state.set_bucket_rate("j", "default", 10.0)
    b2 = backend.state.get_bucket("j", "default")
    assert b2 is not None and b2.effective == 0.0 and b2.effective_rate(202.0) == 10.0
    assert b2.hold_until == 202.0  # a Retry-After is the API's word: set-rate keeps it
    assert backend.state.throttle_bucket("j", "nope", now=1.0) is None
    backend.state.set_buckets_paused("j", True)
    paused = backend.state.reserve_slots("j", "default", 1, now=300.0)
    assert paused.paused and paused.times == () and paused.configured_rate == 10.0


def test_delete_job(backend: Backend) -> None:
    _setup(backend)
    backend.state.put_bucket(Bucket("j", "default", rate=10.0, burst=2))
    backend.state.delete_job("j")
    assert backend.state.get_job("j") is None
    assert list(backend.state.iter_tasks("j")) == []
    assert backend.state.counters("j") == {}
    assert backend.state.list_buckets("j") == []


def test_versioned_document_is_compare_and_swap(backend: Backend) -> None:
    state = backend.state
    assert state.get_versioned("j", "output_schema") is None
    assert not state.put_versioned("j", "output_schema", b"v1", 1)  # no version 1 to replace
    assert state.put_versioned("j", "output_schema", b"v1", 0)
    assert not state.put_versioned("j", "output_schema", b"lost", 0)  # it exists now
    assert state.get_versioned("j", "output_schema") == Versioned(1, b"v1")
    assert state.put_versioned("j", "output_schema", b"\x00v2" * 1000, 1)
    assert not state.put_versioned("j", "output_schema", b"stale", 1)  # a writer that read v1
    assert state.get_versioned("j", "output_schema") == Versioned(2, b"\x00v2" * 1000)
    assert (
        state.get_versioned("j", "other") is None
        and state.get_versioned("k", "output_schema") is None
    )


def test_delete_job_removes_versioned_documents(backend: Backend) -> None:
    _setup(backend)
    assert backend.state.put_versioned("j", "output_schema", b"x", 0)
    backend.state.delete_job("j")
    assert backend.state.get_versioned("j", "output_schema") is None


def test_replace_task_is_conditional_on_status_and_moves_counters(backend: Backend) -> None:
    """`retry --tasks`: a finished task back to PENDING, its counts undone, in one write."""
    _setup(backend, 2)
    t = backend.state.claim_task("j", "task-000000", "w", "tok", 30, 1.0)
    assert t is not None
    assert backend.state.commit_task("j", "task-000000", "tok", _commit(10))
    fresh = TaskRecord(**{**_task(0).to_dict(), "phase": "retry_1", "items": 7})
    undo = {
        task_counter("initial", "SUCCESS"): -1,
        task_counter("retry_1", "PENDING"): 1,
        ITEMS_SUCCEEDED: -10,
        ITEMS_PENDING: 10,
        OUTPUT_ROWS: -10,
    }
    assert not backend.state.replace_task(
        fresh, expect_status=TaskStatus.FAILED, counter_deltas=undo
    )
    assert backend.state.replace_task(fresh, expect_status=TaskStatus.SUCCESS, counter_deltas=undo)
    got = backend.state.get_task("j", "task-000000")
    assert got is not None and (got.status, got.phase, got.items) == ("PENDING", "retry_1", 7)
    assert got.output_key is None and got.succeeded == 0
    c = backend.state.counters("j")
    assert c[task_counter("initial", "SUCCESS")] == 0 and c[task_counter("retry_1", "PENDING")] == 1
    assert (c[ITEMS_SUCCEEDED], c[ITEMS_PENDING], c[OUTPUT_ROWS]) == (0, 20, 0)
    assert [x.task_id for x in backend.state.unfinished_tasks("j", "retry_1")] == ["task-000000"]


def test_delete_tasks_removes_one_phase(backend: Backend) -> None:
    _setup(backend, 2)
    backend.state.put_tasks([_task(7, phase="retry_1"), _task(8, phase="retry_1")])
    assert backend.state.delete_tasks("j", "retry_1") == 2
    assert [t.task_id for t in backend.state.iter_tasks("j")] == ["task-000000", "task-000001"]
    assert list(backend.state.unfinished_tasks("j", "retry_1")) == []
    assert backend.state.delete_tasks("j", "retry_1") == 0


def test_expired_running_and_pending_tasks(backend: Backend) -> None:
    """What the reconciler and the dead-holder check read: by status, phase and lease expiry."""
    _setup(backend, n=5)
    backend.state.put_tasks([_task(9, phase="retry_1")])
    state = backend.state
    state.claim_task("j", "task-000000", "w", "a", 10, now=100.0)  # expires 110
    state.claim_task("j", "task-000001", "w", "b", 50, now=100.0)  # expires 150
    state.claim_task("j", "task-000002", "w", "c", 10, now=100.0)
    state.commit_task("j", "task-000002", "c", _commit())  # finished: in none
    state.heartbeat("j", "task-000001", "b", 5, now=100.0)  # now expires 105

    def ids(tasks: object) -> list[str]:
        return sorted(t.task_id for t in tasks)  # type: ignore[attr-defined]

    assert ids(state.expired_tasks("j", "initial", 104.0)) == []
    assert ids(state.expired_tasks("j", "initial", 106.0)) == ["task-000001"]
    assert ids(state.expired_tasks("j", "initial", 111.0)) == ["task-000000", "task-000001"]
    assert ids(state.expired_tasks("j", "retry_1", 1e9)) == []
    assert ids(state.running_tasks("j", "initial")) == ["task-000000", "task-000001"]
    assert ids(state.pending_tasks("j", "initial")) == ["task-000003", "task-000004"]
    assert ids(state.pending_tasks("j", "retry_1")) == ["task-000009"]
    state.release_task("j", "task-000000", "a")
    assert ids(state.expired_tasks("j", "initial", 111.0)) == ["task-000001"]
    assert ids(state.pending_tasks("j", "initial")) == ["task-000000", "task-000003", "task-000004"]


def test_live_tasks_are_the_unexpired_leases_of_every_phase(backend: Backend) -> None:
    """What `clean` reads to refuse a running job: only the leases still live at now."""
    _setup(backend, n=4)
    backend.state.put_tasks([_task(9, phase="retry_1")])
    state = backend.state
    state.claim_task("j", "task-000000", "w", "a", 10, now=100.0)  # expires 110
    state.claim_task("j", "task-000001", "w", "b", 50, now=100.0)  # expires 150
    state.claim_task("j", "task-000002", "w", "c", 90, now=100.0)
    state.commit_task("j", "task-000002", "c", _commit())  # finished: never live
    state.claim_task("j", "task-000009", "w2", "d", 30, now=100.0)  # expires 130, retry_1

    def ids(now: float) -> list[str]:
        return sorted(t.task_id for t in state.live_tasks("j", now))

    assert ids(105.0) == ["task-000000", "task-000001", "task-000009"]
    assert ids(120.0) == ["task-000001", "task-000009"]
    assert ids(140.0) == ["task-000001"]
    assert ids(150.0) == []  # a lease expiring exactly now is no longer live
    assert [t.worker_id for t in state.live_tasks("j", 140.0)] == ["w"]


def test_reconciler_turns_one_holder_at_a_time(backend: Backend) -> None:
    from slurmctl.backends.reconcile import Turn, take_turn

    _setup(backend, n=1)
    state = backend.state
    assert take_turn(state, "j", Turn("w1", 30.0), now=100.0)
    assert not take_turn(state, "j", Turn("w2", 30.0), now=129.0)
    assert take_turn(state, "j", Turn("w1", 30.0), now=129.0)  # ours: renewed to 159
    assert not take_turn(state, "j", Turn("w2", 30.0), now=158.0)
    assert take_turn(state, "j", Turn("w2", 30.0), now=160.0)


def test_lost_hints_are_requeued_once_submit_is_done_and_only_then(backend: Backend) -> None:
    """PENDING tasks whose queue message is gone get a new one, but not while a streaming
    submit still runs (it counts a chunk before it queues it, so the queue lags the counters
    and every task would otherwise be received twice)."""
    from slurmctl.backends.reconcile import reconcile

    state = backend.state
    assert state.create_job(JobRecord(job_id="j", status=JobStatus.RUNNING))
    assert state.put_tasks([_task(i) for i in range(4)]) == 4
    assert state.update_job(  # counted, not yet queued, submit not done
        "j",
        {"task_count": 4},
        expect={"submitted": False},
        counter_deltas={task_counter("initial", "PENDING"): 4, ITEMS_PENDING: 40},
    )
    backend.queue.create_queue("j")
    backend.queue.send("j", ["task-000001"])  # one of the four queued so far
    got = reconcile(backend, "j", "initial", now=100.0)
    assert (got.pending, got.expired) == (0, 0)
    assert backend.queue.approximate_count("j") == 1
    assert state.update_job("j", {"submitted": True}, expect={"submitted": False})
    taken = backend.queue.receive("j", max_messages=10, visibility_s=30)
    backend.queue.delete("j", [m.receipt for m in taken])  # and now even that one is lost
    got = reconcile(backend, "j", "initial", now=100.0)
    assert (got.pending, got.expired) == (4, 0)
    hints = sorted(m.body for m in backend.queue.receive("j", max_messages=10, visibility_s=30))
    assert hints == [f"task-{i:06d}" for i in range(4)]


def test_a_task_keeps_where_its_batch_lies_in_a_pack(backend: Backend) -> None:
    """`batch_range` (backends/batches.py) round-trips, through a claim and a commit; a task of
    the layout before packing has none (its batch is a whole object)."""
    assert backend.state.create_job(JobRecord(job_id="j", status=JobStatus.PENDING))
    packed = dataclasses.replace(
        _task(1), batch_key="jobs/j/batches/batch-000001--batch-000002.jsonl", batch_range="0-99"
    )
    assert backend.state.put_tasks([_task(0), packed]) == 2
    got = backend.state.get_task("j", "task-000001")
    assert got is not None and (got.batch_key, got.batch_range) == (packed.batch_key, "0-99")
    old = backend.state.get_task("j", "task-000000")
    assert old is not None and old.batch_range is None
    claimed = backend.state.claim_task("j", "task-000001", "w1", "t1", lease_s=30, now=1.0)
    assert claimed is not None and claimed.batch_range == "0-99"
    assert backend.state.commit_task("j", "task-000001", "t1", _commit())
    done = backend.state.get_task("j", "task-000001")
    assert done is not None and done.status is TaskStatus.SUCCESS and done.batch_range == "0-99"


def test_a_hint_whose_receipt_was_not_deleted_comes_back_and_is_discarded(
    backend: Backend,
) -> None:
    """Workers delete used-up hints 10 at a time, a few seconds late (worker/gather.py); a
    receipt not deleted in time (or lost with a SIGKILLed worker) brings the hint back after
    its visibility timeout. Its receiver's claim finds the task finished and writes nothing."""
    _setup(backend, n=1)
    backend.queue.create_queue("j")
    backend.queue.send("j", ["task-000000"])
    (msg,) = backend.queue.receive("j", visibility_s=1)
    assert backend.state.claim_task("j", msg.body, "w1", "tok-a", 60, now=100.0) is not None
    assert backend.state.commit_task("j", msg.body, "tok-a", _commit(rows=7))
    before = (backend.state.get_task("j", msg.body), backend.state.counters("j"))
    (again,) = backend.queue.receive("j", visibility_s=30, wait_s=5)  # not deleted: back
    assert again.body == "task-000000"
    assert backend.state.claim_task("j", again.body, "w2", "tok-b", 60, now=101.0) is None
    backend.queue.delete("j", [again.receipt])
    assert (backend.state.get_task("j", again.body), backend.state.counters("j")) == before
    t = before[0]
    assert t is not None and t.status == TaskStatus.SUCCESS and t.lease_token == "tok-a"
    assert before[1][task_counter("initial", "SUCCESS")] == 1 and before[1][OUTPUT_ROWS] == 7
    assert backend.queue.approximate_count("j") == 0
