"""The executor: how a job's workers are kept going, written once over what differs per executor.

Every executor makes a job progress the same way; only starting workers, telling which of them
are alive or dead, and summarising them differ (local subprocesses, Slurm array elements):

    step(job_id)                          -- written once, under the job-level lease
    +------------------------------------------------------------------------------------+
    |  finalize ----------> phase done: next phase, aggregate, COMPLETED / FAILED          |
    |     | work left                                                                      |
    |  liveness() <------------------------------------------------- the executor's       |
    |     | workers alive, holders known dead, runs so far                                 |
    |  release_dead(task, token) for each lease a dead holder has: PENDING now, a loss     |
    |     | counted (no task waits a lease TTL for a worker known dead)                    |
    |  enough workers alive? ---- yes ---> while_alive() <------------ the executor's       |
    |     | no                                                                             |
    |  fruitless rule: the last runs ended by faults, and since they started no item was   |
    |     | done and no lease freed -> FAILED                                              |
    |  start_workers(request) <---------------------------------------- the executor's      |
    +------------------------------------------------------------------------------------+

A run is one start of workers. It is fruitless when its workers all ended, some by a fault (not
a clean exit, not a stop from outside), and the job's marker (items done, worker losses) is what
it was when the run started. A run whose worker died holding a lease is never fruitless: the
loss counted on the task is what lets poison isolation (`retry.max_task_failures`) find the item
that kills its workers.
"""

from __future__ import annotations

import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from slurmctl import lifecycle
from slurmctl.backends import Backend
from slurmctl.backends.reconcile import release_dead_holders
from slurmctl.backends.statestore import ITEMS_PENDING, ITEMS_TOTAL, WORKERS_LOST
from slurmctl.errors import JobBusy, SlurmctlError
from slurmctl.finalize.finalize import finalize
from slurmctl.holders import Holder
from slurmctl.jobs import JobLease, get_job
from slurmctl.states import JobStatus

log = logging.getLogger("slurmctl.executor")


@dataclass(frozen=True)
class Marker:
    """How far the job got: items done and leases freed from dead holders."""

    done: int
    lost: int

    @classmethod
    def of(cls, counters: dict[str, int]) -> Marker:
        done = counters.get(ITEMS_TOTAL, 0) - counters.get(ITEMS_PENDING, 0)
        return cls(done, counters.get(WORKERS_LOST, 0))


class RunEnd(Enum):
    RUNNING = "running"
    """Some of its workers are still alive (or queued): not judged yet."""
    OK = "ok"
    """Every worker left on its own (its phase had no task left)."""
    STOPPED = "stopped"
    """Stopped from outside (a signal, a time limit, scancel, gone from Slurm): no one's fault."""
    FAILED = "failed"
    """Every worker ended, some by a fault (crash, kill, unreachable store)."""


@dataclass(frozen=True)
class Run:
    """One start of workers, as the fruitless rule sees it."""

    marker: Marker
    """The job's marker when the run started."""
    end: RunEnd
    codes: tuple[int, ...] = ()
    """Its workers' exit codes, where known."""
    operator: bool = False
    """Started by a person (submit, resume): the count of fruitless runs starts afresh."""


@dataclass
class Liveness:
    """What an executor knows of its workers now."""

    alive: int
    """Workers of the job running or queued."""
    dead: Callable[[Holder], bool]
    """Whether a lease holder is known dead (the base also counts a process gone from this
    host)."""
    runs: list[Run] = field(default_factory=list)
    """Every run so far, oldest first."""


@dataclass(frozen=True)
class StartRequest:
    count: int
    begin_at: float
    """A retry phase's backoff: no worker claims before this time."""
    operator: bool
    marker: Marker
    run: int
    """The job's run number this start belongs to (a new one when the job was PENDING or
    AGGREGATING)."""


LiveT = TypeVar("LiveT", bound=Liveness)
StartT = TypeVar("StartT")


@dataclass
class Step(Generic[LiveT, StartT]):
    """What one `step` found and did."""

    status: JobStatus
    work_left: int = 0
    live: LiveT | None = None
    freed: int = 0
    """Leases of dead holders freed now."""
    started: StartT | None = None
    """What start_workers returned, when workers were started now."""
    submitting: bool = False
    """Submit is still writing the phase's tasks: not done even with no work left now."""


class Executor(ABC, Generic[LiveT, StartT]):
    name: ClassVar[str]
    max_fruitless: ClassVar[int]
    """Fruitless runs in a row after which the job FAILS."""
    top_up: ClassVar[bool] = False
    """Start workers whenever fewer than needed are alive (local: a dead worker is replaced at
    once); otherwise only when none is alive (Slurm: the finalize job resubmits)."""
    finalize_alerts: ClassVar[bool] = True
    """Whether finalize runs the `after_finalize` hooks (alerts); False: the executor does, once
    it has acted."""
    lease_ttl_s: ClassVar[float] = 30.0
    lease_wait_s: ClassVar[float] = 0.0
    """How long to wait for the job lease another process holds before giving up."""

    def __init__(self, backend: Backend, root: Path) -> None:
        self.backend = backend
        self.root = root
        self.holder = f"{self.name}-{socket.gethostname()}-{os.getpid()}"
        """This process's name on the job-level lease (host and pid: a dead one is recognisable,
        see jobs.live_lease_holder)."""

    def log_dir(self, job_id: str) -> Path:
        return self.root / "logs" / job_id

    # --- what each executor supplies ---------------------------------------------------------
    @abstractmethod
    def run(self, job_id: str) -> JobStatus:
        """Make the job progress: the local executor to its end in the foreground; the Slurm
        executor queues what the job needs and returns."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job's workers."""

    @abstractmethod
    def liveness(self, job_id: str) -> LiveT:
        """The job's workers now: how many are alive, which lease holders are dead, the runs."""

    @abstractmethod
    def start_workers(self, job_id: str, request: StartRequest) -> StartT:
        """Start request.count workers (not before request.begin_at) and remember the run with
        the marker it started from."""

    @abstractmethod
    def summary(self, job_id: str) -> dict[str, Any]:
        """For `status`: the executor's own view of the workers."""

    def busy(self, job_id: str) -> SlurmctlError:
        """The error when another process holds the job lease."""
        return JobBusy(
            f"job {job_id} is being run by another slurmctl process; `slurmctl status "
            f"{job_id}` follows it"
        )

    def while_alive(self, job_id: str, live: LiveT) -> None:
        """Called when enough workers are alive and nothing is started."""

    # --- written once ------------------------------------------------------------------------
    def step(self, job_id: str, *, operator: bool = False) -> Step[LiveT, StartT]:
        """One decision (the caller holds the job lease): see the module docstring.

        operator: asked by a person (submit, resume), not by the executor's own loop: never
        gives up.
        """
        result = finalize(self.backend, job_id, notify=self.finalize_alerts)
        if not result.work_left:  # done, or (streaming submit) nothing to run yet
            return Step(result.status, submitting=result.submitting)
        job = get_job(self.backend, job_id)
        live = self.liveness(job_id)
        freed = self.release_dead(job_id, job.phase, live)
        step: Step[LiveT, StartT] = Step(
            job.status, result.work_left, live, freed, submitting=result.submitting
        )
        # while submit still writes tasks, all the job's workers: more work is on its way
        wanted = job.workers if result.submitting else min(job.workers, result.work_left)
        if live.alive and (not self.top_up or live.alive >= wanted):
            self.while_alive(job_id, live)
            return step
        marker = Marker.of(self.backend.state.counters(job_id))
        if not operator and self._give_up(job_id, live.runs, marker):
            step.status = get_job(self.backend, job_id).status  # FAILED, or what came first
            return step
        run = job.run + 1 if job.status in (JobStatus.PENDING, JobStatus.AGGREGATING) else job.run
        request = StartRequest(wanted - live.alive, result.begin_at, operator, marker, run)
        step.started = self.start_workers(job_id, request)
        if run != job.run:
            lifecycle.start_run(self.backend, job_id, run, from_status=job.status)
        step.status = get_job(self.backend, job_id).status
        return step

    def release_dead(self, job_id: str, phase: str, live: Liveness) -> int:
        """Free at once the leases of holders the executor knows dead, or whose process is gone
        from this host."""
        return len(
            release_dead_holders(
                self.backend, job_id, phase, lambda h: live.dead(h) or h.process_gone()
            )
        )

    def _give_up(self, job_id: str, runs: list[Run], now: Marker) -> bool:
        count, codes = fruitless(runs, now, self.max_fruitless)
        if count < self.max_fruitless:
            return False
        reason = self.fruitless_reason(job_id, count, sorted(codes))
        lifecycle.fail(self.backend, job_id, reason)
        log.error("%s: %s", job_id, reason)
        return True

    def fruitless_reason(self, job_id: str, count: int, codes: list[int]) -> str:
        return (
            f"workers exited with codes {codes} {count} times without progress; "
            f"see {self.log_dir(job_id)}"
        )

    @contextmanager
    def job_lease(self, job_id: str) -> Iterator[None]:
        """The job-level lease, kept alive while we act: a second `resume` (or a finalize job)
        never acts at the same time. A dead holder's lease on this host is freed first."""
        lease = JobLease(
            self.backend,
            job_id,
            holder=self.holder,
            ttl_s=self.lease_ttl_s,
            wait_s=self.lease_wait_s,
            busy=self.busy(job_id),
        )
        with lease:
            yield


def fruitless(runs: list[Run], now: Marker, limit: int | None = None) -> tuple[int, set[int]]:
    """How many of the latest runs were fruitless in a row (at most limit), and their exit
    codes. Runs still going are skipped (not judged yet); an operator's run is the last one
    counted."""
    count, codes = 0, set()
    for run in reversed(runs):
        if limit is not None and count >= limit:
            break
        if run.end is RunEnd.RUNNING:
            continue
        if run.end is not RunEnd.FAILED or run.marker != now:
            break
        count += 1
        codes |= set(run.codes)
        if run.operator:
            break
    return count, codes
