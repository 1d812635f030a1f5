"""Hooks: how the core tells observers what happened without knowing who listens.

The worker, finalize and the executors call the installed hooks at fixed points (a worker
started, a task committed, finalize ran, ...). Metrics, the worker's JSON log and alerts are
observers that implement the hooks they need (`slurmctl.observe`); the CLI entry point, the top
layer, installs them (`slurmctl.wiring`). So nothing in the core imports `slurmctl.observe`'s
observers, the observers do not import each other, and a process that installs none (a test, a
library user) runs jobs with the same outcome, only unobserved.

The shape is dramatiq's middleware: a base class whose methods are no-ops, observers overriding
a subset, and a registry that calls each installed observer in order. Hooks run in the core's
thread, synchronously; an observer handles its own failures (observability must never fail a
task or a job), the core does not guard it.

Where each hook is called, and what it may do, is in docs/architecture.md ("Observability").
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmctl.backends import Backend
from slurmctl.backends.statestore import TaskCommit, TaskRecord


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process of one job, as the hooks see it."""

    backend: Backend
    job_id: str
    worker_id: str
    scratch_root: Path
    secrets: Sequence[str] = ()
    """The job's resolved secret values: what a log must never contain."""
    ctx: Any = None
    """The handler context (`worker.context.Context`): its `task_id` is the task being run."""


@dataclass
class TaskCommitted:
    """A task's fenced commit has counted; its manifest is about to be or has been written."""

    backend: Backend
    job_id: str
    worker_id: str
    task: TaskRecord
    commit: TaskCommit
    ctx: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    """The task manifest's `metrics`: the runner's figures; `before_task_manifest` adds more."""


class Hooks:
    """The hook interface. Every method is a no-op; an observer overrides what it needs."""

    def after_worker_start(self, worker: WorkerInfo) -> None:
        """The worker loaded the job and its handler, before `setup()` and the first claim."""

    def on_worker_poll(self, worker: WorkerInfo) -> None:
        """Each pass of the worker's claim loop (often: an observer keeps its own pace)."""

    def before_worker_stop(self, worker: WorkerInfo) -> None:
        """The worker is leaving (done, stopped or failed), after `teardown()`."""

    def before_task_manifest(self, task: TaskCommitted) -> None:
        """After the commit, before the task manifest: may add figures to `task.metrics`."""

    def after_task_committed(self, task: TaskCommitted) -> None:
        """After the task manifest is written (the commit counted already)."""

    def after_job_paused(self, backend: Backend, job_id: str, reason: str) -> None:
        """The job paused itself (the circuit breaker tripped), with this reason."""

    def after_finalize(self, backend: Backend, job_id: str) -> None:
        """Finalize ran and its result was acted on (workers queued, phase flipped, job ended).

        Called by `finalize`, or by the executor that called it with `notify=False` once it has
        queued the workers the result asked for."""


class Registry(Hooks):
    """The installed observers, called in the order they were installed."""

    def __init__(self) -> None:
        self._hooks: tuple[Hooks, ...] = ()
        self._lock = threading.Lock()

    @property
    def installed(self) -> tuple[Hooks, ...]:
        return self._hooks

    def install(self, *hooks: Hooks) -> None:
        """Add observers; one already installed (by type) is not added twice."""
        with self._lock:
            have = {type(h) for h in self._hooks}
            self._hooks += tuple(h for h in hooks if type(h) not in have)

    def clear(self) -> None:
        with self._lock:
            self._hooks = ()

    def after_worker_start(self, worker: WorkerInfo) -> None:
        for h in self._hooks:
            h.after_worker_start(worker)

    def on_worker_poll(self, worker: WorkerInfo) -> None:
        for h in self._hooks:
            h.on_worker_poll(worker)

    def before_worker_stop(self, worker: WorkerInfo) -> None:
        for h in self._hooks:
            h.before_worker_stop(worker)

    def before_task_manifest(self, task: TaskCommitted) -> None:
        for h in self._hooks:
            h.before_task_manifest(task)

    def after_task_committed(self, task: TaskCommitted) -> None:
        for h in self._hooks:
            h.after_task_committed(task)

    def after_job_paused(self, backend: Backend, job_id: str, reason: str) -> None:
        for h in self._hooks:
            h.after_job_paused(backend, job_id, reason)

    def after_finalize(self, backend: Backend, job_id: str) -> None:
        for h in self._hooks:
            h.after_finalize(backend, job_id)


registry = Registry()
"""The process's hooks: the core calls `registry.<hook>(...)`, the CLI installs observers."""
