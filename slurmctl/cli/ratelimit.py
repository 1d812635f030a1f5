"""`set-rate`: change a running job's rate limit; workers follow within a second."""

from __future__ import annotations

import click

from slurmctl.cli import Env, cli, pass_env
from slurmctl.errors import JobStateError, UserError
from slurmctl.jobs import append_history, get_job


@cli.command("set-rate")
@click.argument("job_id")
@click.option("--bucket", default="default", show_default=True, help="Which rate-limit bucket.")
@click.option("--rate", type=float, required=True, help="Requests per second, all workers.")
@click.option("--burst", type=int, default=None, help="Burst (default: unchanged).")
@pass_env
def set_rate_cmd(env: Env, job_id: str, bucket: str, rate: float, burst: int | None) -> None:
    """Set a bucket's rate (and burst) for every worker of JOB; any throttle backoff is cleared.

    Takes effect within a second: each worker's next lease (at most ~250 ms of the rate) is
    sized and spaced from the new rate. The job definition keeps its rate_limit.
    """
    if not rate > 0:
        raise UserError(f"--rate: expected a number of requests per second > 0, got {rate:g}")
    if burst is not None and burst < 1:
        raise UserError(f"--burst: expected an integer >= 1, got {burst}")
    job = get_job(env.backend, job_id)
    if job.status.terminal:
        raise JobStateError(f"job {job_id} is {job.status}: its rate limit no longer matters")
    before = env.backend.state.set_bucket_rate(job_id, bucket, rate, burst)
    if before is None:
        names = [b.name for b in env.backend.state.list_buckets(job_id)]
        known = ", ".join(names) if names else "none: the job definition sets no rate_limit"
        raise UserError(f"job {job_id} has no rate-limit bucket {bucket!r} (buckets: {known})")
    new_burst = before.burst if burst is None else burst
    append_history(
        env.backend,
        job_id,
        "set-rate",
        bucket=bucket,
        rate=rate,
        burst=new_burst,
        previous={"rate": before.rate, "burst": before.burst},
    )
    click.echo(
        f"job {job_id}: bucket {bucket} now {rate:g}/s burst {new_burst} "
        f"(was {before.rate:g}/s burst {before.burst})"
    )
