"""Alerts: rules over the counters and the status, sent once per episode, resolved when cleared.

Evaluated by `slurmctl watch` (every interval), and through the hooks (`AlertsObserver`) after
each finalize and by the workers every ALERT_EVERY_S. Settings come
from the job definition's `params.alerts` (see `AlertSettings`); the webhook URL is a secret
reference (`${NAME}` or `${file:PATH}`) resolved in the evaluating process's environment and
never written anywhere.

Episode state lives in `jobs/<job_id>/alerts.json`. Two evaluators at once (watch and finalize)
cannot both deliver: each delivery first claims `jobs/<job_id>/alerts/<rule>.<episode>.<state>`
with a put-if-absent, and only the winner sends.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from slurmctl import secrets as secret_refs
from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.statestore import JobRecord
from slurmctl.config import JobDefinition
from slurmctl.errors import UserError
from slurmctl.hooks import Hooks, WorkerInfo
from slurmctl.jobs import breaker_reason, get_job, load_definition
from slurmctl.layout import JobLayout
from slurmctl.observe import timeseries
from slurmctl.observe.status import job_status
from slurmctl.observe.timeseries import format_duration
from slurmctl.states import JobStatus

log = logging.getLogger("slurmctl.alerts")

TITLES = {
    "stalled": "job stalled",
    "error_rate": "abnormal error rate",
    "rate_limit": "rate limit exhausted",
    "infrastructure": "infrastructure failure",
    "job_failed": "job failed",
    "breaker": "circuit breaker tripped",
}
MAX_EVENTS = 50
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_TRIES = 3


def state_key(job_id: str) -> str:
    return JobLayout(job_id).root + "alerts.json"


def claim_key(job_id: str, rule: str, episode: int, state: str) -> str:
    return JobLayout(job_id).root + f"alerts/{rule}.{episode:06d}.{state}"


@dataclass(frozen=True)
class AlertSettings:
    """`params.alerts` in the job definition; a threshold set to null turns its rule off."""

    webhook: str | None = None
    stall_minutes: float | None = 10.0
    error_rate: float | None = 0.2
    error_window_minutes: float = 10.0
    error_min_items: int = 50
    rate_limit_wait_share: float | None = 0.9
    rate_limit_min_busy_s: float = 60.0
    throttled_per_window: int | None = 20
    infrastructure: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AlertSettings:
        raw = params.get("alerts") or {}
        if not isinstance(raw, Mapping):
            raise UserError("params.alerts: expected a mapping of alert settings")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise UserError(
                f"params.alerts: unknown setting(s) {', '.join(unknown)}; valid: "
                + ", ".join(sorted(known))
            )
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if value is None or name == "webhook" or name == "infrastructure":
                values[name] = value if name != "infrastructure" else bool(value)
                continue
            try:
                values[name] = int(value) if name.endswith(("items", "window")) else float(value)
            except (TypeError, ValueError):
                msg = f"params.alerts.{name}: expected a number, found {value!r}"
                raise UserError(msg) from None
        return cls(**values)


@dataclass
class Condition:
    active: bool
    message: str = ""


@dataclass
class Event:
    rule: str
    state: str
    """"firing" or "resolved"."""
    message: str
    text: str
    at: float
    delivered: bool = False
    webhook: str | None = None
    """"sent", "failed: ...", "not configured" or "unresolved: ${NAME}"."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "state": self.state,
            "message": self.message,
            "text": self.text,
            "at": _iso(self.at),
            "webhook": self.webhook,
        }


@dataclass
class Evaluation:
    job_id: str
    events: list[Event] = field(default_factory=list)
    open: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)


def read_state(backend: Backend, job_id: str) -> dict[str, Any]:
    try:
        doc: Any = backend.objects.get_json(state_key(job_id))
    except ObjectNotFound:
        return {}
    return doc if isinstance(doc, dict) else {}


# --- the rules ----------------------------------------------------------------------------------
def _work_left(job: JobRecord, status: dict[str, Any]) -> int:
    counts = status.get("phases", {}).get(job.phase, {})
    return int(counts.get("PENDING", 0)) + int(counts.get("RUNNING", 0))


def _waiting(job: JobRecord, now: float) -> bool:
    """Nothing is expected to complete: paused, or a retry phase's backoff."""
    return job.paused or job.not_before > now


def progress_marker(counters: dict[str, int]) -> str:
    """Changes whenever a task commits (the series and the SUCCESS counters move)."""
    success = sum(v for k, v in counters.items() if k.endswith(".tasks.SUCCESS"))
    return f"{timeseries.processed(counters)}/{success}"


def stalled(
    s: AlertSettings, job: JobRecord, status: dict[str, Any], progress_at: float, now: float
) -> Condition:
    left = _work_left(job, status)
    if s.stall_minutes is None or job.status.terminal or not left or _waiting(job, now):
        return Condition(False)
    limit = s.stall_minutes * 60
    if now - progress_at < limit:
        return Condition(False)
    return Condition(
        True,
        f"no item completed in the last {format_duration(limit)} while {left} task(s) are "
        "running or queued",
    )


def error_rate(s: AlertSettings, job: JobRecord, counters: dict[str, int], now: float) -> Condition:
    if s.error_rate is None or job.status.terminal:
        return Condition(False)
    window = s.error_window_minutes * 60
    w = timeseries.window_sums(counters, job.created_at, now, window)
    if w["items"] < max(1, s.error_min_items) or w["failed"] / w["items"] < s.error_rate:
        return Condition(False)
    return Condition(
        True,
        f"{w['failed'] / w['items']:.0%} of the items completed in the last "
        f"{format_duration(window)} failed ({w['failed']} of {w['items']}), over "
        f"{s.error_rate:.0%}",
    )


def rate_limit(
    s: AlertSettings,
    job: JobRecord,
    counters: dict[str, int],
    previous: dict[str, Any],
    now: float,
) -> Condition:
    if job.status.terminal:
        return Condition(False)
    reasons = []
    busy, wait = counters.get("worker.busy_ms"), counters.get("ratelimit.wait_ms")
    if s.rate_limit_wait_share is not None and busy is not None and wait is not None:
        d_busy = busy - int(previous.get("busy_ms", 0))
        d_wait = wait - int(previous.get("wait_ms", 0))
        if d_busy >= s.rate_limit_min_busy_s * 1000 and d_wait / d_busy >= s.rate_limit_wait_share:
            reasons.append(
                f"workers spent {d_wait / d_busy:.0%} of their task time waiting for rate-limit "
                f"slots (threshold {s.rate_limit_wait_share:.0%})"
            )
    if s.throttled_per_window is not None:
        window = s.error_window_minutes * 60
        throttled = timeseries.window_sums(counters, job.created_at, now, window)["throttled"]
        if throttled >= s.throttled_per_window:
            reasons.append(
                f"{throttled} throttled answers (HTTP 429) in the last {format_duration(window)}"
            )
    return Condition(bool(reasons), "; ".join(reasons))


def infrastructure(
    s: AlertSettings, job: JobRecord, status: dict[str, Any], now: float
) -> Condition:
    slurm = status.get("slurm")
    left = _work_left(job, status)
    if not s.infrastructure or not isinstance(slurm, dict) or job.status.terminal:
        return Condition(False)
    if not left or _waiting(job, now):
        return Condition(False)
    if slurm.get("error"):
        return Condition(True, f"cannot query Slurm: {slurm['error']}")
    if slurm.get("workers_running") or slurm.get("workers_queued") or slurm.get("finalize_queued"):
        return Condition(False)
    return Condition(
        True,
        f"no Slurm worker running or queued, and no finalize, while {left} task(s) remain; "
        f"`slurmctl resume {job.job_id}` submits workers",
    )


def breaker(job: JobRecord) -> Condition:
    """The circuit breaker paused the job (worker/breaker.py): fires at once, by the worker that
    tripped it; resolved when `resume` closes it."""
    reason = breaker_reason(job)
    return Condition(reason is not None, reason or "")


def job_failed(job: JobRecord) -> Condition:
    if job.status != JobStatus.FAILED:
        return Condition(False)
    return Condition(True, f"the job FAILED: {job.error or 'no reason recorded'}")


# --- delivery -----------------------------------------------------------------------------------
def post_webhook(url: str, text: str) -> str:
    """A Slack-compatible POST ({"text": ...}); returns "sent" or why not (never the URL)."""
    body = json.dumps({"text": text}).encode()
    error = ""
    for attempt in range(WEBHOOK_TRIES):
        req = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=WEBHOOK_TIMEOUT_S) as resp:
                resp.read()
            return "sent"
        except Exception as e:  # noqa: BLE001 - any failure is reported, never raised
            error = f"{type(e).__name__}: {getattr(e, 'code', '') or getattr(e, 'reason', '')}"
            time.sleep(0.5 * (attempt + 1))
    return f"failed: {error}"


def resolve_webhook(definition: JobDefinition, settings: AlertSettings) -> tuple[str | None, str]:
    """(URL or None, what to record): the reference is resolved here, at delivery time."""
    if not settings.webhook:
        return None, "not configured"
    try:
        url = secret_refs.resolve(
            settings.webhook, base_dir=definition.config_dir, where="params.alerts.webhook"
        )
    except UserError:
        return None, f"unresolved: {settings.webhook}"
    return (str(url), "") if url else (None, "not configured")


Sender = Callable[[str, str], str]


def alert_text(job_id: str, rule: str, state: str, message: str) -> str:
    title = TITLES.get(rule, rule)
    if state == "firing":
        return f"[slurmctl] {job_id}: {title}: {message}"
    return f"[slurmctl] {job_id}: resolved: {title}: {message}"


# --- evaluation ---------------------------------------------------------------------------------
def evaluate(
    backend: Backend,
    job_id: str,
    *,
    now: float | None = None,
    status: dict[str, Any] | None = None,
    send: Sender = post_webhook,
) -> Evaluation:
    """Run the rules, deliver what changed, store the episode state; returns the events."""
    now = time.time() if now is None else now
    job = get_job(backend, job_id)
    status = status if status is not None else job_status(backend, job_id)
    counters = backend.state.counters(job_id, running=False)  # the split is in status
    definition = load_definition(backend, job_id)
    settings = AlertSettings.from_params(definition.params)
    state = read_state(backend, job_id)
    rules: dict[str, Any] = dict(state.get("rules", {}))

    marker = progress_marker(counters)
    progress = dict(state.get("progress", {}))
    progressed = bool(progress) and progress.get("marker") != marker
    if not progress:  # first evaluation: the newest bucket with items, or the job's last change
        last = timeseries.last_activity(counters, job.created_at, now) or 0.0
        progress = {"marker": marker, "at": max(last, job.created_at)}
    if progressed or _waiting(job, now):
        progress = {"marker": marker, "at": now}
    progress_at = max(float(progress["at"]), job.updated_at, min(job.not_before, now))
    sample = dict(state.get("ratelimit_sample", {}))

    conditions = {
        "stalled": stalled(settings, job, status, progress_at, now),
        "error_rate": error_rate(settings, job, counters, now),
        "rate_limit": rate_limit(settings, job, counters, sample, now),
        "infrastructure": infrastructure(settings, job, status, now),
        "job_failed": job_failed(job),
        "breaker": breaker(job),
    }
    out = Evaluation(job_id, status=status)
    webhook: tuple[str | None, str] | None = None
    for rule, cond in conditions.items():
        cur = dict(rules.get(rule, {"open": False, "episode": 0}))
        if cond.active == bool(cur.get("open")):
            if cond.active:
                cur["message"] = cond.message
                rules[rule] = cur
            continue
        if cond.active:
            cur = {"open": True, "episode": int(cur.get("episode", 0)) + 1, "since": _iso(now)}
            cur["message"] = message = cond.message
            kind = "firing"
        else:
            cur = {**cur, "open": False, "resolved_at": _iso(now)}
            message = _resolution(rule, job, progressed)
            kind = "resolved"
        rules[rule] = cur
        event = Event(rule, kind, message, alert_text(job_id, rule, kind, message), now)
        claim = claim_key(job_id, rule, int(cur["episode"]), kind)
        if backend.objects.put_bytes(claim, event.text.encode(), if_absent=True) is None:
            continue  # another evaluator delivered this one
        if webhook is None:
            webhook = resolve_webhook(definition, settings)
        url, why = webhook
        event.webhook = send(url, event.text) if url else why
        event.delivered = True
        (log.warning if kind == "firing" else log.info)("%s", event.text)
        out.events.append(event)

    busy, wait = counters.get("worker.busy_ms"), counters.get("ratelimit.wait_ms")
    if (
        busy is not None
        and wait is not None
        and (
            not sample
            or busy - int(sample.get("busy_ms", 0)) >= settings.rate_limit_min_busy_s * 1000
        )
    ):
        sample = {"busy_ms": busy, "wait_ms": wait, "at": now}
    events = list(state.get("events", [])) + [e.as_dict() for e in out.events]
    new_state = {
        "job_id": job_id,
        "rules": rules,
        "progress": progress,
        "ratelimit_sample": sample,
        "events": events[-MAX_EVENTS:],
    }
    if new_state != {k: state.get(k) for k in new_state}:
        backend.objects.put_json(state_key(job_id), new_state)
    out.open = {r: v for r, v in rules.items() if v.get("open")}
    return out


def _resolution(rule: str, job: JobRecord, progressed: bool) -> str:
    if rule == "stalled" and progressed:
        return "items are completing again"
    if job.status.terminal and rule != "job_failed":
        return f"the job is {job.status}"
    if job.paused and rule != "breaker":
        return "the job is paused"
    return {
        "error_rate": "the error rate is back under the threshold",
        "rate_limit": "workers are no longer held back by the rate limit",
        "infrastructure": "workers are running or queued again",
        "job_failed": f"the job is {job.status} again",
        "breaker": "the job was resumed: the breaker is closed",
    }.get(rule, "cleared")


def evaluate_quietly(backend: Backend, job_id: str) -> None:
    """For finalize: alerts must never stop the job; problems are logged."""
    try:
        evaluate(backend, job_id)
    except Exception as e:  # noqa: BLE001 - whatever it is, finalize carries on
        log.warning("alerts of %s not evaluated: %s", job_id, e)


ALERT_EVERY_S = 300.0
"""Workers evaluate the job's alerts this often (finalize and `watch` do too); the alert claims in
the object store make sure each episode is sent once."""


class AlertsObserver(Hooks):
    """Alerts through the hooks: after every finalize, when the breaker pauses the job, and from
    each worker every ALERT_EVERY_S."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], float] = {}

    def on_worker_poll(self, worker: WorkerInfo) -> None:
        key, now = (worker.job_id, worker.worker_id), time.monotonic()
        last = self.last.setdefault(key, now)  # the first evaluation one interval after start
        if now - last > ALERT_EVERY_S:
            self.last[key] = now
            evaluate_quietly(worker.backend, worker.job_id)

    def after_finalize(self, backend: Backend, job_id: str) -> None:
        evaluate_quietly(backend, job_id)

    def after_job_paused(self, backend: Backend, job_id: str, reason: str) -> None:
        evaluate_quietly(backend, job_id)  # the breaker alert, at once


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
