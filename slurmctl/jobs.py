"""A job as the CLI and the workers see it: its record, stored definition and history."""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.statestore import JobRecord
from slurmctl.config import JobDefinition
from slurmctl.errors import JobBusy, JobNotFound, SlurmctlError
from slurmctl.ids import validate_job_id
from slurmctl.layout import JobLayout
from slurmctl.states import JobStatus


def get_job(backend: Backend, job_id: str) -> JobRecord:
    validate_job_id(job_id, where="job id")
    job = backend.state.get_job(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r} in this state root; `slurmctl list` shows the jobs")
    return job


def store_definition(backend: Backend, job_id: str, definition: JobDefinition) -> None:
    doc = {
        "definition": definition.to_stored_dict(),
        "config_file": str(definition.config_path),
    }
    backend.objects.put_json(JobLayout(job_id).definition, doc)


def stored_definition(backend: Backend, job_id: str) -> dict[str, Any] | None:
    """The stored definition's fields (as `to_stored_dict`), None when submit stored none."""
    try:
        doc: Any = backend.objects.get_json(JobLayout(job_id).definition)
    except ObjectNotFound:
        return None
    found = doc.get("definition") if isinstance(doc, dict) else None
    return found if isinstance(found, dict) else None


def load_definition(backend: Backend, job_id: str) -> JobDefinition:
    """The definition as submitted (secrets still `${NAME}`), bound to its original folder."""
    try:
        doc: Any = backend.objects.get_json(JobLayout(job_id).definition)
    except ObjectNotFound:
        raise JobNotFound(
            f"job {job_id!r} has no stored definition (submit did not finish)"
        ) from None
    definition = JobDefinition.model_validate_json(json.dumps(doc["definition"]))
    return definition.bind_source(Path(doc["config_file"]), b"")


def append_history(backend: Backend, job_id: str, action: str, **details: Any) -> None:
    """Runs and operator actions, one JSON line each: who, when, what.

    Read-modify-write of one object: the job lease (or the single CLI acting) serialises the
    processes that write it, and `_HISTORY_LOCK` the threads of one process (a streaming submit
    records `submit` from its cutting thread while the executor records `workers`: without the
    lock one of the two lines was lost now and then).
    """
    key = JobLayout(job_id).history
    entry = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "who": f"{_user()}@{socket.gethostname()}",
        "pid": os.getpid(),
        "action": action,
        **details,
    }
    with _HISTORY_LOCK:
        try:
            old = backend.objects.get_bytes(key)
        except ObjectNotFound:
            old = b""
        backend.objects.put_bytes(key, old + json.dumps(entry, sort_keys=True).encode() + b"\n")


_HISTORY_LOCK = threading.Lock()


SUPERVISOR_ENV = "SLURMCTL_SUPERVISOR_PID"
"""Set by the local executor for its workers: a worker whose parent is no longer this process
(the foreground `submit` was killed) stops at a checkpoint instead of running on unsupervised."""
BREAKER_PREFIX = "paused by the breaker: "
"""The job's `error` while the circuit breaker holds it paused (see worker/breaker.py)."""


def oom_killed(backend: Backend, job_id: str, task_id: str) -> bool:
    """Whether a worker holding this task was killed for its memory, as the Slurm executor
    recorded in the job manifest (`slurm_deaths`, executors/slurm/deaths.py)."""
    try:
        doc = backend.objects.get_json(JobLayout(job_id).manifest)
    except ObjectNotFound:
        return False
    deaths = doc.get("slurm_deaths", {}) if isinstance(doc, dict) else {}
    return any(d.get("kind") == "oom" and d.get("task") == task_id for d in deaths.values())


def breaker_reason(job: JobRecord) -> str | None:
    """The breaker's line while it holds the job paused, else None."""
    if job.paused and job.error and job.error.startswith(BREAKER_PREFIX):
        return job.error
    return None


def read_history(backend: Backend, job_id: str) -> list[dict[str, Any]]:
    try:
        data = backend.objects.get_bytes(JobLayout(job_id).history)
    except ObjectNotFound:
        return []
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def local_holder() -> str:
    """The job-lease holder name of this process (host and pid: a dead one is recognisable)."""
    return f"local-{socket.gethostname()}-{os.getpid()}"


def live_lease_holder(backend: Backend, job_id: str) -> str | None:
    """Who holds the job-level lease, or None if nobody does or the holder is dead.

    A holder on this host whose process is gone (killed, crashed) cannot renew its lease: its
    lease is released at once rather than make `resume` wait for the expiry.
    """
    lease = backend.state.job_lease(job_id)
    if lease is None or lease[1] <= time.time():
        return None
    holder = lease[0]
    prefix = f"local-{socket.gethostname()}-"
    if holder.startswith(prefix) and holder != local_holder():
        try:
            os.kill(int(holder.removeprefix(prefix)), 0)
        except ProcessLookupError:
            backend.state.release_job_lease(job_id, holder)
            _record_dead_holder(backend, job_id, holder)
            return None
        except (PermissionError, ValueError):
            pass
    return holder


def _record_dead_holder(backend: Backend, job_id: str, holder: str) -> None:
    """A killed foreground process could not say it stopped: the first command to notice says it
    in the history, once (a put-if-absent claim per holder)."""
    claim = JobLayout(job_id).root + f"interruptions/{holder}"
    if backend.objects.put_bytes(claim, b"", if_absent=True) is None:
        return
    job = backend.state.get_job(job_id)
    if job is None or job.status.terminal:
        return
    pid = holder.rsplit("-", 1)[-1]
    append_history(
        backend,
        job_id,
        "interrupted",
        reason=f"slurmctl process {pid} died (killed)",
        holder=holder,
    )


def local_job_stopped(backend: Backend, job: JobRecord) -> bool:
    """A local-executor job is run by the foreground process holding its job lease: unfinished,
    submitted (or running while its submit still writes tasks) and with no live holder, nobody
    runs it (Ctrl-C, a killed `submit`). A job killed before its first tasks stays PENDING."""
    if job.executor != "local" or job.status.terminal:
        return False
    if not job.submitted and (job.status is JobStatus.PENDING or submit_running(backend, job)):
        return False
    return live_lease_holder(backend, job.job_id) is None


class JobLease:
    """The job-level lease held by this process while it acts on a job (an executor's run,
    `retry`, `aggregate`), renewed in the background; another process holding it makes
    entering raise JobBusy (one line), after waiting up to wait_s for it to be free.

    The default holder is this process's local name, which the local executor also uses: a
    `retry` keeps the lease through the run it starts (taking it again is a renewal)."""

    def __init__(
        self,
        backend: Backend,
        job_id: str,
        *,
        holder: str | None = None,
        ttl_s: float = 30.0,
        wait_s: float = 0.0,
        busy: SlurmctlError | None = None,
    ) -> None:
        self.backend, self.job_id = backend, job_id
        self.holder = holder or local_holder()
        self.ttl_s, self.wait_s, self.busy = ttl_s, wait_s, busy
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def __enter__(self) -> JobLease:
        state = self.backend.state
        live_lease_holder(self.backend, self.job_id)  # frees a dead holder's lease first
        deadline = time.monotonic() + self.wait_s
        while not state.acquire_job_lease(self.job_id, self.holder, self.ttl_s, time.time()):
            if time.monotonic() >= deadline:
                raise self._busy()
            time.sleep(0.5)
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, daemon=True)
        self._keeper.start()
        return self

    def _busy(self) -> SlurmctlError:
        if self.busy is not None:
            return self.busy
        lease = self.backend.state.job_lease(self.job_id)
        return JobBusy(
            f"job {self.job_id} is busy: another slurmctl process ({lease[0] if lease else '?'}) "
            "is acting on it; try again when it is done"
        )

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.backend.state.acquire_job_lease(self.job_id, self.holder, self.ttl_s, time.time())

    def release(self) -> None:
        if self._keeper is not None:
            self._stop.set()
            self._keeper.join()
            self._keeper = None
            self.backend.state.release_job_lease(self.job_id, self.holder)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


# --- the streaming submit's heartbeat ----------------------------------------------------------

SUBMIT_DOC = "submit"
"""The versioned document a submit still cutting batches refreshes (its holder and time)."""
SUBMIT_TTL_S = 30.0
"""A submit whose heartbeat is older than this is gone (killed): `resume` carries it on."""


class SubmitHeartbeat:
    """Held by a submit while it writes a job's tasks (workers already run them): refreshed
    every SUBMIT_TTL_S / 3 in the background, so workers waiting for the "submit done" marker
    (`submitted`) can tell a live submit from a killed one (`submit_running`)."""

    def __init__(self, backend: Backend, job_id: str, ttl_s: float = SUBMIT_TTL_S) -> None:
        self.backend, self.job_id, self.ttl_s = backend, job_id, ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        state = self.backend.state
        doc = {"holder": local_holder(), "at": time.time()}
        for _ in range(5):  # another beat (a second submit) in between: read it again
            current = state.get_versioned(self.job_id, SUBMIT_DOC)
            version = current.version if current else 0
            if state.put_versioned(self.job_id, SUBMIT_DOC, json.dumps(doc).encode(), version):
                return

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.beat()
            except SlurmctlError:  # the store is unreachable for now: the next beat tries again
                continue

    def __enter__(self) -> SubmitHeartbeat:
        self.beat()
        self._thread = threading.Thread(target=self._keep, name="slurmctl-submit-beat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def submit_running(backend: Backend, job: JobRecord) -> bool:
    """Whether a submit is still writing this job's tasks: not `submitted` yet, and its
    heartbeat fresh (on this host: its process alive). False once submit is done or gone."""
    if job.submitted:
        return False
    doc = backend.state.get_versioned(job.job_id, SUBMIT_DOC)
    if doc is None:
        return False
    try:
        beat = json.loads(doc.value)
        holder, at = str(beat["holder"]), float(beat["at"])
    except (ValueError, KeyError, TypeError):
        return False
    if time.time() - at > SUBMIT_TTL_S:
        return False
    prefix = f"local-{socket.gethostname()}-"
    if holder.startswith(prefix):
        try:
            os.kill(int(holder.removeprefix(prefix)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            pass
    return True
