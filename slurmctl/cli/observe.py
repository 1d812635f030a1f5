"""`logs`, `analyze-errors`, `watch` and `dashboard`: seeing what a job does (issue 7)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from slurmctl.cli import Env, cli, pass_env
from slurmctl.errors import UserError
from slurmctl.executors.slurm.deaths import describe_nodes
from slurmctl.jobs import get_job, load_definition
from slurmctl.observe import alerts
from slurmctl.observe.errors import TASK_GROUPS, analyze
from slurmctl.observe.logs import LEVELS, read_logs
from slurmctl.observe.timeseries import format_duration

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
OUTAGE_AFTER = 3
"""Consecutive failed evaluations (the stores unreachable) before the infrastructure alert."""


@cli.command("logs")
@click.argument("job_id")
@click.argument("task", required=False)
@click.option(
    "--level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default="DEBUG",
    show_default=True,
    help="Lines at this level or above.",
)
@click.option("--worker", "worker_id", default=None, help="Only this worker's lines.")
@click.option("--json", "as_json", is_flag=True, help="The JSON lines as shipped.")
@pass_env
def logs_cmd(
    env: Env, job_id: str, task: str | None, level: str, worker_id: str | None, as_json: bool
) -> None:
    """The workers' structured logs of JOB (or of one TASK or batch id), in time order.

    Workers ship their log to the object store every 30 s with a task's output, and when they
    exit."""
    get_job(env.backend, job_id)
    count = 0
    for entry in read_logs(env.backend, job_id, task, level, worker_id):
        count += 1
        if as_json:
            click.echo(json.dumps(entry, ensure_ascii=False))
            continue
        click.echo(
            f"{entry.get('ts', '')} {entry.get('level', ''):<7} {entry.get('worker_id', '')} "
            f"{entry.get('task_id') or '-'} {entry.get('event', '')}"
        )
        if entry.get("exc"):
            click.echo("    " + str(entry["exc"]).replace("\n", "\n    "))
    if not count:
        what = f"task {task}" if task else f"job {job_id}"
        click.echo(f"no log lines for {what} (at {level} or above) shipped yet", err=True)


@cli.command("analyze-errors")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--groups", "max_groups", default=20, show_default=True, help="Groups shown.")
@pass_env
def analyze_errors_cmd(env: Env, job_id: str, as_json: bool, max_groups: int) -> None:
    """Failures grouped by error type and message signature, with hot spots.

    Reads every committed task's item errors (verified by sha256) and the failure manifests."""
    result = analyze(env.backend, job_id)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    click.echo(
        f"job {job_id} ({result['status']}, phase {result['phase']}): {result['failures']} "
        f"failures in {result['items_processed']} items processed "
        f"({100 * result['failure_rate']:.2f}%); {result['final_failures']} items failed for good"
    )
    nodes = describe_nodes(result["slurm_nodes"])
    if nodes:
        click.echo(f"bad nodes: {nodes}")
    deaths = result["slurm_nodes"]["worker_deaths"]
    if deaths:
        click.echo("slurm worker deaths: " + ", ".join(f"{k} {n}" for k, n in deaths.items()))
    if not result["groups"]:
        click.echo("no failures")
        return
    types = ", ".join(f"{t} {v['count']}" for t, v in result["by_type"].items())
    click.echo(f"by type: {types}\n")
    for g in result["groups"][:max_groups]:
        kind = "permanent" if g["permanent"] else "transient"
        click.echo(
            f"{g['count']:>8}  {g['error_type']} ({kind}), {g['final']} final, "
            f"{g['first_seen']} .. {g['last_seen']}, phases "
            + ", ".join(f"{p} {n}" for p, n in g["phases"].items())
        )
        click.echo(f"          {g['signature']}")
        what = "tasks" if g["error_type"] in TASK_GROUPS else "items"
        click.echo(f"          e.g. {what} {', '.join(g['sample_item_ids'])}")
    if len(result["groups"]) > max_groups:
        click.echo(f"... and {len(result['groups']) - max_groups} more groups (--groups, --json)")
    click.echo("")
    if not result["hot_spots"]:
        click.echo("hot spots: none (failures are spread evenly over batches and workers)")
        return
    click.echo("hot spots:")
    for h in result["hot_spots"]:
        click.echo(
            f"  {h['phase']} {h['dimension']} {h['key']}: {h['failures']} of {h['items']} items "
            f"failed ({100 * h['failure_rate']:.1f}%, {h['times_phase_rate']:g}x the phase's "
            f"{100 * h['phase_failure_rate']:.1f}%)"
        )


def _line(status: dict[str, Any], open_rules: list[str]) -> str:
    items = status["items"]
    done = items["total"] - items["pending"]
    pct = 100 * done / items["total"] if items["total"] else 100.0
    rate = status.get("items_per_s", {})
    return (
        f"{time.strftime('%H:%M:%S')} {status['job_id']} {status['status']} {done}/"
        f"{items['total']} items ({pct:.1f}%), {rate.get('now', 0):.1f} items/s now, "
        f"{rate.get('average', 0):.1f} on average, ETA {format_duration(status.get('eta_s'))}, "
        f"{status.get('workers_running', 0)} workers running"
        + (f"; open alerts: {', '.join(open_rules)}" if open_rules else "")
    )


class Outage:
    """The stores unreachable: an alert kept in memory (nothing can be stored meanwhile)."""

    def __init__(self, env: Env, job_id: str) -> None:
        self.job_id = job_id
        self.failures = 0
        self.open = False
        definition = load_definition(env.backend, job_id)
        settings = alerts.AlertSettings.from_params(definition.params)
        self.webhook = alerts.resolve_webhook(definition, settings)

    def deliver(self, state: str, message: str) -> None:
        text = alerts.alert_text(self.job_id, "infrastructure", state, message)
        url, why = self.webhook
        sent = alerts.post_webhook(url, text) if url else why
        click.echo(f"{'ALERT' if state == 'firing' else 'RESOLVED'} {text} (webhook: {sent})")
        (alerts.log.warning if state == "firing" else alerts.log.info)("%s", text)

    def failed(self, error: Exception) -> None:
        self.failures += 1
        click.echo(f"cannot read the job's state: {error}", err=True)
        if self.failures >= OUTAGE_AFTER and not self.open:
            self.open = True
            self.deliver(
                "firing", f"the job's stores failed {self.failures} reads in a row: {error}"
            )

    def ok(self) -> None:
        if self.open:
            self.deliver("resolved", "the job's stores answer again")
        self.failures, self.open = 0, False


@cli.command("watch")
@click.argument("job_id")
@click.option("--interval", default=10.0, show_default=True, help="Seconds between checks.")
@click.option("--once", is_flag=True, help="Evaluate the alerts once and exit.")
@pass_env
def watch_cmd(env: Env, job_id: str, interval: float, once: bool) -> None:
    """Follow JOB and raise alerts (stalled, error rate, rate limit, infrastructure, failed).

    Alerts go to this terminal, the log and the webhook of the job's `params.alerts`, once per
    episode, with a resolved message when they clear. Exits when the job ends."""
    get_job(env.backend, job_id)
    outage = Outage(env, job_id)
    while True:
        try:
            result = alerts.evaluate(env.backend, job_id)
        except UserError:
            raise
        except Exception as e:
            outage.failed(e)
            if once:
                raise
            time.sleep(interval)
            continue
        outage.ok()
        for event in result.events:
            label = "ALERT" if event.state == "firing" else "RESOLVED"
            click.echo(f"{label} {event.text} (webhook: {event.webhook})")
        click.echo(_line(result.status, sorted(result.open)))
        if once or result.status["status"] in TERMINAL:
            return
        time.sleep(interval)


@cli.command("dashboard")
@click.option("--port", default=8765, show_default=True, help="0 picks a free port.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback shows your jobs to the network.",
)
@click.option(
    "--allow-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Another name the dashboard is reached by (a proxy's); loopback and --host always are.",
)
@pass_env
def dashboard_cmd(env: Env, port: int, host: str, allowed_hosts: tuple[str, ...]) -> None:
    """A web dashboard of the jobs: progress, rate, errors, alerts, resources (read-only)."""
    from slurmctl.observe.dashboard import JobSources, make_server

    if env.override is not None:
        openers = [env.override.open]
    else:
        openers = [env.spec().open, *(spec.open for spec in env.registry.specs())]
    server = make_server(JobSources(openers), host, port, allowed_hosts)
    bound_host, bound_port = server.server_address[:2]
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: anyone who can reach it sees the jobs", err=True)
    click.echo(f"dashboard on http://{bound_host!s}:{bound_port} (Ctrl-C stops it)", err=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
