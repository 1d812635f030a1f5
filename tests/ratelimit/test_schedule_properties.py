"""Property tests of the schedule arithmetic with adaptive backoff (slurmctl.ratelimit.gcra).

A simulated bucket sees any interleaving of reservations (any lease sizes, from any number of
workers), releases of a grant's tail, throttle reports (with and without Retry-After) and the
time passing between them; whatever happens, the slots handed out never exceed rate * t + burst
in any window t, also when each send leaves up to one interval after its slot (the headroom).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmctl.ratelimit import gcra


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


@dataclass
class Sim:
    """The store's side, as both stores do it: plan / throttle / conditional release."""

    rate: float
    burst: int
    tat: float = 0.0
    backoff: gcra.Backoff = gcra.NO_BACKOFF
    slots: list[float] = field(default_factory=list)
    grants: list[tuple[float, gcra.Plan]] = field(default_factory=list)

    def reserve(self, now: float, n: int) -> gcra.Plan:
        p = gcra.plan(self.tat, now, n, self.rate, self.burst, self.backoff)
        if p.times:
            self.tat = p.tat
            self.slots += p.times
        self.grants.append((now, p))
        return p

    def release(self, p: gcra.Plan, unused: int) -> None:
        unused = min(unused, len(p.times))
        if unused and self.tat == p.tat:  # the condition both stores write on
            self.tat = gcra.released_tat(p.tat, unused, p.rate)
            for t in p.times[len(p.times) - unused :]:
                self.slots.remove(t)


def gaps(hi: float) -> st.SearchStrategy[float]:
    """Time between events: often none at all or a hair (the races that matter), else any."""
    return st.one_of(st.sampled_from([0.0, 1e-4, 1e-3, 0.01]), st.floats(0, hi))


events = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), gaps(0.5), st.integers(1, 40)),
        st.tuples(st.just("lease"), gaps(0.5), st.integers(1, 16)),  # n = workers
        st.tuples(st.just("release"), gaps(0.05), st.integers(0, 40)),
        st.tuples(st.just("throttle"), gaps(2), st.integers(-1, 3)),  # -1: no Retry-After
    ),
    min_size=1,
    max_size=60,
)
windows = st.one_of(st.sampled_from([1e-6, 0.01, 0.1, 1.0]), st.floats(1e-6, 5))


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=2000),
    burst=st.integers(min_value=1, max_value=30),
    script=events,
    window=windows,
    jitter=st.lists(st.floats(0, 1), min_size=1, max_size=50),
)
def test_never_more_than_rate_times_t_plus_burst(
    rate: float,
    burst: int,
    script: list[tuple[str, float, int]],
    window: float,
    jitter: list[float],
) -> None:
    sim, now, last = Sim(rate, burst), 100.0, None
    for kind, advance, k in script:
        now += advance
        if kind == "reserve":
            last = sim.reserve(now, k)
        elif kind == "lease":  # what a worker asks: sized from the effective rate
            last = sim.reserve(now, gcra.lease_size(gcra.effective_rate(rate, sim.backoff, now), k))
        elif kind == "release" and last is not None:
            sim.release(last, k)
        elif kind == "throttle":
            sim.backoff = gcra.throttle(rate, sim.backoff, now, None if k < 0 else float(k))
    slack = max(burst - gcra.headroom(burst), 1)
    assert max_in_window(sim.slots, window) <= rate * window + slack + 1e-6
    # each send up to one interval per slot of headroom after its slot (a worker leaves at most
    # one late, the rest is jitter on the way): still within the burst. A burst of 1 has no
    # slot of headroom to give: there a send one interval late may pair with the next.
    late = max(gcra.headroom(burst), 1) / rate
    sends = [t + jitter[i % len(jitter)] * late for i, t in enumerate(sim.slots)]
    assert max_in_window(sends, window) <= rate * window + max(burst, 2) + 1e-6


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    n=st.integers(min_value=2, max_value=200),
    late=st.lists(st.floats(0, 1), min_size=2, max_size=50),
    path=st.lists(st.floats(0, 1), min_size=2, max_size=50),
)
def test_burst_1_never_sends_two_requests_closer_than_an_interval(
    rate: float, n: int, late: list[float], path: list[float]
) -> None:
    """Issue 13 (hole 14): a bucket that allows no burst refuses a request that comes even a
    little early. Each send leaves up to `late_allowed` after its slot and takes up to
    SLACK_SHARE of an interval more on its way: two arrive at least one interval apart."""
    times, _ = gcra.reserve(100.0, 100.0, n, rate, 1)
    allowed = gcra.late_allowed(rate, 1)
    assert allowed == pytest.approx(gcra.SLACK_SHARE / rate)
    arrivals = [
        t + late[i % len(late)] * allowed + path[i % len(path)] * gcra.SLACK_SHARE / rate
        for i, t in enumerate(times)
    ]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 1 / rate - 1e-9


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=1, max_value=1000),
    burst=st.integers(min_value=1, max_value=20),
    script=events,
)
def test_hold_and_spacing_of_every_grant(
    rate: float, burst: int, script: list[tuple[str, float, int]]
) -> None:
    """No slot before a Retry-After's end; a grant's slots are 1/effective apart, effective in
    [floor, configured]."""
    sim, now = Sim(rate, burst), 100.0
    for kind, advance, k in script:
        now += advance
        if kind == "throttle":
            before = sim.backoff
            sim.backoff = gcra.throttle(rate, before, now, None if k < 0 else float(k))
            if k > 0:
                assert sim.backoff.hold_until >= now + k - 1e-9
            continue
        p = sim.reserve(now, max(k, 1))
        eff = min(gcra.effective_rate(rate, sim.backoff, now), gcra.paced_rate(rate, burst))
        assert gcra.BACKOFF_FLOOR * rate / 1.2 - 1e-9 <= p.rate == eff <= rate + 1e-9
        if sim.backoff.hold_until > now:
            assert p.times == () and p.hold_until == sim.backoff.hold_until
            continue
        assert all(t >= now for t in p.times)
        gaps = [b - a for a, b in zip(p.times, p.times[1:], strict=False) if b > p.times[0]]
        assert all(abs(g - 1.0 / eff) < 1e-6 * max(1.0, 1.0 / eff) for g in gaps[1:])


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=10_000),
    reports=st.lists(
        st.tuples(st.floats(0, 3), st.one_of(st.none(), st.floats(0, 2000))), max_size=30
    ),
    probes=st.lists(st.floats(0, 60), min_size=2, max_size=10),
)
def test_backoff_cuts_multiplicatively_and_recovers_additively(
    rate: float, reports: list[tuple[float, float | None]], probes: list[float]
) -> None:
    b, now = gcra.NO_BACKOFF, 1000.0
    assert gcra.effective_rate(rate, b, now) == rate
    for advance, retry_after in reports:
        now += advance
        before = gcra.effective_rate(rate, b, now)
        after_b = gcra.throttle(rate, b, now, retry_after)
        after = gcra.effective_rate(rate, after_b, now)
        if after_b.changed_at == now and (b.changed_at != now or b.effective == 0):
            # a cut: halved, floored at 5% of the configured rate
            assert after <= max(gcra.BACKOFF_FLOOR * rate, before * gcra.BACKOFF_FACTOR) * (
                1 + 1e-9
            )
        else:  # a report within the cooldown of the last cut: the same event
            assert 0 <= now - b.changed_at < gcra.BACKOFF_COOLDOWN_S
            assert after == before
        assert after >= gcra.BACKOFF_FLOOR * rate * (1 - 1e-9)
        assert after_b.hold_until >= b.hold_until
        if retry_after:
            assert after_b.hold_until >= now + min(retry_after, gcra.MAX_HOLD_S) - 1e-9
        b = after_b
    # recovery: additive (5% of the rate a second), monotone, capped at the configured rate
    times = sorted(now + p for p in probes)
    rates = [gcra.effective_rate(rate, b, t) for t in times]
    assert rates == sorted(rates) and rates[-1] <= rate
    for t, r in zip(times, rates, strict=True):
        if b.effective > 0:
            expect = b.effective + gcra.RECOVERY_PER_S * rate * (t - b.changed_at)
            assert abs(r - max(gcra.BACKOFF_FLOOR * rate, min(rate, expect))) <= 1e-9 * rate


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=1, max_value=500),
    new_rate=st.floats(min_value=1, max_value=500),
    burst=st.integers(min_value=1, max_value=20),
    new_burst=st.integers(min_value=1, max_value=20),
    before=st.lists(st.tuples(gaps(0.3), st.integers(1, 20)), max_size=20),
    after=st.lists(st.tuples(gaps(0.3), st.integers(1, 20)), min_size=1, max_size=20),
    window=windows,
)
def test_after_set_rate_new_grants_obey_the_new_rate(
    rate: float,
    new_rate: float,
    burst: int,
    new_burst: int,
    before: list[tuple[float, int]],
    after: list[tuple[float, int]],
    window: float,
) -> None:
    sim, now = Sim(rate, burst), 100.0
    for advance, n in before:
        now += advance
        sim.reserve(now, n)
    sim.rate, sim.burst, sim.slots = new_rate, new_burst, []  # set-rate: TAT kept
    for advance, n in after:
        now += advance
        sim.reserve(now, n)
    assert max_in_window(sim.slots, window) <= new_rate * window + new_burst + 1e-6


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(min_value=5, max_value=2000),
    burst=st.integers(min_value=1, max_value=20),
    workers=st.integers(1, 64),
)
def test_workers_that_keep_asking_use_the_whole_rate(rate: float, burst: int, workers: int) -> None:
    """Demand that never stops (each worker asks again as its lease runs out): the schedule has
    no hole, so the slots over T seconds are rate * T up to one lease per worker and the burst."""
    sim, duration = Sim(rate, burst), 10.0
    lease = gcra.lease_size(rate, workers)
    ends = [100.0] * workers
    while min(ends) < 100.0 + duration:
        w = ends.index(min(ends))
        p = sim.reserve(ends[w], lease)
        ends[w] = p.times[-1]
    used = [t for t in sim.slots if t < 100.0 + duration]
    assert len(used) >= gcra.paced_rate(rate, burst) * duration - 1  # burst < 3: less, by design
    assert len(used) <= rate * duration + burst


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=5000),
    burst=st.integers(min_value=1, max_value=30),
    offset=st.floats(-5, 5),
    n=st.integers(1, 50),
    cut=st.floats(0.05, 1.0),
)
def test_reservations_a_store_can_write_blind(
    rate: float, burst: int, offset: float, n: int, cut: float
) -> None:
    """DynamoDB's writes without a read: TAT >= now, the new TAT is the addition TAT + n/eff;
    TAT <= now, the grant is the one from TAT = now, whatever TAT was."""
    now = 1_800_000_000.0
    tat, eff = now + offset, min(rate * cut, gcra.paced_rate(rate, burst))  # as the stores do
    times, new_tat = gcra.reserve(tat, now, n, rate, burst, eff)
    ulps = 1e-5  # float rounding: an ulp is 2.4e-7 s at this epoch, times n additions
    if tat >= now:
        assert abs(new_tat - (tat + n / eff)) < ulps
    else:
        idle_times, idle_tat = gcra.reserve(now, now, n, rate, burst, eff)
        assert abs(new_tat - idle_tat) < ulps
        assert all(abs(a - b) < ulps for a, b in zip(times, idle_times, strict=True))
    assert min(times) >= now
