"""`slurmctl worker`: one worker process (a local executor's subprocess, a Slurm array element).

In a module of its own so that a worker imports the worker's code and nothing of `submit`, the
executors or finalize: every worker of every job pays its start-up (docs/benchmarks.md, "CLI
start-up").
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from slurmctl.cli import Env, cli, pass_env


@cli.command("worker")
@click.option("--job-id", required=True)
@click.option("--worker-id", default=None, help="Defaults to <host>-<pid>.")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--poll", "poll_s", default=1.0, show_default=True, help="Seconds per idle receive.")
@pass_env
def worker_cmd(
    env: Env, job_id: str, worker_id: str | None, scratch: Path | None, poll_s: float
) -> None:
    """(internal) Claim and run tasks of JOB until none is left."""
    from slurmctl.worker.runner import Worker

    worker = Worker(env.backend, job_id, worker_id, scratch, poll_s)
    worker.install_signals()
    sys.exit(worker.run())
