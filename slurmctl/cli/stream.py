"""Streaming submit from the CLI: the job's workers start as soon as submit's first tasks are
durable, while submit keeps cutting the rest of the input.

`coordinator.submit` calls `start(job_id)` once the first tasks are stored, counted and queued
(its `on_durable`). Local executor: the executor drives the workers on a thread of this process
(submit keeps the main thread, so Ctrl-C reaches it) and `finish` waits for it once the last
task is written. Slurm: the arrays and their finalize are queued at once; `finish` then does what
`submit` always did (`run_job`: workers still alive are seen as such, `--follow` follows). The
phase cannot end before the "submit done" marker (`submitted`), which submit sets last.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import click

from slurmctl.cli import Env
from slurmctl.cli.progress import bar_shown, items_bar
from slurmctl.cli.run import run_job
from slurmctl.cli.slurm import run_slurm
from slurmctl.executors.local import LocalExecutor
from slurmctl.executors.slurm import SlurmExecutor
from slurmctl.jobs import append_history, get_job
from slurmctl.states import JobStatus

JOIN_POLL_S = 0.2
"""The main thread waits for the executor's thread in steps, so Ctrl-C is seen at once."""


class StreamingRun:
    """The workers of a job whose submit is still writing tasks."""

    def __init__(self, env: Env, *, progress: bool, follow: bool) -> None:
        self.env, self.progress, self.follow = env, progress, follow
        self.existed = False
        """The job was there before this submit (a submit carried on)."""
        self.job_id: str | None = None
        self.local: LocalExecutor | None = None
        self.done = threading.Event()
        """Set when the executor's thread has returned (an Event, not Thread.join: a Ctrl-C
        during a join can leave the thread seen as ended while it still runs)."""
        self.status: JobStatus | None = None
        self.error: BaseException | None = None
        self.update: Callable[[dict[str, int]], None] | None = None
        """The items bar's update, once the bytes bar of the submit is gone."""

    @property
    def started(self) -> bool:
        return self.job_id is not None

    def start(self, job_id: str) -> None:
        """submit's on_durable: start the workers now."""
        self.job_id = job_id
        if self.existed:
            click.echo(f"job {job_id} exists: carrying on where it stopped")
        else:
            click.echo(f"job {job_id} submitted")
        if get_job(self.env.backend, job_id).executor == "slurm":
            run_slurm(self.env, job_id, progress=False, follow=False)
            return
        # No bar, no counter reads for it (4 a second: on DynamoDB 16 RCU each)
        report = self._report if bar_shown(self.progress) else None
        self.local = LocalExecutor(self.env.backend, self.env.root, progress=report)
        threading.Thread(
            target=self._drive, args=(job_id,), name="slurmctl-executor", daemon=True
        ).start()

    def _report(self, counters: dict[str, int]) -> None:
        if self.update is not None:
            self.update(counters)

    def _drive(self, job_id: str) -> None:
        assert self.local is not None
        try:
            self.status = self.local.run(job_id)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, raised there
            self.error = e
        finally:
            self.done.set()

    def stop(self) -> None:
        """submit's on_refused (and Ctrl-C): stop the workers started so far."""
        if self.local is not None:
            self.local.stopping.set()
            self.done.wait()
        elif self.job_id is not None:
            SlurmExecutor(self.env.backend, self.env.root).cancel(self.job_id)

    def abort(self) -> None:
        """Submit failed after the workers started (e.g. a full disk): a local job's workers
        stop at a checkpoint, so that `resume` finds nothing running; a Slurm job's are left
        alone (they leave once they see the submit gone)."""
        if self.local is not None:
            self.stop()

    def interrupted(self) -> None:
        """Ctrl-C while submit cut batches or the workers ran: a local job's workers stop at a
        checkpoint. A Slurm job's arrays are left alone (they finish the tasks written and
        leave once they see the submit gone; `resume` carries the submission on)."""
        if self.job_id is None or self.local is None:
            return
        self.stop()
        append_history(self.env.backend, self.job_id, "interrupted", reason="Ctrl-C (SIGINT)")
        click.echo(f"stopped at a checkpoint; `slurmctl resume {self.job_id}` carries on", err=True)

    def finish(self) -> JobStatus:
        """Submit wrote its last task: run the job on to its end (local) or queue what it
        needs (Slurm), as `submit` does."""
        assert self.job_id is not None
        if self.local is None:
            return run_job(self.env, self.job_id, progress=self.progress, follow=self.follow)
        with items_bar(self.progress, self.job_id) as update:
            self.update = update
            while not self.done.wait(JOIN_POLL_S):
                pass
        if self.error is not None:
            raise self.error
        assert self.status is not None
        return self.status
