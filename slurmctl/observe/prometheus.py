"""`/metrics`: the dashboard's figures in Prometheus' text exposition format, labelled by job."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from slurmctl.observe.metrics import job_resources

Sample = tuple[dict[str, str], float]

FAMILIES: list[tuple[str, str, str]] = [
    ("slurmctl_job_info", "gauge", "1 for each job, with its status, phase and executor."),
    ("slurmctl_items", "gauge", "Items of the job by state (the `items` keys of `status --json`)."),
    ("slurmctl_tasks", "gauge", "Tasks by phase and status."),
    ("slurmctl_items_per_second", "gauge", "Processing rate: window=now or average."),
    ("slurmctl_eta_seconds", "gauge", "Estimated seconds to the end of the phase."),
    ("slurmctl_workers_running", "gauge", "Workers running (Slurm) or busy (local)."),
    ("slurmctl_items_processed_total", "counter", "Items completed, retries included."),
    ("slurmctl_items_in_flight", "gauge", "Items a worker had in flight on average (concurrency)."),
    ("slurmctl_item_latency_seconds_total", "counter", "Sum of item latencies (items in flight)."),
    ("slurmctl_items_timed_total", "counter", "Items whose latency is in the sum above."),
    ("slurmctl_item_failures_total", "counter", "Item failures by error type."),
    ("slurmctl_cpu_seconds_total", "counter", "CPU seconds of committed tasks."),
    ("slurmctl_task_wall_seconds_total", "counter", "Wall seconds of committed tasks."),
    ("slurmctl_io_read_bytes_total", "counter", "Bytes read from storage by workers."),
    ("slurmctl_io_write_bytes_total", "counter", "Bytes written to storage by workers."),
    ("slurmctl_http_requests_total", "counter", "Requests made through ctx.http."),
    ("slurmctl_http_errors_total", "counter", "ctx.http requests without an answer."),
    ("slurmctl_http_throttled_total", "counter", "HTTP 429 answers to ctx.http requests."),
    ("slurmctl_http_received_bytes_total", "counter", "Bytes received through ctx.http."),
    ("slurmctl_http_sent_bytes_total", "counter", "Bytes sent through ctx.http."),
    ("slurmctl_rate_limit_wait_seconds_total", "counter", "Seconds waited for rate-limit slots."),
    ("slurmctl_alert_open", "gauge", "1 while an alert of the rule is open."),
]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def job_samples(
    status: dict[str, Any], counters: dict[str, int], alerts: dict[str, Any]
) -> dict[str, list[Sample]]:
    job = {"job": str(status["job_id"])}
    res = job_resources(counters)
    out: dict[str, list[Sample]] = {name: [] for name, _, _ in FAMILIES}
    info = {
        **job,
        "status": str(status["status"]),
        "phase": str(status.get("phase", "")),
        "executor": str(status.get("executor", "")),
    }
    out["slurmctl_job_info"].append((info, 1))
    for state, n in status.get("items", {}).items():
        out["slurmctl_items"].append(({**job, "state": state}, n))
    for phase, counts in status.get("phases", {}).items():
        for st, n in counts.items():
            out["slurmctl_tasks"].append(({**job, "phase": phase, "status": st}, n))
    rate = status.get("items_per_s") or {}
    for window in ("now", "average"):
        if window in rate:
            out["slurmctl_items_per_second"].append(({**job, "window": window}, rate[window]))
    if status.get("eta_s") is not None:
        out["slurmctl_eta_seconds"].append((job, status["eta_s"]))
    out["slurmctl_workers_running"].append((job, status.get("workers_running") or 0))
    processed = sum(v for k, v in counters.items() if k.startswith("obs.ts."))
    out["slurmctl_items_processed_total"].append((job, processed))
    flight = status.get("in_flight")
    if flight:
        out["slurmctl_items_in_flight"].append((job, flight["items_per_worker"]))
    out["slurmctl_item_latency_seconds_total"].append(
        (job, counters.get("inflight.item_ms", 0) / 1000)
    )
    out["slurmctl_items_timed_total"].append((job, counters.get("inflight.items", 0)))
    for etype, n in res["failures_by_type"].items():
        out["slurmctl_item_failures_total"].append(({**job, "error_type": etype}, n))
    for family, key in (
        ("slurmctl_cpu_seconds_total", "cpu_s"),
        ("slurmctl_task_wall_seconds_total", "wall_s"),
        ("slurmctl_io_read_bytes_total", "io_read_bytes"),
        ("slurmctl_io_write_bytes_total", "io_write_bytes"),
        ("slurmctl_http_requests_total", "http_requests"),
        ("slurmctl_http_errors_total", "http_errors"),
        ("slurmctl_http_throttled_total", "http_429"),
        ("slurmctl_http_received_bytes_total", "http_bytes_received"),
        ("slurmctl_http_sent_bytes_total", "http_bytes_sent"),
        ("slurmctl_rate_limit_wait_seconds_total", "rate_wait_s"),
    ):
        out[family].append((job, res[key]))
    for rule, value in alerts.get("rules", {}).items():
        out["slurmctl_alert_open"].append(({**job, "rule": rule}, 1 if value.get("open") else 0))
    return out


def render(per_job: Iterable[dict[str, list[Sample]]]) -> str:
    merged: dict[str, list[Sample]] = {name: [] for name, _, _ in FAMILIES}
    for samples in per_job:
        for name, values in samples.items():
            merged[name].extend(values)
    lines = []
    for name, kind, help_text in FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in merged[name]:
            lines.append(f"{name}{_labels(labels)} {_number(float(value))}")
    return "\n".join(lines) + "\n"
