"""The task protocol's edge cases, on every store: what a fenced-off, late or racing writer can
and cannot change, and that the counters stay exactly the sum of what the tasks say."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from slurmctl.backends import Backend, protocol
from slurmctl.backends.aws.session import AwsTimeout
from slurmctl.backends.statestore import (
    ITEMS_PENDING,
    ITEMS_SUCCEEDED,
    OUTPUT_ROWS,
    JobRecord,
    TaskCommit,
    TaskRecord,
    task_counter,
)
from slurmctl.states import JobStatus, TaskStatus
from tests.contract.conftest import make_backend

PHASE = "initial"
RUNNING, PENDING = TaskStatus.RUNNING, TaskStatus.PENDING


def _task(i: int) -> TaskRecord:
    return TaskRecord(
        "j", f"task-{i:06d}", f"batch-{i:06d}", PHASE, "initial_batch", 10, "k", "a" * 64
    )


def _commit(rows: int = 10, key: str = "out") -> TaskCommit:
    return TaskCommit(key, "s" * 64, rows, "err", "e" * 64, rows, 10 - rows, 0, 2.0)


def _setup(backend: Backend, n: int) -> None:
    state = backend.state
    assert state.create_job(JobRecord(job_id="j", status=JobStatus.PENDING))
    assert state.put_tasks([_task(i) for i in range(n)]) == n
    assert state.update_job(
        "j",
        {"status": JobStatus.RUNNING, "submitted": True},
        counter_deltas={task_counter(PHASE, PENDING): n, ITEMS_PENDING: 10 * n},
    )


def _consistent(backend: Backend, n: int) -> dict[str, int]:
    """The counters equal what the task records say, and none is negative."""
    c = backend.state.counters("j")
    tasks = list(backend.state.iter_tasks("j"))
    statuses = Counter(t.status for t in tasks)
    for status in TaskStatus:
        assert c.get(task_counter(PHASE, status), 0) == statuses[status], status
    done = sum(t.succeeded + t.failed_permanent + t.failed_transient for t in tasks)
    assert c[ITEMS_PENDING] == 10 * n - done
    assert c.get(ITEMS_SUCCEEDED, 0) == sum(t.succeeded for t in tasks)
    assert c.get(OUTPUT_ROWS, 0) == sum(t.output_rows for t in tasks)
    assert all(v >= 0 for v in c.values()), c
    return c


def test_fenced_off_writer_changes_nothing(backend: Backend) -> None:
    _setup(backend, 2)
    state = backend.state
    assert state.claim_task("j", "task-000000", "w1", "old", 10, now=100.0) is not None
    assert state.claim_task("j", "task-000000", "w2", "new", 10, now=200.0) is not None
    before = (state.get_task("j", "task-000000"), state.counters("j"))
    # every fenced transition of the holder that lost its lease is refused, and changes nothing
    assert not state.commit_task("j", "task-000000", "old", _commit())
    assert not state.fail_task("j", "task-000000", "old", "late", now=201.0)
    assert not state.release_task("j", "task-000000", "old", checkpoint_key="ck")
    assert not state.heartbeat("j", "task-000000", "old", 10, now=201.0)
    assert (state.get_task("j", "task-000000"), state.counters("j")) == before
    # after the new holder committed, a late commit of either token changes nothing either
    assert state.commit_task("j", "task-000000", "new", _commit(rows=6, key="new-out"))
    after = (state.get_task("j", "task-000000"), state.counters("j"))
    for token in ("old", "new"):
        assert not state.commit_task("j", "task-000000", token, _commit(rows=9, key="late"))
        assert not state.release_task("j", "task-000000", token)
    assert (state.get_task("j", "task-000000"), state.counters("j")) == after
    t = after[0]
    assert t is not None and t.output_key == "new-out" and t.lease_token == "new"
    assert _consistent(backend, 2)[ITEMS_SUCCEEDED] == 6


def test_takeover_counts_a_worker_loss_and_a_release_does_not(backend: Backend) -> None:
    _setup(backend, 1)
    state = backend.state
    state.claim_task("j", "task-000000", "w1", "a", 10, now=100.0)
    b = state.claim_task("j", "task-000000", "w2", "b", 10, now=111.0)  # a's lease lapsed at 110
    assert b is not None and (b.attempts, b.worker_losses, b.worker_id) == (2, 1, "w2")
    c = state.claim_task("j", "task-000000", "w3", "c", 10, now=130.0)
    assert c is not None and (c.attempts, c.worker_losses) == (3, 2)
    assert state.get_task("j", "task-000000") == c  # the store holds what the claim returned
    counters = _consistent(backend, 1)
    assert (
        counters[task_counter(PHASE, RUNNING)] == 1 and counters[task_counter(PHASE, PENDING)] == 0
    )
    assert state.release_task("j", "task-000000", "c")  # a signal: not a death
    d = state.claim_task("j", "task-000000", "w4", "d", 10, now=131.0)
    assert d is not None and (d.attempts, d.worker_losses) == (4, 2)
    _consistent(backend, 1)


def test_an_expired_lease_is_claimable_and_a_live_one_is_not(backend: Backend) -> None:
    _setup(backend, 1)
    state = backend.state
    state.claim_task("j", "task-000000", "w1", "a", 10, now=100.0)
    assert state.heartbeat("j", "task-000000", "a", 10, now=105.0)  # now expires at 115
    assert state.claim_task("j", "task-000000", "w2", "b", 10, now=114.9) is None
    assert state.claim_task("j", "task-000000", "w2", "b", 10, now=115.0) is None  # not yet past
    taken = state.claim_task("j", "task-000000", "w2", "b", 10, now=115.001)
    assert taken is not None and taken.lease_token == "b" and taken.lease_expires == 125.001
    assert not state.heartbeat("j", "task-000000", "a", 10, now=115.5)
    # the job lease lapses at its expiry, inclusively
    assert state.acquire_job_lease("j", "r1", 30, now=0.0)
    assert not state.acquire_job_lease("j", "r2", 30, now=29.999)
    assert state.acquire_job_lease("j", "r2", 30, now=30.0)
    assert state.job_lease("j") == ("r2", 60.0)


def test_counters_never_go_negative_whatever_the_order(backend: Backend) -> None:
    """Random claims, takeovers, heartbeats, releases, commits and fails with current, stale and
    unknown tokens: after each, the counters are exactly what the tasks say."""
    n = 4
    _setup(backend, n)
    state = backend.state
    rng = random.Random(13)
    tokens = ["ghost"]
    now = 100.0
    outcomes: Counter[str] = Counter()
    for step in range(60):
        now += rng.choice([0.5, 1.0, 6.0])
        task_id = f"task-{rng.randrange(n):06d}"
        token = rng.choice(tokens)
        op = rng.choice(["claim", "claim", "heartbeat", "release", "commit", "fail"])
        if op == "claim":
            token = f"t{step}"
            tokens.append(token)
            ok: Any = state.claim_task("j", task_id, "w", token, 5, now) is not None
        elif op == "heartbeat":
            ok = state.heartbeat("j", task_id, token, 5, now)
        elif op == "release":
            ok = state.release_task("j", task_id, token)
        elif op == "commit":
            ok = state.commit_task("j", task_id, token, _commit(rows=rng.randrange(11)))
        else:
            ok = state.fail_task("j", task_id, token, "broken", now)
        outcomes[f"{op}:{bool(ok)}"] += 1
        _consistent(backend, n)
    # the sequence did exercise both sides of every transition
    assert {k for k, v in outcomes.items() if v} >= {
        "claim:True",
        "claim:False",
        "commit:False",
        "release:False",
    }


def test_racing_writes_decided_on_the_same_read(backend: Backend) -> None:
    """Two processes read the same record and decide on it: the store's write primitive lets the
    first through and refuses the second, so a race never moves the counters twice."""
    _setup(backend, 2)
    state = backend.state
    rec = state.get_task("j", "task-000000")
    one, two = (protocol.claim(rec, w, w, 10, now=100.0) for w in ("w1", "w2"))
    assert one is not None and two is not None
    assert state._write(one[0]) and not state._write(two[0])
    assert state.get_task("j", "task-000000") == one[1]
    assert _consistent(backend, 2)[task_counter(PHASE, RUNNING)] == 1
    # a takeover decided on a lapsed lease loses to the old holder's heartbeat in between
    lapsed = state.get_task("j", "task-000000")
    takeover = protocol.claim(lapsed, "w3", "w3", 10, now=111.0)
    assert takeover is not None
    assert state.heartbeat("j", "task-000000", "w1", 10, now=109.0)
    assert not state._write(takeover[0])
    # a commit and a release of the same holder, decided on one read: only the first applies
    held = state.get_task("j", "task-000000")
    commit, release = protocol.commit(held, "w1", _commit()), protocol.release(held, "w1")
    assert commit is not None and release is not None
    assert state._write(commit) and not state._write(release)
    t = state.get_task("j", "task-000000")
    assert t is not None and t.status == TaskStatus.SUCCESS and t.attempts == 1
    _consistent(backend, 2)


def test_writes_to_absent_records_create_nothing(backend: Backend) -> None:
    """A conditional update of a record that is not there is refused (DynamoDB's UpdateItem
    would otherwise create it), whatever its condition says about unset fields."""
    state = backend.state
    assert not state.update_job("nope", {"paused": True}, expect={"error": None})
    assert not state.update_job("nope", {}, counter_deltas={"x": 1})
    assert not state.update_job("nope", {}, expect={"error": None})
    assert state.get_job("nope") is None and state.counters("nope") == {}
    assert not state.heartbeat("nope", "task-000000", "t", 10, now=1.0)
    assert not state.release_task("nope", "task-000000", "t")
    assert not state.commit_task("nope", "task-000000", "t", _commit())
    assert state.claim_task("nope", "task-000000", "w", "t", 10, now=1.0) is None
    assert state.get_task("nope", "task-000000") is None
    state.release_job_lease("nope", "r1")
    assert state.job_lease("nope") is None


# --- AWS only: a write whose answer is lost is resolved by reading the record again ------------
@pytest.fixture
def aws_backend(tmp_path: Path, moto_endpoint: str) -> Any:
    b = make_backend("aws", tmp_path, moto_endpoint)
    yield b
    b.close()


class LostAnswers:
    """Between the AWS store and a real moto server: the next call of an operation is sent and
    applied, then its answer is lost (a read timeout), as on a dropped connection."""

    def __init__(self, backend: Backend) -> None:
        self.svc = backend.state.t.ddb  # type: ignore[attr-defined]
        self.real = self.svc.call
        self.lose: list[str] = []
        self.seen: list[str] = []
        self.svc.call = self.call

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        self.seen.append(op)
        out: dict[str, Any] = self.real(op, **kwargs)
        if op in self.lose:
            self.lose.remove(op)
            raise AwsTimeout(f"dynamodb {op}: read timeout")
        return out


def test_ambiguous_writes_resolve_by_rereading(aws_backend: Backend) -> None:
    _setup(aws_backend, 3)
    state = aws_backend.state
    lost = LostAnswers(aws_backend)
    # a claim (one conditional update: it moves no counter) applied, answer lost: the re-read
    # shows it is ours, and it is not sent again
    lost.lose = ["update_item"]
    a = state.claim_task("j", "task-000000", "w", "a", 10, now=100.0)
    assert a is not None and a.lease_token == "a" and a.attempts == 1
    assert lost.seen == ["get_item", "update_item", "get_item"] and not lost.lose
    _consistent(aws_backend, 3)
    # a heartbeat (a plain update) applied, answer lost
    lost.lose = ["update_item"]
    assert state.heartbeat("j", "task-000000", "a", 10, now=105.0)
    # a commit applied, answer lost: True, and the counters moved once
    lost.seen.clear()
    lost.lose = ["transact_write_items"]
    assert state.commit_task("j", "task-000000", "a", _commit(rows=4))
    assert lost.seen == ["get_item", "transact_write_items", "get_item"]  # read, write, re-read
    c = _consistent(aws_backend, 3)
    assert c[task_counter(PHASE, TaskStatus.SUCCESS)] == 1 and c[OUTPUT_ROWS] == 4


def test_ambiguous_commit_of_a_fenced_off_holder_is_refused(aws_backend: Backend) -> None:
    _setup(aws_backend, 1)
    state = aws_backend.state
    lost = LostAnswers(aws_backend)
    state.claim_task("j", "task-000000", "w1", "old", 10, now=100.0)
    real = lost.real

    def taken_over_meanwhile(op: str, **kwargs: Any) -> dict[str, Any]:
        # The commit is lost on its way (never applied) and, before the re-read, another worker
        # takes the lapsed lease over: the re-read must say "refused", not "try again".
        if op == "transact_write_items":
            lost.svc.call = real
            assert state.claim_task("j", "task-000000", "w2", "new", 10, now=200.0) is not None
            raise AwsTimeout("dynamodb transact_write_items: read timeout")
        answer: dict[str, Any] = real(op, **kwargs)
        return answer

    lost.svc.call = taken_over_meanwhile
    before_counters = state.counters("j")
    assert not state.commit_task("j", "task-000000", "old", _commit())
    t = state.get_task("j", "task-000000")
    assert t is not None and t.status == RUNNING and t.lease_token == "new" and t.output_key is None
    assert state.counters("j") == before_counters
    assert t.worker_losses == 1


def test_ambiguous_job_update_is_reported_not_guessed(aws_backend: Backend) -> None:
    """A job update's counter deltas cannot be told apart on a re-read: the error stands."""
    _setup(aws_backend, 1)
    lost = LostAnswers(aws_backend)
    # counters only: one plain UpdateItem on a counter shard (no check of the job record)
    lost.lose = ["update_item"]
    with pytest.raises(AwsTimeout, match="read timeout"):
        aws_backend.state.update_job("j", {}, counter_deltas={"x": 1})
    assert aws_backend.state.counters("j")["x"] == 1  # it was applied, once
    # a change with counters: one transaction
    lost.lose = ["transact_write_items"]
    with pytest.raises(AwsTimeout, match="read timeout"):
        aws_backend.state.update_job("j", {"paused": True}, counter_deltas={"y": 1})
    assert aws_backend.state.counters("j")["y"] == 1


def test_unfinished_sum_is_exact_with_or_without_the_running_split(backend: Backend) -> None:
    """A claim, a release, a takeover, a commit and a fail: PENDING + RUNNING (what decides a
    phase's end), SUCCESS and FAILED are exact with running=False (a store may then count
    RUNNING among PENDING: DynamoDB's claim moves no counter), and the split is exact too."""
    _setup(backend, 4)
    state = backend.state

    def check(unfinished: int, success: int, failed: int) -> None:
        fast = state.counters("j", metrics=False, running=False)
        left = fast.get(task_counter(PHASE, PENDING), 0) + fast.get(task_counter(PHASE, RUNNING), 0)
        assert (left, fast.get(task_counter(PHASE, TaskStatus.SUCCESS), 0)) == (unfinished, success)
        assert fast.get(task_counter(PHASE, TaskStatus.FAILED), 0) == failed
        _consistent(backend, 4)

    for i in range(3):
        assert state.claim_task("j", f"task-{i:06d}", "w", f"t{i}", 10, now=100.0) is not None
    check(4, 0, 0)
    assert state.release_task("j", "task-000000", "t0")
    assert state.claim_task("j", "task-000001", "w2", "x", 10, now=200.0) is not None  # takeover
    check(4, 0, 0)
    assert state.commit_task("j", "task-000001", "x", _commit())
    assert state.claim_task("j", "task-000002", "w3", "y", 10, now=300.0) is not None
    assert not state.fail_task("j", "task-000002", "t2", "late", now=301.0)  # fenced off
    assert state.fail_task("j", "task-000002", "y", "broken", now=301.0)
    check(2, 1, 1)
    assert not state.release_dead("j", "task-000002", "y")  # finished: nothing moves
    assert state.claim_task("j", "task-000003", "w4", "z", 10, now=400.0) is not None
    assert state.release_dead("j", "task-000003", "z")
    check(2, 1, 1)


def test_running_is_told_apart_per_phase_after_a_retry_phase_starts(backend: Backend) -> None:
    """The initial phase done (one SUCCESS, one FAILED), a retry phase's two tasks counted: a
    claim of one shows RUNNING 1 in retry_1 and none in initial, on every store (DynamoDB
    tells RUNNING apart from its index; the sum per phase is the stored count)."""
    _setup(backend, 2)
    state = backend.state
    assert state.claim_task("j", "task-000000", "w", "a", 10, now=100.0) is not None
    assert state.commit_task("j", "task-000000", "a", _commit())
    assert state.claim_task("j", "task-000001", "w", "b", 10, now=100.0) is not None
    assert state.fail_task("j", "task-000001", "b", "broken", now=101.0)
    retry = [
        TaskRecord(
            "j",
            f"r1-task-{i:06d}",
            f"r1-batch-{i:06d}",
            "retry_1",
            "retry_batch_1",
            5,
            "k",
            "a" * 64,
        )
        for i in range(2)
    ]
    assert state.put_tasks(retry) == 2
    assert state.update_job(
        "j", {"phase": "retry_1"}, counter_deltas={task_counter("retry_1", PENDING): 2}
    )
    assert state.claim_task("j", "r1-task-000000", "w", "c", 10, now=200.0) is not None
    c = state.counters("j")
    got = {
        (ph, st): c.get(task_counter(ph, st), 0)
        for ph in ("initial", "retry_1")
        for st in (PENDING, RUNNING, TaskStatus.SUCCESS, TaskStatus.FAILED)
    }
    assert got == {
        ("initial", PENDING): 0,
        ("initial", RUNNING): 0,
        ("initial", TaskStatus.SUCCESS): 1,
        ("initial", TaskStatus.FAILED): 1,
        ("retry_1", PENDING): 1,
        ("retry_1", RUNNING): 1,
        ("retry_1", TaskStatus.SUCCESS): 0,
        ("retry_1", TaskStatus.FAILED): 0,
    }
    assert state.release_task("j", "r1-task-000000", "c")
    c = state.counters("j")
    assert (c[task_counter("retry_1", PENDING)], c.get(task_counter("retry_1", RUNNING), 0)) == (
        2,
        0,
    )
