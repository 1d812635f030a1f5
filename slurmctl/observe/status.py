"""What `status` shows, built from the counters only (O(1) in tasks: docs/architecture.md,
invariant "status reads counters").

An executor adds its own section (the Slurm ids and how many workers are queued) through a
summary registered here by the CLI (`register_summary`), so this module, which alerts and the
dashboard read, imports no executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.statestore import WORKERS_LOST, Bucket, JobRecord
from slurmctl.jobs import get_job, local_job_stopped
from slurmctl.layout import JobLayout
from slurmctl.observe.timeseries import progress_figures
from slurmctl.states import JobStatus, TaskStatus

ITEM_KEYS = ("total", "succeeded", "failed_permanent", "failed_transient", "quarantined", "pending")

Summary = Callable[[Backend, str], dict[str, Any]]
"""An executor's section of `status`: (backend, job_id) -> shown under the executor's name."""

_summaries: dict[str, Summary] = {}


def register_summary(executor: str, summary: Summary) -> None:
    """`status` of a job run by `executor` shows `summary(backend, job_id)` under that name."""
    _summaries[executor] = summary


def shown_status(job: JobRecord, stopped: bool = False) -> JobStatus:
    """The stored status, or PAUSED while the pause flag is set, or STOPPED for a local job
    that nobody runs (`jobs.local_job_stopped`)."""
    if job.paused and not job.status.terminal:
        return JobStatus.PAUSED
    if stopped and not job.status.terminal:
        return JobStatus.STOPPED
    return job.status


def rate_limits(
    buckets: list[Bucket], counters: dict[str, int], now: float
) -> list[dict[str, Any]]:
    """Each bucket: its configured and effective rate, a Retry-After hold, and the exhaustion
    signal (the share of the workers' task time spent waiting for its slots; `job_wait_share`
    for all buckets together), from the counters the workers move once per task."""
    busy = counters.get("worker.busy_ms", 0)
    total = counters.get("ratelimit.wait_ms", 0)
    out = []
    for b in buckets:
        wait = counters.get(f"ratelimit.{b.name}.wait_ms", 0)
        out.append(
            {
                "name": b.name,
                "tokens_per_sec": b.rate,
                "burst": b.burst,
                "paused": b.paused,
                "effective_tokens_per_sec": round(b.effective_rate(now), 6),
                "held_until": b.hold_until if b.hold_until > now else None,
                "wait_ms": wait,
                "wait_share": round(wait / busy, 4) if busy else 0.0,
                "job_wait_share": round(total / busy, 4) if busy else 0.0,
                "busy_ms": busy,
                "writes": counters.get(f"ratelimit.{b.name}.writes", 0),
            }
        )
    return out


def in_flight(counters: dict[str, int]) -> dict[str, Any] | None:
    """Items in flight (`concurrency` > 1 or an async handler), from the counters the workers
    move once per task: how many items a worker had in flight on average while it had any
    (the time integral of its items in flight over that time), and the mean latency of an item
    (its start to its end, the rate limiter's wait included). None for a job that runs one
    item at a time."""
    items = counters.get("inflight.items", 0)
    occupied = counters.get("inflight.occupied_ms", 0)
    if not items:
        return None
    return {
        "items_per_worker": round(counters.get("inflight.area_ms", 0) / occupied, 2)
        if occupied
        else 0.0,
        "item_latency_ms": round(counters.get("inflight.item_ms", 0) / items, 1),
        "items_timed": items,
    }


def job_status(backend: Backend, job_id: str) -> dict[str, Any]:
    job = get_job(backend, job_id)
    stopped = local_job_stopped(backend, job)
    counters = backend.state.counters(job_id)
    tasks = {str(s): 0 for s in TaskStatus}
    phases: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        phase, sep, rest = name.partition(".tasks.")
        if sep:
            phases.setdefault(phase, {str(s): 0 for s in TaskStatus})[rest] = value
            tasks[rest] = tasks.get(rest, 0) + value
    items = {k: counters.get(f"items.{k}", 0) for k in ITEM_KEYS}
    outputs: list[dict[str, Any]] = []
    if job.status == JobStatus.COMPLETED:
        try:
            manifest: Any = backend.objects.get_json(JobLayout(job_id).final_manifest)
            outputs = [
                {"path": f["path"], "rows": f["rows"], "sha256": f["sha256"]}
                for f in manifest["files"]
            ]
        except ObjectNotFound:
            pass
    buckets = rate_limits(backend.state.list_buckets(job_id), counters, time.time())
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "status": str(shown_status(job, stopped)),
        "phase": job.phase,
        "paused": job.paused,
        "tasks": tasks,
        "phases": phases,
        "items": items,
        "rows": counters.get("rows", 0),
        "outputs": outputs,
        "rate_limits": buckets,
        "in_flight": in_flight(counters),
        "workers": job.workers,
        "workers_lost": counters.get(WORKERS_LOST, 0),
        "executor": job.executor,
        "backend": job.backend,
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }
    summary = _summaries.get(job.executor)
    if summary is not None:  # Slurm: ids from the manifest, workers from one squeue call
        out[job.executor] = summary(backend, job_id)
    out.update(progress_figures(job, counters, out))  # items/s, ETA, workers (bounded series)
    if stopped or job.paused:  # nobody works on it: no ETA; a stopped job runs no worker
        out["eta_s"] = None
    if stopped:
        out["workers_running"] = 0
    return out


@dataclass(frozen=True)
class Items:
    """The item counters: every input item is in exactly one of the last five."""

    total: int
    succeeded: int
    failed_permanent: int
    failed_transient: int
    quarantined: int
    pending: int

    @property
    def failed(self) -> int:
        return self.failed_permanent + self.failed_transient


@dataclass(frozen=True)
class Output:
    """One file of the final output: its path (a local path or an s3:// URL)."""

    path: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class JobStatusView:
    """What `slurmctl status --json` shows, typed. `as_dict()` is that JSON object."""

    job_id: str
    status: JobStatus
    phase: str
    paused: bool
    tasks: Mapping[str, int]
    phases: Mapping[str, Mapping[str, int]]
    items: Items
    rows: int
    outputs: tuple[Output, ...]
    error: str | None
    executor: str
    backend: str
    workers: int
    workers_lost: int
    items_per_s: float | None
    """The current rate (items/s), when the job's time series has one."""
    eta_s: float | None
    created_at: float
    updated_at: float
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, s: Mapping[str, Any]) -> JobStatusView:
        rate = s.get("items_per_s")
        return cls(
            job_id=s["job_id"],
            status=JobStatus(s["status"]),
            phase=s["phase"],
            paused=bool(s["paused"]),
            tasks=dict(s["tasks"]),
            phases={k: dict(v) for k, v in s["phases"].items()},
            items=Items(**s["items"]),
            rows=s["rows"],
            outputs=tuple(Output(o["path"], o["rows"], o["sha256"]) for o in s["outputs"]),
            error=s["error"],
            executor=s["executor"],
            backend=s["backend"],
            workers=s["workers"],
            workers_lost=s["workers_lost"],
            items_per_s=rate.get("now") if isinstance(rate, dict) else None,
            eta_s=s.get("eta_s"),
            created_at=s["created_at"],
            updated_at=s["updated_at"],
            raw=s,
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.raw)

    @property
    def ended(self) -> bool:
        """COMPLETED, FAILED or CANCELLED."""
        return self.status.terminal
