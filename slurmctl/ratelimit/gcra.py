"""The shared schedule's arithmetic (GCRA), kept pure so both state stores and the property
tests use the very same code.

The bucket holds the theoretical arrival time (TAT) of the next request. With T = 1/rate and a
tolerance tau = (burst - 1 - HEADROOM) * T, a request may go at s >= TAT - tau, and each one pushes
TAT by T. Any set of slot times produced this way has at most rate * t + burst - HEADROOM slots in
any window t. The one slot of headroom (when burst > 1) absorbs a send that leaves up to one
interval after its slot time (scheduling jitter, clock skew between nodes): workers never use a
slot later than that.
"""

from __future__ import annotations

HEADROOM = 1


def reserve(tat: float, now: float, n: int, rate: float, burst: int) -> tuple[list[float], float]:
    """Reserve n slots at or after now: returns their times and the new TAT."""
    interval = 1.0 / rate
    tau = max(burst - 1 - HEADROOM, 0) * interval
    times: list[float] = []
    for _ in range(n):
        slot = max(now, tat - tau)
        times.append(slot)
        tat = max(tat, slot) + interval
    return times, tat


def released_tat(grant_tat: float, unused: int, rate: float) -> float:
    """TAT once the last `unused` slots of a grant are given back.

    After a grant's first slot every slot advances TAT by exactly one interval, so handing back
    the tail moves TAT back by that many intervals.
    """
    return grant_tat - unused / rate


def lease_size(rate: float, active_workers: int, horizon_s: float = 0.25) -> int:
    """Slots per lease: all leases together cover about horizon_s of the rate.

    Keeps the schedule reserved ahead short (so pause and set-rate act within a second) and the
    bucket written a few hundred times a second at most, whatever the rate.
    """
    return max(1, int(rate * horizon_s / max(active_workers, 1)))
