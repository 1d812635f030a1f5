"""The local executor: W `slurmctl worker` subprocesses on this machine, then finalize, in the
foreground until the job ends. Holding the job-level lease meanwhile keeps a second `resume`
from starting a second set of workers.

It waits on its workers, so it knows at once when one dies: the dead worker's lease is freed
(the base class's `release_dead`) and a new worker takes its place, instead of the task waiting
a lease TTL while the remaining workers idle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmctl.backends import Backend
from slurmctl.executors.base import Executor, Liveness, Marker, Run, RunEnd, StartRequest
from slurmctl.jobs import SUPERVISOR_ENV, append_history, breaker_reason, get_job
from slurmctl.states import JobStatus

log = logging.getLogger("slurmctl.executor")

POLL_S = 0.25
STOP_GRACE_S = 60.0
STOPPED_CODES = frozenset({143, -signal.SIGTERM, -signal.SIGINT, 130})
"""A worker stopped by a signal at a checkpoint (or before it could install its handler)."""

Progress = Callable[[dict[str, int]], None]


@dataclass
class LocalRun:
    """One start of workers: their processes and the marker they started from."""

    marker: Marker
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def as_run(self) -> Run:
        codes = [p.returncode for p in self.procs]
        if any(c is None for c in codes):
            return Run(self.marker, RunEnd.RUNNING)
        done = tuple(c for c in codes if c is not None)
        if all(c == 0 for c in done):
            end = RunEnd.OK
        elif any(c in STOPPED_CODES for c in done):
            end = RunEnd.STOPPED
        else:
            end = RunEnd.FAILED
        return Run(self.marker, end, done)


class LocalExecutor(Executor[Liveness, list[str]]):
    name = "local"
    max_fruitless = 5
    top_up = True

    def __init__(
        self,
        backend: Backend,
        root: Path,
        *,
        progress: Progress | None = None,
        worker_args: list[str] | None = None,
    ) -> None:
        super().__init__(backend, root)
        self.progress = progress
        self.worker_args = list(worker_args or [])
        self.runs: list[LocalRun] = []
        self.dead: set[int] = set()
        """Pids of the workers this executor saw exit (reaped: certainly gone)."""
        self.stopping = threading.Event()
        """Set by another thread (a streaming submit refused or interrupted): stop the workers
        at a checkpoint and return."""

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [p for r in self.runs for p in r.procs]

    # --- Executor -----------------------------------------------------------------------------
    def run(self, job_id: str) -> JobStatus:
        with self.job_lease(job_id):
            try:
                return self._drive(job_id)
            except KeyboardInterrupt:
                self.stop_workers()
                raise

    def _drive(self, job_id: str) -> JobStatus:
        while True:
            if self.stopping.is_set():
                self.stop_workers()
                return JobStatus.STOPPED
            step = self.step(job_id)
            if step.status.terminal or not (step.work_left or step.submitting):
                self._report(job_id)
                self._reap_all()
                return step.status
            if step.submitting and not any(p.poll() is None for p in self.procs):
                # streaming submit, no task to run yet and no worker: wait for the next ones
                self._report(job_id)
                self.stopping.wait(POLL_S)
                continue
            if self._wait_for_an_exit(job_id):
                return JobStatus.PAUSED  # the breaker: `resume` carries on

    def liveness(self, job_id: str) -> Liveness:
        alive = 0
        for p in self.procs:
            if p.poll() is None:
                alive += 1
            else:
                self.dead.add(p.pid)
        host, dead = socket.gethostname(), self.dead
        return Liveness(
            alive,
            lambda h: h.host == host and h.pid in dead,
            [r.as_run() for r in self.runs],
        )

    def start_workers(self, job_id: str, request: StartRequest) -> list[str]:
        self._sleep_until(job_id, request.begin_at)
        number = len(self.runs) + 1
        run = LocalRun(request.marker)
        logs = self.log_dir(job_id)
        logs.mkdir(parents=True, exist_ok=True)
        ids = [f"local-{number}-{i}" for i in range(request.count)]
        for worker_id in ids:
            run.procs.append(self._spawn(job_id, worker_id, logs))
        self.runs.append(run)
        append_history(
            self.backend, job_id, "workers", executor="local", count=len(ids), run=number
        )
        return ids

    def summary(self, job_id: str) -> dict[str, Any]:
        procs = self.procs
        return {
            "workers_running": sum(p.poll() is None for p in procs),
            "workers_started": len(procs),
            "workers_lost": len(self.dead),
        }

    def cancel(self, job_id: str) -> None:
        self.stop_workers()

    # --- processes ----------------------------------------------------------------------------
    def _spawn(self, job_id: str, worker_id: str, logs: Path) -> subprocess.Popen[bytes]:
        where = ["--backend", self.backend.url] if self.backend.kind != "local" else []
        cmd = [
            sys.executable,
            "-m",
            "slurmctl",
            "--root",
            str(self.root),
            *where,
            "worker",
            "--job-id",
            job_id,
            "--worker-id",
            worker_id,
            *self.worker_args,
        ]
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}  # orphans stop (jobs.py)
        with open(logs / f"{worker_id}.log", "ab") as out:
            return subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def _wait_for_an_exit(self, job_id: str) -> bool:
        """Until one of the workers exits (returns at once: a dead worker's lease is freed and
        its place taken without a poll's delay). True when the circuit breaker paused the job:
        its workers are then stopped at a checkpoint, and the foreground command ends."""
        while alive := [p for p in self.procs if p.poll() is None]:
            if self.stopping.is_set():
                break
            self._report(job_id)
            if breaker_reason(get_job(self.backend, job_id)):
                log.warning("%s: the breaker paused the job: stopping the workers", job_id)
                self.stop_workers()
                return True
            before = len(alive)
            with contextlib.suppress(subprocess.TimeoutExpired):
                alive[0].wait(timeout=POLL_S)
            if sum(p.poll() is None for p in self.procs) < before:
                break
        self._report(job_id)
        return False

    def _reap_all(self) -> None:
        """The job ended: the workers leave by themselves within a poll; wait for them."""
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=STOP_GRACE_S)

    def _sleep_until(self, job_id: str, when: float) -> None:
        if when > time.time():
            log.info(
                "%s: phase workers start in %.0f s (retry backoff)", job_id, when - time.time()
            )
        while (left := when - time.time()) > 0:
            self._report(job_id)
            time.sleep(min(POLL_S, left))

    def _report(self, job_id: str) -> None:
        if self.progress is not None:
            self.progress(self.backend.state.counters(job_id, metrics=False, running=False))

    def stop_workers(self) -> None:
        """Ask every worker to stop at a checkpoint, and wait for them."""
        procs = self.procs
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
