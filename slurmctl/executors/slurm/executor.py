"""The Slurm executor: W pilot workers as job arrays, finalize as a job that depends on them.

Nothing stays alive on the login node: `run` reconciles, queues what the job needs and returns.
The same `advance` runs in the finalize job, which resubmits workers (and itself) while work
remains and no worker is alive: time limits, lost nodes and cancelled elements all end there.
Every decision is taken under the job-level lease, so a `resume` and a finalize never both act.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmctl import hooks
from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.errors import JobStateError, SlurmctlError
from slurmctl.executors.base import Executor
from slurmctl.executors.slurm import scripts
from slurmctl.executors.slurm.sbatch import Element, SlurmClient
from slurmctl.executors.slurm.states import SlurmState
from slurmctl.finalize.finalize import finalize
from slurmctl.jobs import append_history, get_job, load_definition
from slurmctl.layout import JobLayout
from slurmctl.states import JobStatus

log = logging.getLogger("slurmctl.slurm")

LEASE_TTL_S = 120.0
LEASE_WAIT_S = 180.0
MAX_FRUITLESS_RUNS = 3
EXIT_STOPPED = 143


@dataclass
class Advance:
    """What one `advance` found and did, for the CLI to say."""

    status: JobStatus
    work_left: int = 0
    submitted: list[str] = field(default_factory=list)
    """Arrays of workers submitted now."""
    finalize: str | None = None
    """The finalize job submitted now."""
    alive: list[Element] = field(default_factory=list)
    """Workers already queued or running (nothing submitted for them)."""
    waiting: list[str] = field(default_factory=list)
    """Finalize jobs already queued."""


@dataclass
class SlurmIds:
    """The job's Slurm ids, from jobs/<id>/manifest.json."""

    arrays: list[str]
    finalize: list[str]

    @property
    def all(self) -> list[str]:
        return self.arrays + self.finalize


def read_manifest(backend: Backend, job_id: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = backend.objects.get_json(JobLayout(job_id).manifest)  # type: ignore[assignment]
    except ObjectNotFound:
        return {}
    return doc


def slurm_ids(backend: Backend, job_id: str) -> SlurmIds:
    runs = read_manifest(backend, job_id).get("slurm_runs", [])
    return SlurmIds(
        [a for r in runs for a in r.get("arrays", [])],
        [r["finalize"] for r in runs if r.get("finalize")],
    )


def slurm_summary(
    backend: Backend, job_id: str, client: SlurmClient | None = None
) -> dict[str, Any]:
    """For `status`: the Slurm ids, and how many workers are running or queued (None when
    Slurm cannot be asked)."""
    doc = read_manifest(backend, job_id)
    ids = slurm_ids(backend, job_id)
    out: dict[str, Any] = {
        "array_id": doc.get("slurm_array_id"),
        "job_ids": doc.get("slurm_job_ids", []),
        "workers_running": None,
        "workers_queued": None,
        "finalize_queued": None,
    }
    try:
        elements = (client or SlurmClient()).elements(ids.all)
    except SlurmctlError as e:
        out["error"] = str(e)
        return out
    workers = [e for e in elements if e.job_id in ids.arrays and e.state.alive]
    running = sum(e.state is SlurmState.RUNNING for e in workers)
    out["workers_running"] = running
    out["workers_queued"] = len(workers) - running
    out["finalize_queued"] = [
        e.job_id for e in elements if e.job_id in ids.finalize and e.state.alive
    ]
    return out


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(
        self,
        backend: Backend,
        root: Path,
        *,
        client: SlurmClient | None = None,
        own_id: str | None = None,
    ) -> None:
        self.backend = backend
        self.root = root.absolute()
        self.client = client or SlurmClient()
        self.own_id = own_id
        """The finalize job we run in, if any: not a job to wait for."""
        self.holder = f"slurm-{socket.gethostname()}-{os.getpid()}"

    def log_dir(self, job_id: str) -> Path:
        return self.root / "logs" / job_id

    # --- Executor ---------------------------------------------------------------------------
    def run(self, job_id: str) -> JobStatus:
        return self.advance(job_id).status

    def cancel(self, job_id: str) -> None:
        """scancel every Slurm job of the job: TERM makes workers checkpoint and leave."""
        self.client.scancel([i for i in slurm_ids(self.backend, job_id).all if i != self.own_id])

    # --- the decision -----------------------------------------------------------------------
    def advance(self, job_id: str, *, operator: bool = False) -> Advance:
        """Reconcile; then queue workers + finalize if work remains and none is alive, or a
        finalize if workers are alive without one; or (phase done) let finalize aggregate.

        operator: asked by a person (submit, resume), not by a finalize job: never gives up.
        """
        with self._lease(job_id):
            try:
                out = self._advance(job_id, operator)
            finally:
                # after the arrays it queued are recorded: they count as the job's workers
                hooks.registry.after_finalize(self.backend, job_id)
            if self.own_id:
                append_history(
                    self.backend,
                    job_id,
                    "finalize",
                    slurm_job_id=self.own_id,
                    status=str(out.status),
                    work_left=out.work_left,
                    submitted=out.submitted,
                    finalize=out.finalize,
                )
            return out

    def _advance(self, job_id: str, operator: bool) -> Advance:
        result = finalize(self.backend, job_id, notify=False)
        if not result.work_left:
            return Advance(result.status)
        ids = slurm_ids(self.backend, job_id)
        elements = [e for e in self.client.elements(ids.all) if e.job_id != self.own_id]
        alive = [e for e in elements if e.job_id in ids.arrays and e.state.alive]
        waiting = sorted({e.job_id for e in elements if e.job_id in ids.finalize and e.state.alive})
        job = get_job(self.backend, job_id)
        if alive:
            out = Advance(job.status, result.work_left, alive=alive, waiting=waiting)
            if not waiting:  # its finalize was cancelled or failed: chain a new one
                out.finalize = self._submit_finalize(job_id, sorted({e.job_id for e in alive}))
                self._record(job_id, [], out.finalize, None)
            return out
        if not operator and self._give_up(job_id, elements):
            return Advance(JobStatus.FAILED)
        # a retry phase's backoff: its workers wait in the queue, not on a node
        begin_at: float = getattr(result, "begin_at", 0.0)
        begin_s = math.ceil(begin_at - time.time()) if begin_at > time.time() + 1 else None
        return self._submit(job_id, result.work_left, operator, begin_s)

    def _submit(self, job_id: str, work_left: int, operator: bool, begin_s: int | None) -> Advance:
        job = get_job(self.backend, job_id)
        definition = load_definition(self.backend, job_id)
        count = min(job.workers, work_left)
        logs = self.log_dir(job_id)
        logs.mkdir(parents=True, exist_ok=True)
        script = self._script(job_id, "worker.sbatch")
        arrays = []
        plan = scripts.split(
            count, self.client.max_array_size(), definition.slurm.array_parallelism
        )
        fin: str | None = None
        try:
            for size, parallelism in plan:
                args = scripts.worker_args(
                    definition.slurm, job_id, logs, size, parallelism, begin_s
                )
                arrays.append(self.client.sbatch(args, script))
            fin = self._submit_finalize(job_id, arrays)
        except SlurmctlError:
            if arrays:  # record what is queued: `resume` chains a finalize to it
                self._record(job_id, arrays, None, count, operator)
            raise
        run = job.run
        if job.status in (JobStatus.PENDING, JobStatus.AGGREGATING):
            run += 1
            self.backend.state.update_job(
                job_id, {"status": JobStatus.RUNNING, "run": run, "updated_at": time.time()}
            )
        self._record(job_id, arrays, fin, count, operator)
        append_history(
            self.backend,
            job_id,
            "workers",
            executor="slurm",
            array=arrays[0],
            arrays=arrays,
            count=count,
            finalize=fin,
            run=run,
            begin_in_s=begin_s,
        )
        log.info("job %s: %d workers in arrays %s, finalize %s", job_id, count, arrays, fin)
        status = get_job(self.backend, job_id).status
        return Advance(status, work_left, submitted=arrays, finalize=fin)

    def _submit_finalize(self, job_id: str, after: list[str]) -> str:
        definition = load_definition(self.backend, job_id)
        args = scripts.finalize_args(definition.slurm, job_id, self.log_dir(job_id), after)
        return self.client.sbatch(args, self._script(job_id, "finalize.sbatch"))

    def _script(self, job_id: str, name: str) -> Path:
        """Rendered into <root>/slurm/<job_id>/: sbatch copies it at submission."""
        path = self.root / "slurm" / job_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        url = self.backend.url if self.backend.kind != "local" else None
        text = scripts.render(name, scripts.Launch.here(self.root, url), job_id)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return path

    # --- bookkeeping ------------------------------------------------------------------------
    def _record(
        self,
        job_id: str,
        arrays: list[str],
        fin: str | None,
        workers: int | None,
        operator: bool = False,
    ) -> None:
        """Read-modify-write of the job manifest (under the job lease): every Slurm id."""
        key = JobLayout(job_id).manifest
        doc = read_manifest(self.backend, job_id)
        counters = self.backend.state.counters(job_id)
        doc.setdefault("slurm_runs", []).append(
            {
                "arrays": arrays,
                "finalize": fin,
                "workers": workers,
                "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "done_before": _done(counters),
                "operator": operator,
            }
        )
        ids = doc.setdefault("slurm_job_ids", [])
        ids.extend(i for i in [*arrays, fin] if i and i not in ids)
        if not doc.get("slurm_array_id") and arrays:
            doc["slurm_array_id"] = arrays[0]
        self.backend.objects.put_json(key, doc)

    def _give_up(self, job_id: str, elements: list[Element]) -> bool:
        """FAILED after MAX_FRUITLESS_RUNS runs in a row whose workers neither committed
        anything nor were stopped from outside (time limit, requeue, scancel: no one's fault)."""
        doc = read_manifest(self.backend, job_id)
        runs = [r for r in doc.get("slurm_runs", []) if r.get("arrays")]
        done = _done(self.backend.state.counters(job_id))
        fruitless = 0
        for run in reversed(runs):
            if run.get("done_before") != done:
                break
            mine = [e for e in elements if e.job_id in run["arrays"]]
            if not mine or any(_stopped(e) for e in mine):
                break
            fruitless += 1
            if run.get("operator"):  # a resume starts the count afresh
                break
        if fruitless < MAX_FRUITLESS_RUNS:
            return False
        codes = sorted({e.exit_code for e in elements if e.exit_code is not None})
        reason = (
            f"Slurm workers ended (exit codes {codes}) {fruitless} times without progress; "
            f"see {self.log_dir(job_id)}"
        )
        self.backend.state.update_job(
            job_id, {"status": JobStatus.FAILED, "error": reason, "updated_at": time.time()}
        )
        append_history(self.backend, job_id, "failed", reason=reason)
        return True

    @contextmanager
    def _lease(self, job_id: str) -> Iterator[None]:
        """The job-level lease, kept alive while we act (aggregation may take a while)."""
        state = self.backend.state
        deadline = time.monotonic() + LEASE_WAIT_S
        while not state.acquire_job_lease(job_id, self.holder, LEASE_TTL_S, time.time()):
            if time.monotonic() > deadline:
                raise JobStateError(
                    f"job {job_id} is being acted on by another slurmctl process; "
                    f"`slurmctl status {job_id}` follows it"
                )
            time.sleep(0.5)
        stop = threading.Event()

        def keep() -> None:
            while not stop.wait(LEASE_TTL_S / 3):
                state.acquire_job_lease(job_id, self.holder, LEASE_TTL_S, time.time())

        keeper = threading.Thread(target=keep, daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()
            state.release_job_lease(job_id, self.holder)


def _stopped(e: Element) -> bool:
    return (
        e.state.stopped_from_outside
        or e.exit_code == EXIT_STOPPED
        or e.state in (SlurmState.UNKNOWN, SlurmState.OUT_OF_MEMORY)
    )


def _done(counters: dict[str, int]) -> int:
    return counters.get("items.total", 0) - counters.get("items.pending", 0)
