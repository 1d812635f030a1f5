"""`pause`, `resume` and `aggregate`: commands that act on a job (the internal `worker` is in
cli/worker.py)."""

from __future__ import annotations

import sys

import click

from slurmctl import lifecycle
from slurmctl.api import Job
from slurmctl.backends.statestore import task_counter
from slurmctl.cli import Env, cli, pass_env
from slurmctl.cli.run import finished, print_outcome, run_job
from slurmctl.coordinator.submit import submit
from slurmctl.errors import JobBusy, JobStateError
from slurmctl.finalize.finalize import finalize
from slurmctl.jobs import (
    JobLease,
    append_history,
    get_job,
    live_lease_holder,
    load_definition,
)
from slurmctl.states import JobStatus


@cli.command("pause")
@click.argument("job_id")
@pass_env
def pause_cmd(env: Env, job_id: str) -> None:
    """Stop issuing rate-limit slots and claiming tasks; workers wait, nothing fails."""
    if not Job(job_id, env.backend, env.root).pause():
        click.echo(f"job {job_id} is already paused; `slurmctl resume {job_id}` lifts it")
        return
    click.echo(f"job {job_id} paused; `slurmctl resume {job_id}` lifts it")


@cli.command("resume")
@click.argument("job_id")
@click.option("--no-progress", is_flag=True)
@click.option(
    "--follow", is_flag=True, help="Wait for the end of a Slurm job (local always waits)."
)
@pass_env
def resume_cmd(env: Env, job_id: str, no_progress: bool, follow: bool) -> None:
    """Make the job progress again: lift a pause, restart what died, finish what remains."""
    job = get_job(env.backend, job_id)
    if job.status.terminal and job.status.value == "COMPLETED":
        click.echo(f"job {job_id} is COMPLETED: nothing to resume")
        sys.exit(print_outcome(env, job_id))
    if not job.submitted:  # submit died half way: its definition was stored first
        click.echo(f"job {job_id} was not fully submitted: carrying on with the submission")
        submit(env.backend, load_definition(env.backend, job_id), job_id=job_id)
    handle = Job(job_id, env.backend, env.root)
    lifted = handle.lift_pause(job)  # the API's own step: `Job.resume` takes it too
    if lifted == "breaker":
        click.echo(f"job {job_id}: breaker closed ({job.error})")
    elif lifted:
        click.echo(f"job {job_id}: pause lifted")
    if live_lease_holder(env.backend, job_id) is not None:
        click.echo(
            f"job {job_id} is being resumed by another slurmctl process; it carries on there"
        )
        return
    handle.reopen(job)
    append_history(env.backend, job_id, "resume")
    try:
        status = run_job(env, job_id, progress=not no_progress, follow=follow)
    except JobBusy:
        click.echo(
            f"job {job_id} is being resumed by another slurmctl process; it carries on there"
        )
        return
    if finished(status):
        sys.exit(print_outcome(env, job_id))


@cli.command("aggregate")
@click.argument("job_id")
@pass_env
def aggregate_cmd(env: Env, job_id: str) -> None:
    """Run finalize now: reconcile, and merge the outputs if every task is finished."""
    with JobLease(env.backend, job_id):  # not beside a run's own finalize (or a `retry`)
        job = get_job(env.backend, job_id)
        counters = env.backend.state.counters(job_id)
        running = sum(counters.get(task_counter(job.phase, s), 0) for s in ("PENDING", "RUNNING"))
        if job.status is JobStatus.FAILED and not running:
            # after a fix (outputs that could not be merged): finalize decides again from the
            # tasks and counters, and fails again if the cause is still there
            lifecycle.reopen(
                env.backend, job_id, from_status=JobStatus.FAILED, to=JobStatus.AGGREGATING
            )
        result = finalize(env.backend, job_id)
    if result.work_left:
        raise JobStateError(
            f"job {job_id}: {result.work_left} task(s) not finished; `slurmctl resume {job_id}` "
            "runs them"
        )
    sys.exit(print_outcome(env, job_id))
