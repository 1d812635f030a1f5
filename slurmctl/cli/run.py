"""Making a job progress from the CLI: the executor named by the job, with a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from slurmctl.cli import Env
from slurmctl.errors import UserError
from slurmctl.executors.local import LocalExecutor
from slurmctl.jobs import get_job
from slurmctl.states import JobStatus
from slurmctl.status import job_status

stderr = Console(stderr=True)


@contextmanager
def items_bar(enabled: bool, label: str) -> Iterator[Any]:
    """Yields an update(counters) callback; a rich bar when stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("items"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(c: dict[str, int]) -> None:
            total = c.get("items.total", 0)
            bar.update(task, total=total or None, completed=total - c.get("items.pending", 0))

        yield update


def run_job(env: Env, job_id: str, *, progress: bool = True, follow: bool = True) -> JobStatus:
    """Make the job progress. Local: in the foreground to the end. Slurm: queue workers and
    finalize, then return (a non-terminal status) unless follow."""
    job = get_job(env.backend, job_id)
    if job.executor == "slurm":
        from slurmctl.cli.slurm import run_slurm

        return run_slurm(env, job_id, progress=progress, follow=follow)
    if job.executor != "local":
        raise UserError(f"job {job_id}: executor {job.executor!r} is not available in this version")
    with items_bar(progress, job_id) as update:
        executor = LocalExecutor(env.backend, env.root, progress=update)
        try:
            return executor.run(job_id)
        except KeyboardInterrupt:
            click.echo(f"stopped at a checkpoint; `slurmctl resume {job_id}` carries on", err=True)
            raise


def print_outcome(env: Env, job_id: str) -> int:
    """One closing summary; the exit code is 0 for COMPLETED, 1 otherwise."""
    s = job_status(env.backend, job_id)
    items = s["items"]
    click.echo(
        f"job {job_id}: {s['status']}: {items['succeeded']} succeeded, "
        f"{items['failed_permanent']} failed permanently, {items['failed_transient']} failed "
        f"transiently, {items['quarantined']} quarantined, of {items['total']} items"
    )
    for out in s["outputs"]:
        click.echo(f"output: {out['path']} ({out['rows']} rows, sha256 {out['sha256'][:12]}…)")
    if s["error"]:
        click.echo(f"error: {s['error']}", err=True)
    return 0 if s["status"] == JobStatus.COMPLETED else 1
