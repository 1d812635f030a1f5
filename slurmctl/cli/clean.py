"""`slurmctl clean`: remove a finished or stopped job's scratch folders; with `--intermediates`
a COMPLETED job's batches, per-task results, aggregation levels and checkpoints (the final
output, its manifest and the failure manifests stay: finalize/intermediates.py); with
`--everything` its objects, records, queue and logs."""

from __future__ import annotations

import shutil
import time

import click

from slurmctl.api import Job
from slurmctl.cli import Env, cli, pass_env
from slurmctl.coordinator.submit import discard
from slurmctl.errors import JobStateError, UserError
from slurmctl.finalize.intermediates import check_removable
from slurmctl.jobs import get_job, live_lease_holder, load_definition
from slurmctl.scratch import scratch_root


def _running(env: Env, job_id: str) -> str | None:
    """Why the job counts as running: someone holds its lease, or a task lease is live."""
    state = env.backend.state
    holder = live_lease_holder(env.backend, job_id)
    if holder is not None:
        return f"{holder} is running it"
    # only the live leases are read (on DynamoDB one index range per shard), not every
    # unfinished task
    for task in state.live_tasks(job_id, time.time()):
        return f"{task.task_id} is held by worker {task.worker_id}"
    return None


@cli.command("clean")
@click.argument("job_id")
@click.option(
    "--intermediates",
    is_flag=True,
    help="Also a COMPLETED job's batches, per-task results and aggregation levels "
    "(the final output stays).",
)
@click.option("--everything", is_flag=True, help="Also its objects, records, queue and logs.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@pass_env
def clean_cmd(env: Env, job_id: str, intermediates: bool, everything: bool, yes: bool) -> None:
    """Remove the job's scratch folders on this node (with --intermediates, what only a
    running job needs; with --everything, the job)."""
    if intermediates and everything:
        raise UserError("clean: give --intermediates or --everything, not both")
    get_job(env.backend, job_id)
    why = _running(env, job_id)
    if why:
        raise JobStateError(f"job {job_id} is running ({why}); `slurmctl pause` or wait first")
    if intermediates:
        check_removable(env.backend, job_id)
    definition = load_definition(env.backend, job_id)
    scratch = scratch_root(definition.scratch) / f"job_{job_id}"
    what = f"scratch {scratch}" + (
        ", and every object, record and log of the job" if everything else ""
    )
    if intermediates:
        what += ", and its batches, per-task results, aggregation levels and checkpoints"
    if not yes:
        click.confirm(f"remove {what}?", abort=True)
    shutil.rmtree(scratch, ignore_errors=True)
    if intermediates:
        removed = Job(job_id, env.backend, env.root).remove_intermediates()
        click.echo(
            f"job {job_id}: removed {what} ({removed} objects); its final output, "
            "manifest and failure manifests stay"
        )
        return
    if everything:
        discard(env.backend, job_id)
        env.registry.remove(job_id)
        shutil.rmtree(env.root / "logs" / job_id, ignore_errors=True)
    click.echo(f"job {job_id}: removed {what}")
