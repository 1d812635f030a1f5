"""`status`, `list` and `history`: reading a job, never changing it."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from slurmctl.api import Job, job_records
from slurmctl.cli import Env, cli, pass_env
from slurmctl.cli.run import describe_outputs, exit_code
from slurmctl.jobs import local_job_stopped, read_history
from slurmctl.observe.status import ITEM_KEYS, shown_status
from slurmctl.observe.timeseries import format_duration, progress_bar


def _status_table(s: dict[str, Any]) -> Table:
    items = s["items"]
    total = items["total"] or 1
    done = items["total"] - items["pending"]
    table = Table(title=f"{s['job_id']}: {s['status']} (phase {s['phase']})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("progress", f"{done}/{items['total']} items ({100 * done / total:.1f}%)")
    table.add_row("", progress_bar(done / total))
    if s["status"] != "STOPPED" and "items_per_s" in s:  # observe: the bounded time series
        rate = s["items_per_s"]
        table.add_row("items/s", f"{rate['now']:.1f} now, {rate['average']:.1f} on average")
        if s["status"] != "PAUSED":
            table.add_row("ETA", format_duration(s.get("eta_s")))
        table.add_row("workers running", str(s.get("workers_running", "-")))
    if len(s.get("phases", {})) > 1:
        for phase, counts in s["phases"].items():
            table.add_row(f"phase {phase}", ", ".join(f"{k} {v}" for k, v in counts.items()))
    for key in ITEM_KEYS:
        table.add_row(f"items {key}", str(items[key]))
    table.add_row("tasks", ", ".join(f"{k} {v}" for k, v in s["tasks"].items()))
    for b in s["rate_limits"]:
        paused = " (paused)" if b["paused"] else ""
        table.add_row(
            f"rate limit {b['name']}", f"{b['tokens_per_sec']:g}/s burst {b['burst']}{paused}"
        )
    flight = s.get("in_flight")
    if flight:  # concurrency: N
        table.add_row(
            "items in flight",
            f"{flight['items_per_worker']:.1f} per worker, {flight['item_latency_ms']:.0f} ms each",
        )
    if "slurm" in s:
        # imported here: the package pulls the Slurm executor, which a local job never needs
        from slurmctl.executors.slurm.deaths import describe_nodes

        sl = s["slurm"]
        table.add_row("slurm jobs", ", ".join(sl["job_ids"]) or "none")
        table.add_row(
            "slurm workers", f"{sl['workers_running']} running, {sl['workers_queued']} queued"
        )
        nodes = describe_nodes(sl)
        if nodes:
            table.add_row("slurm bad nodes", nodes)
    for line in describe_outputs(s["job_id"], s["outputs"]):
        table.add_row("output", line)
    if s["error"]:
        table.add_row("error", s["error"])
    return table


@cli.command("status")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (fields: see the README).")
@click.option("--watch", is_flag=True, help="Refresh in place until the job ends.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
@pass_env
def status_cmd(env: Env, job_id: str, as_json: bool, watch: bool, interval: float) -> None:
    """Where the job stands (reads counters only: instant at any size)."""
    handle = Job(job_id, env.backend, env.root)
    s = handle.status().as_dict()
    if as_json and not watch:
        click.echo(json.dumps(s, indent=2, sort_keys=True))
        sys.exit(exit_code(s["status"]))
    if not watch:
        Console().print(_status_table(s))
        if s["status"] == "STOPPED":
            click.echo(
                f"job {job_id} is stopped: no slurmctl process runs it; "
                f"`slurmctl resume {job_id}` carries on"
            )
        sys.exit(exit_code(s["status"]))
    with Live(_status_table(s), refresh_per_second=4) as live:
        while s["status"] not in ("COMPLETED", "FAILED", "CANCELLED", "STOPPED"):
            time.sleep(interval)
            s = handle.status().as_dict()
            live.update(_status_table(s))
            if as_json:
                click.echo(json.dumps(s, sort_keys=True))
    sys.exit(exit_code(s["status"]))


@cli.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_env
def list_cmd(env: Env, as_json: bool) -> None:
    """The jobs of this state root: the embedded ones and those submitted from it to AWS."""
    backend = env.override.url() if env.override is not None else None
    warn = lambda line: click.echo(f"warning: {line}", err=True)  # noqa: E731
    jobs = [(j, b.kind, b) for j, b in job_records(env.root, backend, warn)]
    rows = [
        {
            "job_id": j.job_id,
            "status": str(shown_status(j, kind == "local" and local_job_stopped(b, j))),
            "phase": j.phase,
            "tasks": j.task_count,
            "items": j.item_count,
            "executor": j.executor,
            "backend": kind,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(j.created_at)),
        }
        for j, kind, b in jobs
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no jobs in {env.root}")
        return
    table = Table(*rows[0])
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    Console().print(table)


@cli.command("history")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@pass_env
def history_cmd(env: Env, job_id: str, as_json: bool) -> None:
    """The job's runs and operator actions: who, when, what."""
    from slurmctl.jobs import get_job

    get_job(env.backend, job_id)
    for entry in read_history(env.backend, job_id):
        if as_json:
            click.echo(json.dumps(entry, sort_keys=True))
            continue
        rest = {k: v for k, v in entry.items() if k not in {"at", "who", "action", "pid"}}
        detail = " ".join(f"{k}={v}" for k, v in sorted(rest.items()))
        click.echo(f"{entry['at']}  {entry['who']:<24} {entry['action']:<10} {detail}")
