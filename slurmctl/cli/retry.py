"""`slurmctl retry`: a new phase for the failures an operator chooses, by error type; or, with
`--tasks`, finished tasks run again from their batches (a result lost or damaged after its
commit, a task that could not run). Both act under the job lease: a second `retry` (or an
`aggregate`) at the same time is refused with one line."""

from __future__ import annotations

import sys

import click

from slurmctl.api import Job, check_error_types, check_finished
from slurmctl.backends.statestore import JobRecord
from slurmctl.cli import Env, cli, pass_env
from slurmctl.cli.run import print_outcome, run_job
from slurmctl.errors import UserError
from slurmctl.finalize import retry
from slurmctl.finalize.rerun import missing_results, rerun_tasks
from slurmctl.ids import phase_name, phase_number
from slurmctl.jobs import JobLease, append_history, get_job, load_definition
from slurmctl.worker.classify import PERMANENT, TRANSIENT

ERROR_TYPES = sorted(TRANSIENT | PERMANENT)


def _task_ids(value: str) -> list[str]:
    ids = list(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    if not ids:
        raise UserError("--tasks: give task ids, comma-separated (e.g. task-000042)")
    return ids


@cli.command("retry")
@click.option("--job-id", "job_id", required=True)
@click.option("--errors", "errors", default=None, help="Comma-separated error types to retry.")
@click.option(
    "--tasks",
    "tasks",
    default=None,
    help="Comma-separated task ids to run again from their batches (instead of --errors).",
)
@click.option(
    "--rerun-missing",
    is_flag=True,
    help="Run again every task whose committed result (or item errors) went missing.",
)
@click.option("--dry-run", is_flag=True, help="Print how many items and tasks it would queue.")
@click.option("--no-progress", is_flag=True)
@pass_env
def retry_cmd(
    env: Env,
    job_id: str,
    errors: str | None,
    tasks: str | None,
    rerun_missing: bool,
    dry_run: bool,
    no_progress: bool,
) -> None:
    """Retry the failures of the given error types (permanent ones included) in a new phase,
    or run tasks again from their batches (--tasks, --rerun-missing)."""
    if (errors is not None) + (tasks is not None) + rerun_missing != 1:
        raise UserError("retry: give one of --errors TYPES, --tasks TASK_IDS or --rerun-missing")
    if rerun_missing:
        found = missing_results(env.backend, get_job(env.backend, job_id).job_id)
        if not found:
            click.echo(f"job {job_id}: no committed result is missing")
            return
        _rerun(env, job_id, found, dry_run, no_progress)
        return
    if tasks is not None:
        _rerun(env, job_id, _task_ids(tasks), dry_run, no_progress)
        return
    assert errors is not None
    types = check_error_types(errors)
    job = get_job(env.backend, job_id)
    definition = load_definition(env.backend, job_id)
    if dry_run:
        check_finished(env.backend, job)
        selection = retry.select_failures(
            env.backend, job_id, job.phase, types, definition.batch_size
        )
        phase = phase_name(phase_number(job.phase) + 1)
        click.echo(
            f"job {job_id}: would retry {selection.items} items ({_detail(selection)}) in "
            f"{selection.tasks} tasks of phase {phase}"
        )
        return
    with JobLease(env.backend, job_id) as lease:
        job = get_job(env.backend, job_id)  # as it is now that no one else acts on it
        planned = Job(job_id, env.backend, env.root).plan_retry(types, job)
        if planned is None:
            click.echo(f"job {job_id}: no failure of type {', '.join(sorted(types))} to retry")
            return
        plan, selection = planned
        click.echo(
            f"job {job_id}: retrying {plan.items} items ({_detail(selection)}) in phase "
            f"{plan.phase}"
        )
        _run(env, job, lease, no_progress)


def _detail(selection: retry.Selection) -> str:
    return ", ".join(f"{n} {t}" for t, n in sorted(selection.by_type.items())) or "none"


def _run(env: Env, job: JobRecord, lease: JobLease, no_progress: bool) -> None:
    if job.executor != "local":  # the Slurm executor takes the lease under its own name
        lease.release()
    run_job(env, job.job_id, progress=not no_progress)
    lease.release()
    sys.exit(print_outcome(env, job.job_id))


def _rerun(env: Env, job_id: str, task_ids: list[str], dry_run: bool, no_progress: bool) -> None:
    job = get_job(env.backend, job_id)
    if dry_run:
        click.echo(f"job {job_id}: would run {len(task_ids)} task(s) again: {','.join(task_ids)}")
        return
    with JobLease(env.backend, job_id) as lease:
        job = get_job(env.backend, job_id)
        done = rerun_tasks(env.backend, job, task_ids)
        items = sum(r.items for r in done)
        append_history(env.backend, job_id, "rerun", tasks=task_ids, items=items)
        ids = ",".join(r.task_id for r in done)
        several = len(done) > 1
        click.echo(
            f"job {job_id}: running {len(done)} task{'s' * several} again from "
            f"{'their batches' if several else 'its batch'} ({ids}), {items} items"
        )
        _run(env, job, lease, no_progress)
