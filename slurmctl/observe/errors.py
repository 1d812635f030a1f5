"""`slurmctl analyze-errors`: a job's failures grouped by error type and message signature.

Reads every committed task's item errors (each object verified against the sha256 recorded by the
commit, as finalize does) for the occurrences, and the failure manifests (`failures/<phase>.json`)
for the items whose story ended failed. Tasks are read once, in pages, and items are never held
in memory: a group keeps its counts, first and last seen and a few sample ids.

A hot spot is a batch, worker, node or Slurm array index whose share of failed items is
abnormal for its phase: at least `MIN_FAILURES` failures, at least twice the phase's failure
rate, and at least `Z_MIN` standard deviations above what that rate predicts for that many items
(binomial). Each phase has its own rate: a retry phase holds only items that failed before.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.errors import FRAMEWORK_ERROR
from slurmctl.executors.slurm.deaths import node_report
from slurmctl.finalize import failures as manifests
from slurmctl.ids import phase_number
from slurmctl.jobs import get_job
from slurmctl.layout import JobLayout
from slurmctl.states import TaskStatus
from slurmctl.worker.classify import PERMANENT

SAMPLES = 5
MAX_GROUPS = 1000
MIN_FAILURES = 3
Z_MIN = 3.0
MAX_HOT_SPOTS = 10

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://(\[[^\]\s]*\]|[^/\s:'\"]+)(?::\d+)?[^\s'\"]*", re.I)
_RULES: list[tuple[re.Pattern[str], str]] = [
    (_URL, r"<url:\1>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>"),
    (re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b", re.I), "<uuid>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{12,}\b", re.I), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "'…'"),
    (re.compile(r"(?<!HTTP )\b[a-z_]*\d[\w-]*\b", re.I), "N"),
]
_TYPE_NAME = re.compile(r"[A-Za-z_][\w.]*")
_IPV6 = re.compile(r"\[?(?<![\w:.])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}\]?(?::\d+)?(?![\w:])", re.I)
_URL_IP = re.compile(r"<url:\d{1,3}(?:\.\d{1,3}){3}>")


def _ipv6(m: re.Match[str]) -> str:
    """An IPv6 address (not a time of day: it has `::` or a hex letter)."""
    text = m.group(0)
    return "<ip>" if "::" in text or re.search(r"[a-f]", text, re.I) else text


def normalise(message: str) -> str:
    """The message with ids, numbers, quoted values and addresses replaced by placeholders.

    URLs keep their host (a failing service is worth telling apart) and lose path and query
    (where ids live); IP addresses, e-mail addresses, UUIDs and long hex strings go entirely.
    """
    head, sep, text = message.partition(": ")
    if not sep or not _TYPE_NAME.fullmatch(head):  # keep the exception's type name as it is
        head, sep, text = "", "", message
    for i, (pattern, repl) in enumerate(_RULES):
        text = pattern.sub(repl, text)
        if i == 3:  # after IPv4, before the numbers: IPv6
            text = _IPV6.sub(_ipv6, text)
    text = _URL_IP.sub("<url:<ip>>", text)
    return (head + sep + re.sub(r"\s+", " ", text).strip())[:200]


@dataclass
class Group:
    error_type: str
    signature: str
    count: int = 0
    final: int = 0
    phases: dict[str, int] = field(default_factory=dict)
    first_seen: float | None = None
    last_seen: float | None = None
    samples: list[str] = field(default_factory=list)
    example: str = ""
    reasons: dict[str, int] = field(default_factory=dict)

    def seen(self, at: float | None) -> None:
        if at is None:
            return
        self.first_seen = at if self.first_seen is None else min(self.first_seen, at)
        self.last_seen = at if self.last_seen is None else max(self.last_seen, at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "error_type": self.error_type,
            "permanent": self.error_type in PERMANENT or self.error_type in TASK_GROUPS,
            "signature": self.signature,
            "count": self.count,
            "final": self.final,
            "phases": dict(sorted(self.phases.items(), key=lambda kv: phase_number(kv[0]))),
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "sample_item_ids": self.samples,
            "example": self.example,
            "reasons": self.reasons,
        }


@dataclass
class Tally:
    """Items and failures per key of one dimension (batch, worker, node, array index)."""

    items: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def add(self, key: str | None, items: int, failures: int) -> None:
        if key is None:
            return
        self.items[key] = self.items.get(key, 0) + items
        self.failures[key] = self.failures.get(key, 0) + failures


TASK_GROUPS = ("framework", "task_failed")
"""The group types of tasks that could not run (their samples are task ids, not item ids):
slurmctl's own code failed, or the task could not start (a corrupt batch)."""


def worker_place(worker_id: str | None) -> tuple[str | None, str | None]:
    """(node, array index) from a Slurm worker id `<array job>_<index>@<node>`."""
    if not worker_id or "@" not in worker_id:
        return None, None
    head, _, node = worker_id.partition("@")
    index = head.rpartition("_")[2] if "_" in head else None
    return node or None, index


def hot_spots(tally: Tally, rate: float, dimension: str) -> list[dict[str, Any]]:
    if len(tally.items) < 2 or not 0 < rate < 1:
        return []
    out: list[dict[str, Any]] = []
    for key, n in tally.items.items():
        f = tally.failures.get(key, 0)
        if n <= 0 or f < MIN_FAILURES or f / n < 2 * rate:
            continue
        z = (f - n * rate) / math.sqrt(n * rate * (1 - rate))
        if z >= Z_MIN:
            out.append(
                {
                    "dimension": dimension,
                    "key": key,
                    "items": n,
                    "failures": f,
                    "failure_rate": round(f / n, 4),
                    "phase_failure_rate": round(rate, 4),
                    "times_phase_rate": round(f / n / rate, 1),
                    "z": round(z, 1),
                }
            )
    out.sort(key=lambda h: (-h["z"], h["key"]))
    return out[:MAX_HOT_SPOTS]


def analyze(backend: Backend, job_id: str) -> dict[str, Any]:
    """Every failure of the job, grouped; see the module's docstring."""
    job = get_job(backend, job_id)
    groups: dict[tuple[str, str], Group] = {}
    dims: dict[tuple[str, str], Tally] = {}  # (phase, dimension): a retry phase holds only
    # items that failed before, so each phase is compared with its own failure rate
    phase_items: dict[str, list[int]] = {}
    items = failures = tasks = 0

    def group(entry: dict[str, Any]) -> Group:
        etype = str(entry.get("error_type") or "unknown")
        sig = normalise(str(entry.get("message") or entry.get("signature") or ""))
        key = (etype, sig)
        if key not in groups and len(groups) >= MAX_GROUPS:
            key = (etype, "(other signatures)")
        if key not in groups:
            groups[key] = Group(etype, key[1], example=str(entry.get("message") or ""))
        return groups[key]

    for task in backend.state.iter_tasks(job_id, status=TaskStatus.SUCCESS):
        tasks += 1
        failed = task.failed_permanent + task.failed_transient
        n = task.succeeded + failed
        items += n
        failures += failed
        node, index = worker_place(task.worker_id)
        totals = phase_items.setdefault(task.phase, [0, 0])
        totals[0] += n
        totals[1] += failed
        for dim, key in (
            ("batch", task.batch_id),
            ("worker", task.worker_id),
            ("node", node),
            ("array_index", index),
        ):
            dims.setdefault((task.phase, dim), Tally()).add(key, n, failed)
        if not failed or not task.errors_key:
            continue
        data = backend.objects.get_bytes(task.errors_key, sha256=task.errors_sha256)
        for line in data.splitlines():
            entry = json.loads(line)
            g = group(entry)
            g.count += 1
            g.phases[task.phase] = g.phases.get(task.phase, 0) + 1
            g.seen(task.end_time)
            if len(g.samples) < SAMPLES:
                g.samples.append(str(entry.get("item_id")))
    for task in backend.state.iter_tasks(job_id, status=TaskStatus.FAILED):
        tasks += 1  # a task that could not run: its reason is the group's example
        error = str(task.error or "")
        kind = TASK_GROUPS[0] if f": {FRAMEWORK_ERROR}: " in error else TASK_GROUPS[1]
        g = group({"error_type": kind, "message": error.split(": ", 1)[-1]})
        g.count += 1
        g.final += 1
        g.phases[task.phase] = g.phases.get(task.phase, 0) + 1
        g.seen(task.end_time)
        if len(g.samples) < SAMPLES:
            g.samples.append(task.task_id)
    final = 0
    for _, entry in manifests.all_entries(backend, job_id, job.phase):  # streamed
        g = group(entry)
        g.final += 1
        reason = str(entry.get("reason") or "")
        g.reasons[reason] = g.reasons.get(reason, 0) + 1
        final += 1
    rate = failures / items if items else 0.0
    ordered = sorted(groups.values(), key=lambda g: (-g.count, -g.final, g.error_type, g.signature))
    by_type: dict[str, dict[str, int]] = {}
    for g in ordered:
        t = by_type.setdefault(g.error_type, {"count": 0, "final": 0})
        t["count"] += g.count
        t["final"] += g.final
    spots: list[dict[str, Any]] = []
    for (phase, dim), tally in dims.items():
        n, f = phase_items[phase]
        spots += [{"phase": phase, **h} for h in hot_spots(tally, f / n if n else 0.0, dim)]
    return {
        "job_id": job_id,
        "status": str(job.status),
        "phase": job.phase,
        "tasks_read": tasks,
        "items_processed": items,
        "failures": failures,
        "failure_rate": round(rate, 4),
        "final_failures": final,
        "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["count"])),
        "groups": [g.as_dict() for g in ordered],
        "hot_spots": spots,
        "slurm_nodes": _nodes(backend, job_id),
        "analyzed_at": _iso(time.time()),
    }


def _nodes(backend: Backend, job_id: str) -> dict[str, Any]:
    """The Slurm workers' deaths by kind and the bad nodes (executors/slurm/deaths.py)."""
    try:
        doc = backend.objects.get_json(JobLayout(job_id).manifest)
    except ObjectNotFound:
        return node_report({})
    return node_report(doc if isinstance(doc, dict) else {})


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
