"""`slurmctl worker` (internal): what the executors start on every node.

A module of its own so that a worker process imports only what a worker needs: `main` loads the
other commands' modules (the coordinator, finalize, the executors and the API, ~0.2 s of CPU at
every start) only when the command is not `worker` (docs/benchmarks.md §13).
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
