"""The hooks the core calls (slurmctl/hooks.py): when each is called, in what order, what an
observer may add to a task manifest, and that a job needs no observer to complete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmctl import hooks
from slurmctl.backends import Backend, open_local
from slurmctl.config import load_job_definition
from slurmctl.coordinator.submit import submit
from slurmctl.finalize.finalize import finalize
from slurmctl.observe import status
from slurmctl.states import JobStatus
from slurmctl.worker.runner import Worker
from tests.helpers import make_job, task_manifest


class Recorder(hooks.Hooks):
    """Writes down every hook call (the poll, which repeats, only counted)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.polls = 0

    def after_worker_start(self, worker: hooks.WorkerInfo) -> None:
        self.calls.append(("after_worker_start", worker.worker_id))

    def on_worker_poll(self, worker: hooks.WorkerInfo) -> None:
        self.polls += 1

    def before_task_manifest(self, task: hooks.TaskCommitted) -> None:
        task.metrics["seen_by_hook"] = task.task.task_id
        self.calls.append(("before_task_manifest", task.task.task_id))

    def after_task_committed(self, task: hooks.TaskCommitted) -> None:
        self.calls.append(("after_task_committed", task.task.task_id))

    def before_worker_stop(self, worker: hooks.WorkerInfo) -> None:
        self.calls.append(("before_worker_stop", worker.worker_id))

    def after_finalize(self, backend: Backend, job_id: str) -> None:
        self.calls.append(("after_finalize", job_id))


class Other(hooks.Hooks):
    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    def after_finalize(self, backend: Backend, job_id: str) -> None:
        self.log.append(("other", job_id))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    saved = hooks.registry.installed
    hooks.registry.clear()
    rec = Recorder()
    hooks.registry.install(rec)
    try:
        yield rec
    finally:
        hooks.registry.clear()
        hooks.registry.install(*saved)


def _submitted(tmp_path: Path) -> Backend:
    config = make_job(tmp_path / "job", 30, batch_size=10, workers=1)
    backend = open_local(tmp_path / "root")
    submit(backend, load_job_definition(config))
    return backend


def test_registry_calls_observers_in_install_order_once_each(tmp_path: Path) -> None:
    backend = open_local(tmp_path)
    registry = hooks.Registry()
    first = Recorder()
    second = Other(first.calls)  # both write to one list: the order of the calls shows
    registry.install(first, second)
    registry.install(Recorder(), Other([]))  # same types again: not added twice
    assert registry.installed == (first, second)
    registry.after_finalize(backend, "j")
    assert first.calls == [("after_finalize", "j"), ("other", "j")]
    registry.clear()
    registry.after_finalize(backend, "j")
    assert first.calls == [("after_finalize", "j"), ("other", "j")]


def test_worker_and_finalize_call_each_hook_at_its_point(
    tmp_path: Path, recorder: Recorder
) -> None:
    backend = _submitted(tmp_path)
    assert Worker(backend, "t1", "w1", tmp_path / "scratch", poll_s=0.05).run() == 0
    tasks = ["task-000000", "task-000001", "task-000002"]
    expected = [("after_worker_start", "w1")]
    for t in tasks:
        expected += [("before_task_manifest", t), ("after_task_committed", t)]
    expected.append(("before_worker_stop", "w1"))
    assert recorder.calls == expected
    assert recorder.polls >= len(tasks)
    # what before_task_manifest added is in the manifest; no metrics observer was installed
    for t in tasks:
        manifest = task_manifest(tmp_path / "root", "t1", t)
        assert manifest["metrics"]["seen_by_hook"] == t
        assert "io" not in manifest["metrics"]
    recorder.calls.clear()
    assert finalize(backend, "t1", notify=False).status == JobStatus.COMPLETED
    assert recorder.calls == []  # the caller runs after_finalize itself
    assert finalize(backend, "t1").status == JobStatus.COMPLETED
    assert recorder.calls == [("after_finalize", "t1")]


def test_status_shows_a_registered_executor_section_only(tmp_path: Path) -> None:
    backend = _submitted(tmp_path)
    assert "local" not in status.job_status(backend, "t1")
    status.register_summary("local", lambda b, job_id: {"job": job_id, "workers_alive": 0})
    try:
        assert status.job_status(backend, "t1")["local"] == {"job": "t1", "workers_alive": 0}
    finally:
        status._summaries.pop("local")
