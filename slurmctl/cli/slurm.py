"""`cancel`, the internal `finalize`, and running a Slurm job from the CLI (queue, `--follow`)."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

import click

from slurmctl.api import Job
from slurmctl.cli import Env, cli, pass_env
from slurmctl.cli.progress import items_bar
from slurmctl.errors import JobStateError, SlurmctlError
from slurmctl.executors.slurm import Advance, SlurmExecutor, slurm_ids
from slurmctl.executors.slurm.sbatch import SlurmClient
from slurmctl.jobs import breaker_reason, get_job
from slurmctl.states import JobStatus

FOLLOW_POLL_S = 0.25
LIVENESS_EVERY_S = 5.0
QUIET_CHECKS = 3
"""`--follow` gives up after this many liveness checks in a row find no Slurm job alive."""
PLAIN_EVERY_S = 10.0


def run_slurm(env: Env, job_id: str, *, progress: bool, follow: bool) -> JobStatus:
    """Queue what the job needs and say so; with follow, wait for the end with progress."""
    executor = SlurmExecutor(env.backend, env.root)
    out = executor.advance(job_id, operator=True)
    describe(job_id, out)
    if out.status.terminal or not follow:
        return out.status
    try:
        return follow_job(env, job_id, executor.client, progress)
    except KeyboardInterrupt:
        click.echo(f"stopped following; job {job_id} carries on on Slurm", err=True)
        raise


def describe(job_id: str, out: Advance) -> None:
    for note in out.capped:
        click.echo(f"job {job_id}: capped by the site's limits: {note}", err=True)
    if out.submitted:
        arrays = ", ".join(out.submitted)
        click.echo(
            f"job {job_id}: workers queued on Slurm (array {arrays}), finalize {out.finalize} "
            f"after them; `slurmctl status {job_id}` follows it"
        )
    elif out.alive:
        states = Counter(str(e.state) for e in out.alive)
        shown = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        arrays = ", ".join(sorted({e.job_id for e in out.alive}))
        fin = out.finalize or ", ".join(out.waiting)
        click.echo(
            f"job {job_id}: {len(out.alive)} workers of array {arrays} already on Slurm "
            f"({shown}); finalize {fin} is queued after them"
        )


def follow_job(env: Env, job_id: str, client: SlurmClient, progress: bool) -> JobStatus:
    """Poll the counters until the job ends; fail loudly if no Slurm job of it is left."""
    quiet = 0
    last_check = last_plain = time.monotonic()
    with items_bar(progress, job_id) as update:
        while True:
            job = get_job(env.backend, job_id)
            counters = env.backend.state.counters(job_id, metrics=False, running=False)
            if update is not None:
                update(counters)
            if job.status.terminal:
                return job.status
            if breaker_reason(job):  # workers wait, paused, for `resume`: stop following
                return JobStatus.PAUSED
            now = time.monotonic()
            if update is None and progress and now - last_plain >= PLAIN_EVERY_S:
                last_plain = now
                total = counters.get("items.total", 0)
                done = total - counters.get("items.pending", 0)
                click.echo(f"{job_id}: {job.status} {done}/{total} items", err=True)
            if now - last_check >= LIVENESS_EVERY_S:
                last_check = now
                ids = slurm_ids(env.backend, job_id)
                quiet = 0 if any(e.state.alive for e in client.elements(ids.all)) else quiet + 1
                if quiet >= QUIET_CHECKS:
                    raise SlurmctlError(
                        f"job {job_id} is {job.status} but none of its Slurm jobs is queued or "
                        f"running; see {env.root / 'logs' / job_id}, then `slurmctl resume "
                        f"{job_id}`"
                    )
            time.sleep(FOLLOW_POLL_S)


@cli.command("cancel")
@click.argument("job_id")
@pass_env
def cancel_cmd(env: Env, job_id: str) -> None:
    """Stop the job: scancel its Slurm jobs and mark it CANCELLED; `resume` carries on."""
    ids = Job(job_id, env.backend, env.root).cancel()
    what = f"; scancel sent to Slurm jobs {', '.join(ids)}" if ids else ""
    click.echo(f"job {job_id} cancelled{what}; `slurmctl resume {job_id}` carries on")


@cli.command("finalize", hidden=True)
@click.option("--job-id", required=True)
@pass_env
def finalize_cmd(env: Env, job_id: str) -> None:
    """(internal) The Slurm finalize job: reconcile, resubmit workers while work remains and
    none is alive, else aggregate."""
    job = get_job(env.backend, job_id)
    if job.executor != "slurm":
        raise JobStateError(f"job {job_id} runs on the {job.executor} executor, not Slurm")
    executor = SlurmExecutor(env.backend, env.root, own_id=os.environ.get("SLURM_JOB_ID"))
    out = executor.advance(job_id)
    describe(job_id, out)
    click.echo(f"job {job_id}: {out.status}, {out.work_left} task(s) left in the phase")
    sys.exit(1 if out.status == JobStatus.FAILED else 0)
