from __future__ import annotations

import time

import pytest

from slurmctl.backends import Backend
from slurmctl.errors import SlurmctlError


def _drain(backend: Backend, job: str) -> list[str]:
    out = []
    while msgs := backend.queue.receive(job, max_messages=10, visibility_s=60):
        out += [m.body for m in msgs]
        backend.queue.delete(job, [m.receipt for m in msgs])
    return out


def test_send_receive_delete(backend: Backend) -> None:
    backend.queue.create_queue("j1")
    backend.queue.create_queue("j1")  # idempotent
    backend.queue.send("j1", [f"task-{i:06d}" for i in range(25)])
    assert backend.queue.approximate_count("j1") == 25
    assert sorted(_drain(backend, "j1")) == [f"task-{i:06d}" for i in range(25)]
    assert backend.queue.approximate_count("j1") == 0


def test_visibility_hides_then_returns(backend: Backend) -> None:
    backend.queue.create_queue("j2")
    backend.queue.send("j2", ["a"])
    first = backend.queue.receive("j2", visibility_s=1)
    assert [m.body for m in first] == ["a"]
    assert backend.queue.receive("j2") == []
    again = backend.queue.receive("j2", wait_s=5)
    assert [m.body for m in again] == ["a"]
    # the first receipt is stale now: deleting with it must not remove the message
    backend.queue.delete("j2", [first[0].receipt])
    backend.queue.delete("j2", [again[0].receipt])
    assert backend.queue.approximate_count("j2") == 0


def test_delay(backend: Backend) -> None:
    backend.queue.create_queue("j3")
    backend.queue.send("j3", ["late"], delay_s=1)
    assert backend.queue.receive("j3") == []
    t0 = time.monotonic()
    got = backend.queue.receive("j3", wait_s=5)
    assert [m.body for m in got] == ["late"]
    assert time.monotonic() - t0 < 5


def test_queues_are_per_job_and_deleted(backend: Backend) -> None:
    backend.queue.create_queue("a")
    backend.queue.create_queue("b")
    backend.queue.send("a", ["x"])
    assert backend.queue.receive("b") == []
    backend.queue.delete_queue("a")
    with pytest.raises(SlurmctlError):
        backend.queue.send("a", ["y"])
