"""The shared schedule's arithmetic: never more than rate * t + burst slots in any window t."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from slurmctl.ratelimit import gcra


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=5000),
    burst=st.integers(min_value=1, max_value=50),
    requests=st.lists(
        st.tuples(st.floats(min_value=0, max_value=3), st.integers(min_value=1, max_value=40)),
        min_size=1,
        max_size=40,
    ),
    window=st.floats(min_value=0.001, max_value=5),
)
def test_grants_never_exceed_rate_and_burst(
    rate: float, burst: int, requests: list[tuple[float, int]], window: float
) -> None:
    tat, now, granted = 0.0, 0.0, []
    for advance, n in requests:  # leases of any size, interleaved in any order of time
        now += advance
        times, tat = gcra.reserve(tat, now, n, rate, burst)
        assert len(times) == n and all(t >= now for t in times)
        assert times == sorted(times)
        granted += times
    allowed = rate * window + burst
    assert _max_in_window(granted, window) <= allowed + 1e-6


@given(
    rate=st.floats(min_value=1, max_value=1000), n=st.integers(1, 100), unused=st.integers(0, 100)
)
def test_release_gives_back_exactly_the_tail(rate: float, n: int, unused: int) -> None:
    unused = min(unused, n)
    _, tat_all = gcra.reserve(0.0, 100.0, n, rate, 1)
    _, tat_used = gcra.reserve(0.0, 100.0, n - unused, rate, 1) if n - unused else ([], 100.0)
    # the grant's spacing rate: burst 1 is paced (`gcra.paced_rate`)
    assert abs(gcra.released_tat(tat_all, unused, gcra.paced_rate(rate, 1)) - tat_used) < 1e-6


def test_headroom_and_steady_spacing() -> None:
    times, tat = gcra.reserve(0.0, 10.0, 6, rate=10, burst=4)
    # burst 4 minus two slots of headroom: two at once, then one every 100 ms
    assert [round(t, 6) for t in times] == [10.0, 10.0, 10.1, 10.2, 10.3, 10.4]
    assert round(tat, 6) == 10.6
    assert [gcra.headroom(b) for b in (1, 2, 3, 4, 10)] == [0, 1, 2, 2, 2]


def test_lease_size_covers_a_quarter_second_shared_by_workers() -> None:
    assert gcra.lease_size(200, 4) == 12
    assert gcra.lease_size(10, 8) == 1
    assert gcra.lease_size(100_000, 1) == 25_000


def test_a_cut_spaces_slots_wider_but_gives_no_new_burst() -> None:
    _, tat = gcra.reserve(0.0, 10.0, 3, rate=10, burst=5)  # the burst used up
    b = gcra.throttle(10, gcra.NO_BACKOFF, 10.0)
    assert b.effective == 5.0 and b.changed_at == 10.0 and b.hold_until == 0.0
    p = gcra.plan(tat, 10.0, 3, 10, 5, b)
    # the tolerance stays that of the configured rate: no second burst at 10.0
    assert [round(t, 6) for t in p.times] == [10.1, 10.3, 10.5] and p.rate == 5.0


def test_backoff_numbers() -> None:
    b = gcra.throttle(100, gcra.NO_BACKOFF, 0.0, retry_after=2)
    assert (b.effective, b.hold_until) == (50.0, 2.0)
    assert gcra.throttle(100, b, 0.5) == b  # within the cooldown: the same event
    assert gcra.effective_rate(100, b, 4.0) == 50.0 + 5.0 * 4  # +5% of the rate a second
    assert gcra.effective_rate(100, b, 60.0) == 100.0
    assert gcra.plan(0.0, 1.0, 2, 100, 1, b).times == ()  # held until 2.0
    for i in range(20):  # a cut every second: towards the floor, never under 5% of the rate
        b = gcra.throttle(100, b, 10.0 + i)
    assert 5.0 <= gcra.effective_rate(100, b, b.changed_at) < 5.1


def test_lease_size_covers_two_round_trips_up_to_a_quarter_second() -> None:
    assert gcra.lease_size(50, 8) == 1
    assert gcra.lease_size(50, 8, rtt_s=0.1) == 2  # 6.25/s each, over 0.2 s
    assert gcra.lease_size(50, 8, rtt_s=5.0) == 12  # never over 250 ms of the rate
    assert gcra.lease_size(1, 8, rtt_s=5.0) == 1
