"""Per-task metrics for the task manifest, and their per-job sums as counters.

The worker runs one task at a time, so what the process did between two commits is what the task
cost: CPU time, peak RSS, /proc/self/io bytes. A commit then moves a handful of job counters
(`obs.*`: sums of those figures, failures by error type, the time series in
`slurmctl.observe.timeseries`), so the dashboard and `/metrics` read per-job resource use from
the counters, never from the task manifests. Those counters are pure metrics (the protocol's
counters move in the commit itself; the breaker keeps its own, exact and at once): a worker
folds its commits' deltas and writes them in one counter-only update every `FLUSH_TASKS` tasks
or `FLUSH_S` seconds, and when it leaves (worker/gather.py), not one per task. A SIGKILLed
worker loses at most its last `FLUSH_S` seconds of them.

`MetricsObserver` plugs this into the worker through the hooks (`slurmctl.hooks`): the worker
never imports this module, and it does not know about the worker's log (`observe.logs`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmctl.backends import Backend
from slurmctl.backends.statestore import TaskCommit, TaskRecord
from slurmctl.errors import SlurmctlError
from slurmctl.hooks import Hooks, TaskCommitted, WorkerInfo
from slurmctl.observe import timeseries
from slurmctl.worker.gather import Gatherer
from slurmctl.worker.http import summarise

log = logging.getLogger("slurmctl.observe")

PROC_IO = Path("/proc/self/io")
IO_FIELDS = ("read_bytes", "write_bytes", "rchar", "wchar")
FAIL_PREFIX = "obs.fail."
JOB_SUMS = {
    "obs.tasks": "tasks",
    "obs.wall_ms": "wall_s",
    "obs.cpu_ms": "cpu_s",
    "obs.handler_calls": "handler_calls",
    "obs.io_read_bytes": "io_read_bytes",
    "obs.io_write_bytes": "io_write_bytes",
    "obs.http_requests": "http_requests",
    "obs.http_errors": "http_errors",
    "obs.http_bytes_sent": "http_bytes_sent",
    "obs.http_bytes_received": "http_bytes_received",
    "obs.http_latency_ms": "http_latency_ms",
    "obs.http_429": "http_429",
    "obs.rate_wait_ms": "rate_wait_s",
}
"""Counter name -> the key `job_resources` reports it under (`_ms` counters as seconds)."""
FLUSH_TASKS = 50
FLUSH_S = 5.0
"""A worker's per-task metrics are written together this often (tasks, seconds) at most."""


def read_proc_io() -> dict[str, int] | None:
    """This process's I/O counters (Linux); None elsewhere."""
    try:
        text = PROC_IO.read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in IO_FIELDS:
            values[name.strip()] = int(value)
    return values


@dataclass
class TaskObserver:
    """One per worker process and job: baselines between commits, and the job's start time."""

    backend: Backend
    job_id: str
    worker_id: str
    io_base: dict[str, int] | None = field(default_factory=read_proc_io)
    _created_at: float | None = None
    _pending: Gatherer[dict[str, int]] | None = None

    def pending(self) -> Gatherer[dict[str, int]]:
        if self._pending is None:
            self._pending = Gatherer("metrics", self._write, FLUSH_TASKS, FLUSH_S)
        return self._pending

    def _write(self, deltas: list[dict[str, int]]) -> None:
        """One counter-only update for the folded deltas of several commits."""
        folded: dict[str, int] = {}
        for d in deltas:
            for k, v in d.items():
                folded[k] = folded.get(k, 0) + v
        try:
            self.backend.state.update_job(self.job_id, {}, counter_deltas=folded)
        except Exception as e:  # noqa: BLE001 - observability must not fail a worker
            log.warning("metrics of %d task(s) not recorded: %s", len(deltas), e)

    def flush(self) -> None:
        """Write what is folded and stop the timer (the worker leaves)."""
        if self._pending is not None:
            self._pending.close()

    def created_at(self) -> float:
        if self._created_at is None:
            job = self.backend.state.get_job(self.job_id)
            self._created_at = job.created_at if job is not None else time.time()
        return self._created_at

    def io_delta(self) -> dict[str, int] | None:
        now = read_proc_io()
        base, self.io_base = self.io_base, now
        if now is None:
            return None
        return {k: v - (base or {}).get(k, 0) for k, v in now.items()}

    def failures_by_type(self, commit: TaskCommit) -> dict[str, int]:
        """From the item errors just written (only when the task had failures)."""
        if not commit.errors_key or not (commit.failed_permanent + commit.failed_transient):
            return {}
        try:
            data = self.backend.objects.get_bytes(commit.errors_key, sha256=commit.errors_sha256)
        except SlurmctlError as e:
            log.warning("metrics: cannot read %s back: %s", commit.errors_key, e)
            return {}
        out: dict[str, int] = {}
        for line in data.splitlines():
            etype = str(json.loads(line).get("error_type") or "unknown")
            out[etype] = out.get(etype, 0) + 1
        return dict(sorted(out.items()))

    def task_metrics(self, ctx: Any, commit: TaskCommit, base: dict[str, Any]) -> dict[str, Any]:
        """The manifest's metrics: `base` (the runner's figures) and the rest of issue 7's."""
        snapshot = base.get("handler") or {}
        counters: dict[str, int] = dict(snapshot.get("counters", {}))
        http = summarise(counters)
        handler = {
            **snapshot,
            "counters": {k: v for k, v in counters.items() if not k.startswith("http.")},
        }
        ratelimit = snapshot.get("ratelimit")
        wait_s: float | None = None
        if isinstance(ratelimit, dict) and "wait_s" in ratelimit:
            wait_s = float(ratelimit["wait_s"])
        elif isinstance(getattr(ctx, "waited_s", None), int | float):
            wait_s = float(ctx.waited_s)
        items = commit.succeeded + commit.failed_permanent + commit.failed_transient
        wall_s = float(base.get("wall_s") or 0)
        return {
            **base,
            "items_per_s": round(items / wall_s, 3) if wall_s > 0 else None,
            "io": self.io_delta(),
            "http": http,
            "failures_by_type": self.failures_by_type(commit),
            "rate_limit_wait_s": None if wait_s is None else round(wait_s, 3),
            "handler": handler,
        }

    def job_deltas(self, metrics: dict[str, Any], now: float) -> dict[str, int]:
        """The counters one commit moves: per-job sums and the time series."""
        http = metrics.get("http") or {}
        io = metrics.get("io") or {}
        by_type: dict[str, int] = metrics.get("failures_by_type") or {}
        failed = int(metrics.get("failed_permanent", 0)) + int(metrics.get("failed_transient", 0))
        # a 429 through ctx.http that fails its item is both: count the larger of the two
        throttled = max(int(http.get("status", {}).get("429", 0)), by_type.get("throttled", 0))
        deltas = {
            "obs.tasks": 1,
            "obs.wall_ms": int(float(metrics.get("wall_s") or 0) * 1000),
            "obs.cpu_ms": int(float(metrics.get("cpu_s") or 0) * 1000),
            "obs.handler_calls": int(metrics.get("handler_calls", 0)),
            "obs.io_read_bytes": max(0, int(io.get("read_bytes", 0))),
            "obs.io_write_bytes": max(0, int(io.get("write_bytes", 0))),
            "obs.http_requests": int(http.get("requests", 0)),
            "obs.http_errors": int(http.get("errors", 0)),
            "obs.http_bytes_sent": int(http.get("bytes_sent", 0)),
            "obs.http_bytes_received": int(http.get("bytes_received", 0)),
            "obs.http_latency_ms": int(
                float(http.get("latency_ms", {}).get("avg", 0)) * int(http.get("requests", 0))
            ),
            "obs.http_429": int(http.get("status", {}).get("429", 0)),
            "obs.rate_wait_ms": int(float(metrics.get("rate_limit_wait_s") or 0) * 1000),
        }
        deltas.update({FAIL_PREFIX + t: n for t, n in by_type.items()})
        items = int(metrics.get("succeeded", 0)) + failed
        deltas.update(timeseries.commit_deltas(self.created_at(), now, items, failed, throttled))
        return {k: v for k, v in deltas.items() if v}

    def committed(self, task: TaskRecord, metrics: dict[str, Any]) -> None:
        """After the task manifest: record the commit in the job counters.

        Best effort: the commit already counted, so a failure here is logged, never raised.
        """
        by_type = metrics.get("failures_by_type") or {}
        if by_type:
            log.warning(
                "%s: %d item(s) failed: %s",
                task.task_id,
                sum(by_type.values()),
                ", ".join(f"{t} {n}" for t, n in by_type.items()),
            )
        log.info(
            "%s: %d items (%d succeeded) in %.2f s, %.2f CPU s",
            task.task_id,
            metrics.get("items", 0),
            metrics.get("succeeded", 0),
            metrics.get("wall_s", 0),
            metrics.get("cpu_s", 0),
        )
        try:
            self.pending().add(self.job_deltas(metrics, time.time()))
        except Exception as e:  # noqa: BLE001 - observability must not fail a committed task
            log.warning("%s: metrics not recorded: %s", task.task_id, e)


_observers: dict[tuple[str, str], TaskObserver] = {}
_lock = threading.Lock()


def task_observer(backend: Backend, job_id: str, worker_id: str) -> TaskObserver:
    """The process's observer for this job and worker (created on first use)."""
    with _lock:
        obs = _observers.get((job_id, worker_id))
        if obs is None or obs.backend is not backend:
            if obs is not None:
                obs.flush()  # what the earlier backend's worker folded
            obs = _observers[(job_id, worker_id)] = TaskObserver(backend, job_id, worker_id)
        return obs


class MetricsObserver(Hooks):
    """The task manifest's metrics and the job's sums and time series, through the hooks."""

    def after_worker_start(self, worker: WorkerInfo) -> None:
        task_observer(worker.backend, worker.job_id, worker.worker_id)  # I/O baseline

    def before_worker_stop(self, worker: WorkerInfo) -> None:
        task_observer(worker.backend, worker.job_id, worker.worker_id).flush()

    def before_task_manifest(self, task: TaskCommitted) -> None:
        observer = task_observer(task.backend, task.job_id, task.worker_id)
        task.metrics = observer.task_metrics(task.ctx, task.commit, task.metrics)

    def after_task_committed(self, task: TaskCommitted) -> None:
        task_observer(task.backend, task.job_id, task.worker_id).committed(task.task, task.metrics)


def job_resources(counters: dict[str, int]) -> dict[str, Any]:
    """Per-job sums of the task metrics, from the counters (O(1) in tasks)."""
    out: dict[str, Any] = {}
    for name, key in JOB_SUMS.items():
        value = counters.get(name, 0)
        out[key] = round(value / 1000, 3) if name.endswith("_ms") and key.endswith("_s") else value
    requests, latency = out["http_requests"], out.pop("http_latency_ms")
    out["http_latency_ms_avg"] = round(latency / requests, 1) if requests else None
    out["failures_by_type"] = {
        k.removeprefix(FAIL_PREFIX): v
        for k, v in sorted(counters.items())
        if k.startswith(FAIL_PREFIX) and v
    }
    busy, wait = counters.get("worker.busy_ms"), counters.get("ratelimit.wait_ms")
    out["rate_wait_share"] = round(wait / busy, 4) if busy and wait is not None else None
    return out
