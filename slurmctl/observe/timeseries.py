"""The per-job time series of items completed, kept as a bounded set of counters.

A task commit adds its items to the counter of the time bucket it falls in, measured from the
job's creation. Bucket widths double as the job gets older: level 0 has `LEVEL0_BUCKETS` buckets
of `BASE_S` seconds; level L >= 1 covers ages [LEVEL0_SPAN * 2^(L-1), LEVEL0_SPAN * 2^L) with
`LEVEL0_BUCKETS / 2` buckets of BASE_S * 2^L seconds. With MAX_LEVEL levels a job has at most
LEVEL0_BUCKETS + MAX_LEVEL * LEVEL0_BUCKETS / 2 points per series (224 here, over 22 days; a
one-hour job has 80), whatever its size: the counters `status` reads stay bounded (invariant 5).

Three series share the bucket keys: items completed (`obs.ts.L.I`), items failed
(`obs.tf.L.I`, only when non-zero) and throttled (`obs.tt.L.I`: per task, the larger of its
HTTP 429 answers through ctx.http and its items that failed as `throttled`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from slurmctl.backends.statestore import JobRecord

BASE_S = 15
LEVEL0_BUCKETS = 32
MAX_LEVEL = 12
LEVEL0_SPAN = BASE_S * LEVEL0_BUCKETS
MAX_POINTS = LEVEL0_BUCKETS + MAX_LEVEL * LEVEL0_BUCKETS // 2

ITEMS = "obs.ts."
FAILED = "obs.tf."
THROTTLED = "obs.tt."
SERIES = {ITEMS: "items", FAILED: "failed", THROTTLED: "throttled"}


def bucket_of(age_s: float) -> tuple[int, int]:
    """(level, index) of the bucket an event `age_s` seconds after the job's creation falls in."""
    age = max(0, int(age_s))
    if age < LEVEL0_SPAN:
        return 0, age // BASE_S
    level = 1
    while level < MAX_LEVEL and age >= LEVEL0_SPAN << level:
        level += 1
    start = LEVEL0_SPAN << (level - 1)
    index = min((age - start) // (BASE_S << level), LEVEL0_BUCKETS // 2 - 1)
    return level, index


def bucket_span(level: int, index: int) -> tuple[int, int]:
    """(start age, width) of a bucket, in seconds."""
    if level == 0:
        return index * BASE_S, BASE_S
    width = BASE_S << level
    return (LEVEL0_SPAN << (level - 1)) + index * width, width


def previous_bucket(level: int, index: int) -> tuple[int, int] | None:
    start, _ = bucket_span(level, index)
    return None if start == 0 else bucket_of(start - 1)


def commit_deltas(
    created_at: float, now: float, items: int, failed: int, throttled: int
) -> dict[str, int]:
    """The counter increments recording one task commit in the series."""
    level, index = bucket_of(now - created_at)
    suffix = f"{level}.{index}"
    deltas = {ITEMS + suffix: items}
    if failed:
        deltas[FAILED + suffix] = failed
    if throttled:
        deltas[THROTTLED + suffix] = throttled
    return deltas


@dataclass(frozen=True)
class Point:
    level: int
    index: int
    start: float
    """Epoch seconds."""
    width: float
    items: int = 0
    failed: int = 0
    throttled: int = 0

    def as_dict(self, now: float) -> dict[str, Any]:
        span = max(1.0, min(self.width, now - self.start))
        return {
            "t": round(self.start, 3),
            "width_s": self.width,
            "items": self.items,
            "failed": self.failed,
            "throttled": self.throttled,
            "items_per_s": round(self.items / span, 3),
        }


def read_series(counters: dict[str, int], created_at: float) -> list[Point]:
    """Every recorded bucket, oldest first."""
    found: dict[tuple[int, int], dict[str, int]] = {}
    for name, value in counters.items():
        for prefix, field in SERIES.items():
            if name.startswith(prefix):
                lvl, _, idx = name.removeprefix(prefix).partition(".")
                try:
                    key = (int(lvl), int(idx))
                except ValueError:
                    continue
                found.setdefault(key, {})[field] = value
    points = []
    for (level, index), values in found.items():
        start, width = bucket_span(level, index)
        points.append(Point(level, index, created_at + start, float(width), **values))
    return sorted(points, key=lambda p: p.start)


def window_sums(
    counters: dict[str, int], created_at: float, now: float, window_s: float
) -> dict[str, int]:
    """Items, failures and throttles in the buckets that overlap the last `window_s` seconds
    (whole buckets: the window widens to their edges as the job ages)."""
    out = {"items": 0, "failed": 0, "throttled": 0}
    for p in read_series(counters, created_at):
        if p.start + p.width > now - window_s:
            out["items"] += p.items
            out["failed"] += p.failed
            out["throttled"] += p.throttled
    return out


def last_activity(counters: dict[str, int], created_at: float, now: float) -> float | None:
    """The latest time an item may have completed: the end of the newest non-empty bucket."""
    points = [p for p in read_series(counters, created_at) if p.items]
    return min(now, points[-1].start + points[-1].width) if points else None


def processed(counters: dict[str, int]) -> int:
    """Items completed since the job began, retries included (the sum of the series)."""
    return sum(v for k, v in counters.items() if k.startswith(ITEMS))


def rates(job: JobRecord, counters: dict[str, int], now: float) -> tuple[float, float]:
    """(items/s now, items/s on average).

    "Now" is the current bucket and the one before it: 15 to 30 s early in a job, coarser as
    the job ages (a day-old job's buckets are about an hour wide).
    """
    end = job.updated_at if job.status.terminal and job.updated_at else now
    elapsed = max(1.0, end - job.created_at)
    average = processed(counters) / elapsed
    if job.status.terminal:
        return 0.0, average
    level, index = bucket_of(now - job.created_at)
    window_start, _ = bucket_span(level, index)
    total = counters.get(f"{ITEMS}{level}.{index}", 0)
    prev = previous_bucket(level, index)
    if prev is not None:
        window_start, _ = bucket_span(*prev)
        total += counters.get(f"{ITEMS}{prev[0]}.{prev[1]}", 0)
    span = max(1.0, now - (job.created_at + window_start))
    return total / span, average


def progress_figures(
    job: JobRecord, counters: dict[str, int], status: dict[str, Any], now: float | None = None
) -> dict[str, Any]:
    """The keys `status` adds: items/s now and on average, the ETA, workers running."""
    now = time.time() if now is None else now
    now_rate, average = rates(job, counters, now)
    pending = int(status.get("items", {}).get("pending", 0))
    rate = now_rate or average
    eta = None
    if pending and rate > 0 and not job.status.terminal and not job.paused:
        eta = round(pending / rate, 1)
    slurm = status.get("slurm")
    if isinstance(slurm, dict) and slurm.get("workers_running") is not None:
        workers = int(slurm["workers_running"])
    elif job.status.terminal:
        workers = 0
    else:  # local workers each run one task at a time: the running tasks of the phase
        workers = int(status.get("phases", {}).get(job.phase, {}).get("RUNNING", 0))
    return {
        "items_per_s": {
            "now": round(now_rate, 3),
            "average": round(average, 3),
        },
        "eta_s": eta,
        "workers_running": workers,
    }


def format_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def progress_bar(fraction: float, width: int = 30) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)
