"""The shared schedule's arithmetic (GCRA) and its adaptive backoff, kept pure so both state
stores and the property tests use the very same code.

The bucket holds the theoretical arrival time (TAT) of the next request. With T = 1/rate and a
tolerance tau = (burst - 1 - H) * T, a request may go at s >= TAT - tau, and each one pushes TAT
by T. Any set of slot times produced this way has at most rate * t + burst - H slots in any
window t. The H slots of headroom (`headroom(burst)`: 2 when the burst allows, else what it
allows) are the API's spare tokens while the job runs at full rate: they absorb a send that
leaves up to one interval after its slot time (scheduling jitter, clock skew between nodes:
workers never use a slot later than that) and, with a second one, as much again of jitter on the
way to the API (a loaded machine, a slow connection). They cost burst, not rate: the steady
spacing is T whatever H. A burst under 3 leaves fewer: the missing ones are made up by spacing
the slots SLACK_SHARE of an interval further apart each (`paced_rate`), a cost in rate.

Adaptive backoff: when the API throttles, the bucket's *effective* rate is cut multiplicatively
(x BACKOFF_FACTOR, never below BACKOFF_FLOOR of the configured rate) and recovers additively
(RECOVERY_PER_S of the configured rate per second), computed from (effective, changed_at) at each
reservation, so recovery costs no write. Slots are then spaced 1/effective apart while the
tolerance tau stays that of the configured rate: every interval is at least the configured one,
so the bound above holds whatever the cuts and recoveries (proof in docs/ratelimit.md). A
Retry-After sets hold_until: no slot is issued before it, for every worker of the job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_HEADROOM = 2
SLACK_SHARE = 0.1
"""A burst under 3 cannot keep both spare tokens back: for each one missing, the slots are spaced
this share of an interval further apart, and with none left (burst 1) a worker sends at most this
share of an interval after its slot time. That absorbs the common send jitter (about a
millisecond on an idle machine, see docs/ratelimit.md) at a cost in rate, not in burst."""
BACKOFF_FACTOR = 0.5
BACKOFF_FLOOR = 0.05
"""The effective rate never falls below this share of the configured rate."""
RECOVERY_PER_S = 0.05
"""Share of the configured rate regained per second after a cut."""
BACKOFF_COOLDOWN_S = 1.0
"""Throttles reported within this long of the last cut are the same event (the requests that
were already in flight, from every worker): one cut, not one per report."""
MAX_HOLD_S = 900.0
"""A Retry-After longer than this is honoured for this long only."""


def reserve(
    tat: float, now: float, n: int, rate: float, burst: int, effective: float | None = None
) -> tuple[list[float], float]:
    """Reserve n slots at or after now: returns their times and the new TAT.

    Slots are spaced 1/effective apart (the configured rate when effective is None); the burst
    tolerance is always that of the configured rate. Two facts a store may use to write without
    reading TAT first: when tat >= now the new TAT is exactly tat + n/effective (an addition that
    commutes with other reservations), and when tat <= now the result does not depend on tat.
    """
    eff = rate if effective is None else min(max(effective, 1e-9), rate)
    interval = 1.0 / min(eff, paced_rate(rate, burst))
    tau = tolerance(rate, burst)
    times: list[float] = []
    for _ in range(n):
        slot = max(now, tat - tau)
        times.append(slot)
        tat = max(tat, slot) + interval
    return times, tat


def headroom(burst: int) -> int:
    """Slots of the burst kept back as the API's spare tokens: 2, or what a small burst allows."""
    return max(0, min(MAX_HEADROOM, burst - 1))


def paced_rate(rate: float, burst: int) -> float:
    """The fastest slots are spaced: the configured rate, less SLACK_SHARE per spare token a
    small burst cannot keep (burst 1: rate / 1.2, burst 2: rate / 1.1)."""
    return rate / (1 + (MAX_HEADROOM - headroom(burst)) * SLACK_SHARE)


def late_allowed(rate: float, burst: int) -> float:
    """How long after its slot time a worker may still send: one interval when a spare token
    absorbs it, only the slack when the burst leaves none (burst 1)."""
    return (1.0 if headroom(burst) >= 1 else SLACK_SHARE) / rate


def tolerance(rate: float, burst: int) -> float:
    """tau: how far behind TAT a slot may be (the burst, less the headroom), in seconds."""
    return max(burst - 1 - headroom(burst), 0) / rate


def released_tat(grant_tat: float, unused: int, rate: float) -> float:
    """TAT once the last `unused` slots of a grant are given back.

    After a grant's first slot every slot advances TAT by exactly one interval (1/rate, rate being
    the grant's effective rate), so handing back the tail moves TAT back by that many intervals.
    """
    return grant_tat - unused / rate


def lease_size(
    rate: float, active_workers: int, horizon_s: float = 0.25, rtt_s: float = 0.0
) -> int:
    """Slots per lease: all leases together cover about horizon_s of the rate, and each worker's
    lease covers two of its round trips to the store (a slow store would otherwise leave holes
    in the schedule while workers wait for grants), but no lease covers more than horizon_s.

    Keeps the schedule reserved ahead short (so pause and set-rate act within a second) and the
    bucket written a few hundred times a second at most, whatever the rate.
    """
    share = rate / max(active_workers, 1)
    n = max(int(share * horizon_s), math.ceil(share * 2 * rtt_s))
    return max(1, min(n, int(rate * horizon_s)))


# --- adaptive backoff -------------------------------------------------------------------------
@dataclass(frozen=True)
class Backoff:
    """The backoff state a bucket stores beside its TAT."""

    effective: float = 0.0
    """The effective rate right after the last cut; 0 when never cut (the configured rate)."""
    changed_at: float = 0.0
    """When the last cut happened (recovery counts from here)."""
    hold_until: float = 0.0
    """No slot before this time (a Retry-After)."""


def effective_rate(rate: float, b: Backoff, now: float) -> float:
    """The rate in force at `now`: the last cut plus the additive recovery since, capped."""
    if b.effective <= 0 or b.effective >= rate:
        return rate
    grown = b.effective + RECOVERY_PER_S * rate * max(0.0, now - b.changed_at)
    return max(BACKOFF_FLOOR * rate, min(rate, grown))


def throttle(rate: float, b: Backoff, now: float, retry_after: float | None = None) -> Backoff:
    """The backoff after the API throttled at `now` (a 429, a SlowDown).

    The first report cuts the effective rate by BACKOFF_FACTOR (floor BACKOFF_FLOOR); reports
    within BACKOFF_COOLDOWN_S of that cut change nothing more. A Retry-After extends hold_until.
    """
    effective, changed_at = b.effective, b.changed_at
    if not (effective > 0 and 0 <= now - changed_at < BACKOFF_COOLDOWN_S):
        current = effective_rate(rate, b, now)
        effective = max(BACKOFF_FLOOR * rate, current * BACKOFF_FACTOR)
        changed_at = now
    hold = b.hold_until
    if retry_after is not None and retry_after > 0:
        hold = max(hold, now + min(retry_after, MAX_HOLD_S))
    return Backoff(effective, changed_at, hold)


NO_BACKOFF = Backoff()


@dataclass(frozen=True)
class Plan:
    """What a reservation gives: slot times (none while held), the new TAT, the rate used."""

    times: tuple[float, ...]
    tat: float
    rate: float
    """The effective rate the slots are spaced by."""
    hold_until: float = 0.0
    """Set (and no times) when a Retry-After holds issuance."""


def plan(
    tat: float, now: float, n: int, rate: float, burst: int, backoff: Backoff = NO_BACKOFF
) -> Plan:
    """A reservation on a bucket that is not paused: the whole computation both stores run."""
    eff = min(effective_rate(rate, backoff, now), paced_rate(rate, burst))
    if backoff.hold_until > now:
        return Plan((), tat, eff, backoff.hold_until)
    times, new_tat = reserve(tat, now, n, rate, burst, eff)
    return Plan(tuple(times), new_tat, eff)
