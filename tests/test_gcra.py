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
    assert abs(gcra.released_tat(tat_all, unused, rate) - tat_used) < 1e-6


def test_headroom_and_steady_spacing() -> None:
    times, tat = gcra.reserve(0.0, 10.0, 6, rate=10, burst=4)
    # burst 4 minus one slot of headroom: three at once, then one every 100 ms
    assert [round(t, 6) for t in times] == [10.0, 10.0, 10.0, 10.1, 10.2, 10.3]
    assert round(tat, 6) == 10.6


def test_lease_size_covers_a_quarter_second_shared_by_workers() -> None:
    assert gcra.lease_size(200, 4) == 12
    assert gcra.lease_size(10, 8) == 1
    assert gcra.lease_size(100_000, 1) == 25_000
