"""The Python API: submit a job, find one, follow it, load its results and failures as Arrow.

The CLI is built on it (`status`, `list`, `pause`, `cancel`, `results`, `failures`), so both
have the same semantics and raise the same `UserError`s, which the CLI prints as one line and a
program catches as exceptions of `slurmctl.errors`' tree. `import slurmctl` stays cheap: this
module is imported on first use of `slurmctl.submit`, `slurmctl.job` or `slurmctl.list_jobs`.

A local-executor job submitted with `wait=False` (or resumed without waiting) runs in a
background `slurmctl resume` process holding the job lease, its output in
`<root>/logs/<job_id>/runner.log`; with `wait=True` it runs in this process, as `submit` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from slurmctl import lifecycle, wiring
from slurmctl.backends import Backend
from slurmctl.backends.spec import BackendSpec, Registry
from slurmctl.backends.statestore import JobRecord, task_counter
from slurmctl.config import JobDefinition, load_job_definition
from slurmctl.errors import (
    ConfigError,
    JobFailed,
    JobStateError,
    JobStopped,
    UserError,
    WaitTimeout,
)
from slurmctl.jobs import (
    append_history,
    breaker_reason,
    get_job,
    live_lease_holder,
)
from slurmctl.observe.status import Items, JobStatusView, Output, job_status
from slurmctl.states import JobStatus, TaskStatus

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads

    from slurmctl.coordinator.submit import Submitted
    from slurmctl.finalize.retry import RetryPlan, Selection

__all__ = [
    "Items",
    "Job",
    "JobFailed",
    "JobStatusView",
    "JobStopped",
    "Output",
    "WaitTimeout",
    "job",
    "list_jobs",
    "submit",
]

DEFAULT_ROOT = ".slurmctl"
POLL_S = 0.25
FAILURE_BATCH_ROWS = 64 * 1024
STARTUP_S = 60.0
"""How long `submit(wait=False)` waits for its background runner to take the job lease."""


def _root(root: str | os.PathLike[str] | None) -> Path:
    return Path(root or os.environ.get("SLURMCTL_HOME") or DEFAULT_ROOT).absolute()


def _open(job_id: str | None, root: Path, backend: str | None) -> Backend:
    """The job's backend, as the CLI finds it: `backend` (a URL) if given, else the one the
    state root's registry recorded for the job at submit, else the embedded one."""
    wiring.install()
    if backend:
        return BackendSpec.parse(backend).open()
    found = Registry(root).get(job_id) if job_id else None
    return (found or BackendSpec("local", root=root)).open()


class Job:
    """A handle on one job: every call reads or changes its state in its backend."""

    def __init__(self, job_id: str, backend: Backend, root: Path) -> None:
        self.job_id = job_id
        self.backend = backend
        self.root = root

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, backend={self.backend.kind!r})"

    def record(self) -> JobRecord:
        return get_job(self.backend, self.job_id)

    def status(self) -> JobStatusView:
        """Where the job stands, from its counters (O(1) in tasks), as `status --json`."""
        return JobStatusView.from_dict(job_status(self.backend, self.job_id))

    def wait(
        self, timeout: float | None = None, progress: bool = False, poll_s: float = POLL_S
    ) -> JobStatusView:
        """Until the job ends: its final status when COMPLETED; `JobFailed` when FAILED,
        `JobStopped` when CANCELLED, STOPPED or paused by its circuit breaker (a pause by
        `pause()` is waited through), `WaitTimeout` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _progress(progress, self.job_id) as show:
            while True:
                st = self.status()
                show(st)
                if st.status == JobStatus.COMPLETED:
                    return st
                if st.status == JobStatus.FAILED:
                    raise JobFailed(st)
                if st.status in (JobStatus.CANCELLED, JobStatus.STOPPED) or (
                    st.status == JobStatus.PAUSED and breaker_reason(self.record())
                ):
                    raise JobStopped(st)
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(st, timeout or 0.0)
                time.sleep(poll_s)

    def manifest(self) -> dict[str, Any]:
        """The result manifest of a COMPLETED job: its files (path, key, rows, sha256, and the
        partition values of a partitioned one), the output's folder, rows, items, the failure
        manifests, the partitioning. `JobStateError` for a job that is not COMPLETED."""
        from slurmctl.observe import results

        return results.result_manifest(self.backend, self.record())

    def verify(self) -> list[dict[str, Any]]:
        """Every file of the result manifest checked against its sha256 (read whole: fetched
        from S3); IntegrityError or ObjectNotFound names the first that does not match."""
        from slurmctl.observe import results

        return results.verify_outputs(self.backend, self.manifest())

    def results(self) -> pa.Table:
        """The final output as one Arrow table (`.to_pandas()` for pandas), the partition
        columns of a partitioned one included; each file is checked against the sha256 the
        result manifest recorded."""
        from slurmctl.observe import results

        return results.results_table(self.backend, self.job_id, self.manifest())

    def dataset(self) -> pads.Dataset:
        """The final output as a `pyarrow.dataset.Dataset`, read where it is (local or S3),
        for filters and projections without loading it whole (partition columns included)."""
        from slurmctl.observe import results

        return results.results_dataset(self.backend, self.job_id, self.manifest())

    def remove_intermediates(self) -> int:
        """What `slurmctl clean JOB --intermediates` removes of a COMPLETED job (its batches,
        per-task results, aggregation levels, checkpoints; the final output, its manifest and
        the failure manifests stay); returns how many objects went. `JobStateError` for a job
        that is not COMPLETED or still has a live runner."""
        from slurmctl.finalize.intermediates import remove_intermediates

        holder = live_lease_holder(self.backend, self.job_id)
        if holder is not None:
            raise JobStateError(f"job {self.job_id} is running ({holder} is running it)")
        return remove_intermediates(self.backend, self.job_id, by="clean").objects

    def failures(self, errors: set[str] | None = None) -> pa.Table:
        """The items that failed for good, one row each, from the failure manifests of every
        phase: id, phase, error_type, permanent, message, attempts, reason, task_id, batch_id.
        `errors` keeps only those error types."""
        import pyarrow as pa

        from slurmctl.observe.results import FAILURE_SCHEMA

        return pa.Table.from_batches(list(self.failure_batches(errors)), schema=FAILURE_SCHEMA())

    def failure_batches(
        self, errors: set[str] | None = None, rows: int = FAILURE_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """`failures()` as record batches of at most `rows` rows, read from the manifests as
        they stream: millions of failures are never held at once."""
        from slurmctl.observe import results

        phase = self.record().phase
        return results.failure_batches(self.backend, self.job_id, phase, errors, rows)

    def failure_count(self) -> int:
        """How many items failed for good: the manifests' counts, nothing read but them."""
        from slurmctl.finalize import failures as manifests

        phase = self.record().phase
        return sum(m.count for m in manifests.manifests(self.backend, self.job_id, phase))

    def pause(self) -> bool:
        """Stop issuing rate-limit slots and claiming tasks; workers wait, nothing fails. False
        when it was already paused."""
        job = self.record()
        if job.status.terminal:
            raise JobStateError(f"job {self.job_id} is {job.status}: nothing to pause")
        return lifecycle.pause(self.backend, self.job_id)

    def resume(self, wait: bool = False, progress: bool = False) -> JobStatusView:
        """Make the job progress again, as `slurmctl resume` (which runs it: in a background
        process for a local job, on Slurm for a Slurm job); with wait, as `wait()`."""
        job = self.record()
        if job.executor == "local" and live_lease_holder(self.backend, self.job_id) is not None:
            self.lift_pause(job)  # its runner lives: that is all `slurmctl resume` would do
        else:
            self._run_cli("resume", self.job_id, "--no-progress")
        return self.wait(progress=progress) if wait else self.status()

    def lift_pause(self, job: JobRecord | None = None) -> str | None:
        """`resume`'s first step: the breaker's window starts again (before any worker may
        run), then the pause is lifted. Returns what was lifted ("pause", "breaker") or None."""
        job = job or self.record()
        if breaker_reason(job):
            from slurmctl.worker.breaker import reset_breaker

            reset_breaker(self.backend, self.job_id)
        return lifecycle.lift_pause(self.backend, self.job_id, job)

    def reopen(self, job: JobRecord | None = None) -> bool:
        """`resume`'s step for a FAILED or CANCELLED job: RUNNING again (what remains runs)."""
        job = job or self.record()
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            return False
        return lifecycle.reopen(self.backend, self.job_id, from_status=job.status)

    def retry(
        self, errors: list[str] | set[str], wait: bool = False, progress: bool = False
    ) -> JobStatusView:
        """Retry the failures of these error types in a new phase, as `slurmctl retry
        --errors`; an unknown type or a job that is not finished raises at once."""
        from slurmctl.finalize.retry import select_failures

        types = check_error_types(errors)
        job = self.record()
        check_finished(self.backend, job)
        definition = _definition(self.backend, self.job_id)
        if not select_failures(
            self.backend, self.job_id, job.phase, types, definition.batch_size
        ).items:
            raise JobStateError(
                f"job {self.job_id}: no failure of type {', '.join(sorted(types))} to retry"
            )
        args = ("--job-id", self.job_id, "--errors", ",".join(sorted(types)), "--no-progress")
        # started once the new phase is there (the lease is taken before it is planned)
        self._run_cli("retry", *args, started=lambda: self.record().phase != job.phase)
        return self.wait(progress=progress) if wait else self.status()

    def plan_retry(
        self, types: set[str], job: JobRecord | None = None
    ) -> tuple[RetryPlan, Selection] | None:
        """`retry --errors`'s planning, which the command runs under the job lease: the job
        must be finished; the failures of these types (permanent ones included) become a new
        phase's batches and tasks, the job flips to it, the history records it. None when no
        failure has these types. `retry()` runs the command (and so this) in the background."""
        import shutil

        from slurmctl.finalize import retry

        job = job or self.record()
        check_finished(self.backend, job)
        definition = _definition(self.backend, self.job_id)
        selection = retry.select_failures(
            self.backend, self.job_id, job.phase, types, definition.batch_size
        )
        if selection.items == 0:
            return None
        work = Path(tempfile.mkdtemp(prefix=f"slurmctl-retry-{self.job_id}-"))
        try:
            plan = retry.operator_retry(
                self.backend, self.job_id, definition, job.phase, types, work
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if plan is None:
            raise JobStateError(f"job {self.job_id} changed while planning the retry; try again")
        append_history(
            self.backend,
            self.job_id,
            "retry",
            errors=sorted(types),
            phase=plan.phase,
            items=plan.items,
            tasks=plan.tasks,
        )
        return plan, selection

    def cancel(self) -> list[str]:
        """Mark the job CANCELLED (workers leave at their next check) and scancel its Slurm
        jobs; returns their ids. `resume()` carries on."""
        job = self.record()
        if job.status.terminal:
            raise JobStateError(f"job {self.job_id} is {job.status}: nothing to cancel")
        # CANCELLED first: a worker or finalize that still starts sees it and leaves at once
        if not lifecycle.cancel(self.backend, self.job_id):
            job = self.record()
            raise JobStateError(f"job {self.job_id} is {job.status}: nothing to cancel")
        ids: list[str] = []
        if job.executor == "slurm":
            from slurmctl.executors.slurm import slurm_ids
            from slurmctl.executors.slurm.sbatch import SlurmClient

            ids = slurm_ids(self.backend, self.job_id).all
            SlurmClient().scancel(ids)
        lifecycle.record_cancel(self.backend, self.job_id, ids)
        return ids

    def _lease_held(self) -> bool:
        return live_lease_holder(self.backend, self.job_id) is not None

    def _run_cli(self, *args: str, started: Callable[[], bool] | None = None) -> None:
        """A `slurmctl` command on this job: in the background for a local job (it runs the
        workers until the end), in the foreground for a Slurm job (it queues them). A local
        one is waited for until `started()` (default: it holds the job lease) or its exit."""
        cmd = [sys.executable, "-m", "slurmctl", "--root", str(self.root)]
        if self.backend.kind != "local":
            cmd += ["--backend", self.backend.url]
        cmd += list(args)
        if self.record().executor != "local":
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode == 2:
                raise UserError(done.stderr.strip().removeprefix("error: "))
            return
        logs = self.root / "logs" / self.job_id
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "runner.log", "ab") as log:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_S
        while proc.poll() is None and time.monotonic() < deadline:
            if (started or self._lease_held)():
                return  # it runs the job: status shows RUNNING, not STOPPED
            time.sleep(0.05)
        if proc.returncode == 2:
            raise UserError(_last_error(logs / "runner.log"))


def _last_error(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    last = lines[-1] if lines else f"see {log}"
    return last.removeprefix("error: ")


def check_error_types(errors: list[str] | set[str] | str) -> set[str]:
    """The error types named (a list or a comma-separated string), each one known."""
    from slurmctl.worker.classify import PERMANENT, TRANSIENT

    given = errors.split(",") if isinstance(errors, str) else list(errors)
    types = {t.strip() for t in given if t.strip()}
    valid = sorted(TRANSIENT | PERMANENT)
    unknown = types - set(valid)
    if unknown or not types:
        raise UserError(
            f"--errors: unknown error type(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"valid: {', '.join(valid)}"
        )
    return types


def check_finished(backend: Backend, job: JobRecord) -> None:
    """A retry of errors applies to a finished job whose current phase is done."""
    if job.status not in (JobStatus.COMPLETED, JobStatus.FAILED):
        raise JobStateError(
            f"job {job.job_id} is {job.status}: retry applies to a finished job; "
            f"`slurmctl resume {job.job_id}` makes it progress"
        )
    check_phase_finished(backend, job)
    from slurmctl.finalize.intermediates import refuse_if_removed

    refuse_if_removed(backend, job.job_id, "its failures cannot be retried")


def check_phase_finished(backend: Backend, job: JobRecord) -> None:
    """A retry of errors starts a phase after the current one: that one must have finished."""
    counters = backend.state.counters(job.job_id)
    failed = counters.get(task_counter(job.phase, TaskStatus.FAILED), 0)
    if failed:
        tasks = backend.state.iter_tasks(job.job_id, phase=job.phase, status=TaskStatus.FAILED)
        ids = ",".join(t.task_id for _, t in zip(range(20), tasks, strict=False))
        raise JobStateError(
            f"job {job.job_id} is {job.status} with {failed} task{'s' * (failed > 1)} of phase "
            f"{job.phase} that could not run ({ids}); `slurmctl retry --job-id {job.job_id} "
            f"--tasks {ids}` runs {'them' if failed > 1 else 'it'} again from "
            f"{'their batches' if failed > 1 else 'its batch'}, first"
        )
    left = sum(counters.get(task_counter(job.phase, s), 0) for s in ("PENDING", "RUNNING"))
    if left:
        raise JobStateError(
            f"job {job.job_id} is {job.status} with {left} unfinished task"
            f"{'s' * (left > 1)} in phase {job.phase}; `slurmctl resume {job.job_id}` "
            "finishes them, first"
        )


def _definition(backend: Backend, job_id: str) -> JobDefinition:
    from slurmctl.jobs import load_definition

    return load_definition(backend, job_id)


class _progress:
    """A rich progress bar over the items on a terminal, else a line on stderr every 10 s."""

    def __init__(self, enabled: bool, job_id: str) -> None:
        self.enabled, self.job_id = enabled, job_id
        self.bar: Any = None
        self.task: Any = None
        self.last = 0.0

    def __enter__(self) -> Callable[[JobStatusView], None]:
        if self.enabled and sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.job_id, total=None)
        return self.show

    def show(self, st: JobStatusView) -> None:
        if not self.enabled:
            return
        done = st.items.total - st.items.pending
        if self.bar is not None:
            self.bar.update(self.task, total=st.items.total or None, completed=done)
            return
        now = time.monotonic()
        if now - self.last >= 10 or st.ended:
            self.last = now
            print(f"{st.job_id}: {st.status} {done}/{st.items.total} items", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _as_definition(
    definition: str | os.PathLike[str] | Mapping[str, Any] | JobDefinition,
) -> JobDefinition:
    if isinstance(definition, JobDefinition):
        return definition
    if isinstance(definition, Mapping):  # its relative names start in the working directory
        from pydantic import ValidationError

        from slurmctl.config_yaml import format_validation_error

        data = dict(definition)
        try:
            d = JobDefinition.model_validate(data)
        except ValidationError as exc:
            name = "job definition (a dict)"
            raise ConfigError(
                format_validation_error(exc, JobDefinition, name, None, data)
            ) from None
        content = yaml.safe_dump(data, sort_keys=True).encode()
        return d.bind_source(Path.cwd() / "<dict>", content)
    return load_job_definition(Path(definition))


def create(
    backend: Backend,
    definition: JobDefinition,
    root: Path,
    progress: Callable[[int], None] | None = None,
    input_size: Callable[[int], None] | None = None,
    on_durable: Callable[[str], None] | None = None,
    on_refused: Callable[[], None] | None = None,
) -> tuple[Job, Submitted]:
    """Write the job's state (batches, tasks, counters: `coordinator.submit`), or find the
    same job submitted before, and remember in the state root where a remote job lives, so
    later commands and `slurmctl.job` find it. Runs nothing itself; on_durable(job_id) is
    called once the first tasks are durable, while the rest are still written (the command
    starts the workers then: streaming submit), on_refused() before a submission refused after
    that is discarded. `submit` and the command do this."""
    from slurmctl.coordinator.submit import submit as submit_job

    def durable(job_id: str) -> None:
        if backend.kind != "local":  # before any worker: later commands find the job
            Registry(root).add(job_id, BackendSpec.parse(backend.url))
        if on_durable is not None:
            on_durable(job_id)

    result = submit_job(
        backend,
        definition,
        progress=progress,
        input_size=input_size,
        on_durable=durable,
        on_refused=on_refused,
    )
    if backend.kind != "local":
        Registry(root).add(result.job_id, BackendSpec.parse(backend.url))
    return Job(result.job_id, backend, root), result


def submit(
    definition: str | os.PathLike[str] | Mapping[str, Any] | JobDefinition,
    root: str | os.PathLike[str] | None = None,
    wait: bool = False,
    progress: bool = False,
    backend: str | None = None,
) -> Job:
    """Submit the job a definition (a file, a dict, a `JobDefinition`) describes and start it,
    as `slurmctl submit`: a mistake raises its one-line `UserError` before anything is written;
    the same definition and input again find the same job and carry on where it stopped.
    With wait, returns once it ended (`Job.wait`'s exceptions); else once it runs."""
    from slurmctl.executors.slurm import preflight

    d = _as_definition(definition)
    state_root = _root(root)
    preflight(d)
    wiring.install()
    spec = BackendSpec.parse(backend) if backend else BackendSpec.for_definition(d, state_root)
    be = spec.open()
    job, result = create(be, d, state_root)
    if result.status.terminal:  # submitted before: its outcome, as `submit` reports it
        if wait:
            job.wait(progress=progress)
        return job
    if wait and d.executor == "local":
        from slurmctl.executors.local import LocalExecutor

        LocalExecutor(be, state_root).run(result.job_id)
    elif live_lease_holder(be, result.job_id) is None:
        job._run_cli("resume", result.job_id, "--no-progress")
    if wait:
        job.wait(progress=progress)
    return job


def job(job_id: str, root: str | os.PathLike[str] | None = None, backend: str | None = None) -> Job:
    """An existing job of a state root (default `$SLURMCTL_HOME`, else `./.slurmctl`) or of a
    backend URL (`local:///path`, `aws://BUCKET/PREFIX?table=T`); `JobNotFound` if none."""
    state_root = _root(root)
    handle = Job(job_id, _open(job_id, state_root, backend), state_root)
    handle.record()
    return handle


def job_records(
    root: str | os.PathLike[str] | None = None,
    backend: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> Iterator[tuple[JobRecord, Backend]]:
    """Every job of the state root (the embedded ones and those submitted from it to AWS), or
    of the backend URL; a registered backend that cannot be opened is passed to `warn`."""
    state_root = _root(root)
    main = _open(None, state_root, backend)
    for record in main.state.list_jobs():
        yield record, main
    if backend:
        return
    opened: dict[str, Backend] = {}
    for job_id, spec in Registry(state_root).entries():
        url = spec.url()
        try:
            be = opened.get(url) or opened.setdefault(url, spec.open())
            found = be.state.get_job(job_id)
        except UserError as e:
            if warn is not None:
                warn(f"{job_id}: {e}")
            continue
        if found is not None:
            yield found, be


def list_jobs(root: str | os.PathLike[str] | None = None, backend: str | None = None) -> list[Job]:
    """The jobs of a state root (and those it submitted to AWS), or of a backend URL."""
    state_root = _root(root)
    return [Job(r.job_id, be, state_root) for r, be in job_records(root, backend)]
