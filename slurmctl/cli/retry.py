"""`slurmctl retry`: a new phase for the failures an operator chooses, by error type."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from slurmctl.cli import Env, cli, pass_env
from slurmctl.cli.run import print_outcome, run_job
from slurmctl.errors import JobStateError, UserError
from slurmctl.finalize import retry
from slurmctl.jobs import append_history, get_job, load_definition
from slurmctl.states import JobStatus
from slurmctl.worker.classify import PERMANENT, TRANSIENT

ERROR_TYPES = sorted(TRANSIENT | PERMANENT)


def _types(value: str) -> set[str]:
    types = {t.strip() for t in value.split(",") if t.strip()}
    unknown = types - set(ERROR_TYPES)
    if unknown or not types:
        raise UserError(
            f"--errors: unknown error type(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"valid: {', '.join(ERROR_TYPES)}"
        )
    return types


@cli.command("retry")
@click.option("--job-id", "job_id", required=True)
@click.option("--errors", "errors", required=True, help="Comma-separated error types to retry.")
@click.option("--dry-run", is_flag=True, help="Print how many items and tasks it would queue.")
@click.option("--no-progress", is_flag=True)
@pass_env
def retry_cmd(env: Env, job_id: str, errors: str, dry_run: bool, no_progress: bool) -> None:
    """Retry the failures of the given error types (permanent ones included) in a new phase."""
    types = _types(errors)
    job = get_job(env.backend, job_id)
    definition = load_definition(env.backend, job_id)
    if job.status not in (JobStatus.COMPLETED, JobStatus.FAILED):
        raise JobStateError(
            f"job {job_id} is {job.status}: retry applies to a finished job; "
            f"`slurmctl resume {job_id}` makes it progress"
        )
    selection = retry.select_failures(env.backend, job_id, job.phase, types, definition.batch_size)
    detail = ", ".join(f"{n} {t}" for t, n in sorted(selection.by_type.items())) or "none"
    if dry_run:
        phase = retry.phase_name(retry.phase_number(job.phase) + 1)
        click.echo(
            f"job {job_id}: would retry {selection.items} items ({detail}) in "
            f"{selection.tasks} tasks of phase {phase}"
        )
        return
    if selection.items == 0:
        click.echo(f"job {job_id}: no failure of type {', '.join(sorted(types))} to retry")
        return
    work = Path(tempfile.mkdtemp(prefix=f"slurmctl-retry-{job_id}-"))
    try:
        plan = retry.operator_retry(env.backend, job_id, definition, job.phase, types, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if plan is None:
        raise JobStateError(f"job {job_id} changed while planning the retry; try again")
    append_history(
        env.backend,
        job_id,
        "retry",
        errors=sorted(types),
        phase=plan.phase,
        items=plan.items,
        tasks=plan.tasks,
    )
    click.echo(f"job {job_id}: retrying {plan.items} items ({detail}) in phase {plan.phase}")
    run_job(env, job_id, progress=not no_progress)
    sys.exit(print_outcome(env, job_id))
