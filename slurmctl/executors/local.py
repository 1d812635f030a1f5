"""The local executor: W `slurmctl worker` subprocesses on this machine, then finalize, in the
foreground until the job ends. Holding the job-level lease meanwhile keeps a second `resume`
from starting a second set of workers."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from slurmctl.backends import Backend
from slurmctl.errors import JobBusy
from slurmctl.executors.base import Executor
from slurmctl.finalize.finalize import finalize
from slurmctl.jobs import append_history, get_job, live_lease_holder, local_holder
from slurmctl.states import JobStatus

log = logging.getLogger("slurmctl.executor")

LEASE_TTL_S = 30.0
POLL_S = 0.25
MAX_FRUITLESS_RUNS = 5
STOP_GRACE_S = 60.0

Progress = Callable[[dict[str, int]], None]


class LocalExecutor(Executor):
    name = "local"

    def __init__(
        self,
        backend: Backend,
        root: Path,
        *,
        progress: Progress | None = None,
        worker_args: list[str] | None = None,
    ) -> None:
        self.backend = backend
        self.root = root
        self.progress = progress
        self.worker_args = list(worker_args or [])
        self.holder = local_holder()
        self.procs: list[subprocess.Popen[bytes]] = []

    def log_dir(self, job_id: str) -> Path:
        return self.root / "logs" / job_id

    def _spawn(self, job_id: str, count: int, run: int) -> None:
        logs = self.log_dir(job_id)
        logs.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            worker_id = f"local-{run}-{i}"
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
            with open(logs / f"{worker_id}.log", "ab") as out:
                self.procs.append(
                    subprocess.Popen(
                        cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                    )
                )

    def _keep_lease(self, job_id: str, stop: threading.Event) -> None:
        while not stop.wait(LEASE_TTL_S / 3):
            self.backend.state.acquire_job_lease(job_id, self.holder, LEASE_TTL_S, time.time())

    def run(self, job_id: str) -> JobStatus:
        state = self.backend.state
        live_lease_holder(self.backend, job_id)  # frees the lease of a dead holder
        if not state.acquire_job_lease(job_id, self.holder, LEASE_TTL_S, time.time()):
            raise JobBusy(
                f"job {job_id} is being run by another slurmctl process; `slurmctl status "
                f"{job_id}` follows it"
            )
        stop = threading.Event()
        keeper = threading.Thread(target=self._keep_lease, args=(job_id, stop), daemon=True)
        keeper.start()
        try:
            return self._drive(job_id)
        finally:
            stop.set()
            state.release_job_lease(job_id, self.holder)

    def _drive(self, job_id: str) -> JobStatus:
        fruitless = 0
        run = 0
        while True:
            result = finalize(self.backend, job_id)
            if not result.work_left:
                self._report(job_id)
                return result.status
            wait = result.begin_at - time.time()
            if wait > 0:
                log.info("%s: phase workers start in %.0f s (retry backoff)", job_id, wait)
                self._sleep_until(job_id, result.begin_at)
            job = get_job(self.backend, job_id)
            if job.status in (JobStatus.PENDING, JobStatus.AGGREGATING):
                self.backend.state.update_job(
                    job_id, {"status": JobStatus.RUNNING, "run": job.run + 1}
                )
            before = self._done(job_id)
            run += 1
            self._spawn(job_id, min(job.workers, result.work_left), run)
            append_history(
                self.backend, job_id, "workers", executor="local", count=len(self.procs), run=run
            )
            codes = self._wait(job_id)
            job = get_job(self.backend, job_id)
            if job.status.terminal:
                return job.status
            if self._done(job_id) == before and any(codes):
                fruitless += 1
                if fruitless >= MAX_FRUITLESS_RUNS:
                    reason = (
                        f"workers exited with codes {sorted(set(codes))} {fruitless} times "
                        f"without progress; see {self.log_dir(job_id)}"
                    )
                    self.backend.state.update_job(
                        job_id, {"status": JobStatus.FAILED, "error": reason}
                    )
                    append_history(self.backend, job_id, "failed", reason=reason)
                    return JobStatus.FAILED
            else:
                fruitless = 0

    def _sleep_until(self, job_id: str, when: float) -> None:
        while (left := when - time.time()) > 0:
            self._report(job_id)
            time.sleep(min(POLL_S, left))

    def _done(self, job_id: str) -> int:
        c = self.backend.state.counters(job_id)
        return c.get("items.total", 0) - c.get("items.pending", 0)

    def _report(self, job_id: str) -> None:
        if self.progress is not None:
            self.progress(self.backend.state.counters(job_id))

    def _wait(self, job_id: str) -> list[int]:
        try:
            while alive := [p for p in self.procs if p.poll() is None]:
                self._report(job_id)
                # returns as soon as it exits: finalize starts without a poll's delay
                with contextlib.suppress(subprocess.TimeoutExpired):
                    alive[0].wait(timeout=POLL_S)
        except KeyboardInterrupt:
            self.stop_workers()
            raise
        self._report(job_id)
        codes = [p.returncode for p in self.procs]
        self.procs = []
        return codes

    def stop_workers(self) -> None:
        """Ask every worker to stop at a checkpoint, and wait for them."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def cancel(self, job_id: str) -> None:
        self.stop_workers()
