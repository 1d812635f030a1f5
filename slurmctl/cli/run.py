"""Making a job progress from the CLI: the executor named by the job, with a progress bar.

The executor is imported once chosen: `status` and the other commands that only read a job
use this module's outcome helpers without paying for either executor (docs/benchmarks.md, "CLI
start-up")."""

from __future__ import annotations

import os
from typing import Any

import click

from slurmctl.cli import EXIT_FAILED, EXIT_OK, EXIT_PAUSED, Env
from slurmctl.cli.progress import items_bar
from slurmctl.errors import UserError
from slurmctl.jobs import append_history, get_job
from slurmctl.observe.status import job_status
from slurmctl.states import JobStatus


def run_job(env: Env, job_id: str, *, progress: bool = True, follow: bool = True) -> JobStatus:
    """Make the job progress. Local: in the foreground to the end. Slurm: queue workers and
    finalize, then return (a non-terminal status) unless follow."""
    job = get_job(env.backend, job_id)
    if job.executor == "slurm":
        from slurmctl.cli.slurm import run_slurm

        return run_slurm(env, job_id, progress=progress, follow=follow)
    if job.executor != "local":
        raise UserError(f"job {job_id}: executor {job.executor!r} is not available in this version")
    from slurmctl.executors.local import LocalExecutor

    with items_bar(progress, job_id) as update:
        executor = LocalExecutor(env.backend, env.root, progress=update)
        try:
            return executor.run(job_id)
        except KeyboardInterrupt:
            append_history(env.backend, job_id, "interrupted", reason="Ctrl-C (SIGINT)")
            click.echo(f"stopped at a checkpoint; `slurmctl resume {job_id}` carries on", err=True)
            raise


def finished(status: JobStatus) -> bool:
    """run_job is done with the job: it ended, or it stopped where only `resume` carries on
    (the breaker paused it). A Slurm job merely queued is not."""
    return status.terminal or status in (JobStatus.PAUSED, JobStatus.STOPPED)


def exit_code(status: str) -> int:
    """The exit code a status means (README's table): 0 COMPLETED (or in progress), 1 FAILED,
    3 PAUSED, STOPPED or CANCELLED."""
    if status == JobStatus.FAILED:
        return EXIT_FAILED
    if status in (JobStatus.PAUSED, JobStatus.STOPPED, JobStatus.CANCELLED):
        return EXIT_PAUSED
    return EXIT_OK


MAX_OUTPUT_LINES = 5
"""Output files listed one per line by `print_outcome`; more are shown as their folder."""


def describe_outputs(job_id: str, outputs: list[dict[str, Any]], sha: bool = False) -> list[str]:
    """A line per output file, or one for their folder when there are many (a partitioned or
    split output)."""
    if len(outputs) <= MAX_OUTPUT_LINES:
        return [
            f"{o['path']} ({o['rows']} rows" + (f", sha256 {o['sha256'][:12]}…)" if sha else ")")
            for o in outputs
        ]
    folder = os.path.commonpath([o["path"].removeprefix("s3://") for o in outputs])
    where = ("s3://" if outputs[0]["path"].startswith("s3://") else "") + folder + "/"
    rows = sum(o["rows"] for o in outputs)
    return [
        f"{where} ({len(outputs)} files, {rows} rows; `slurmctl status {job_id} --json` lists them)"
    ]


def print_outcome(env: Env, job_id: str) -> int:
    """One closing summary; returns its exit code (`exit_code`)."""
    s = job_status(env.backend, job_id)
    items = s["items"]
    click.echo(
        f"job {job_id}: {s['status']}: {items['succeeded']} succeeded, "
        f"{items['failed_permanent']} failed permanently, {items['failed_transient']} failed "
        f"transiently, {items['quarantined']} quarantined, of {items['total']} items"
    )
    for line in describe_outputs(job_id, s["outputs"], sha=True):
        click.echo(f"output: {line}")
    if s["status"] == JobStatus.PAUSED:
        why = s["error"] or "paused"
        click.echo(f"job {job_id}: {why}; `slurmctl resume {job_id}` carries on", err=True)
    elif s["status"] == JobStatus.STOPPED:
        click.echo(f"job {job_id}: stopped; `slurmctl resume {job_id}` carries on", err=True)
    elif s["error"]:
        click.echo(f"error: {s['error']}", err=True)
    return exit_code(s["status"])
