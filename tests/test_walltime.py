"""The walltime rule's arithmetic: what remains before USR1 against the task estimate (the real
Slurm test is tests/slurm/test_walltime.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slurmctl.ratelimit.allocation import AllocationClock, _squeue_end, parse_end_time
from slurmctl.worker.walltime import TaskDurations, WalltimeRule


def _rule(now: list[float], end: float, min_remaining: float | None = None) -> WalltimeRule:
    clock = AllocationClock({"SLURM_JOB_END_TIME": str(end)}, lambda j: None, lambda: now[0])
    return WalltimeRule.of(clock, "00:10:00", min_remaining)  # lead 120 s


def test_a_task_that_would_end_after_usr1_is_not_claimed() -> None:
    now = [1000.0]
    rule = _rule(now, end=1000.0 + 120 + 30 + 100)  # 100 s before USR1 may come
    assert rule.lead_s == 120 and rule.before_signal_s() == 100.0
    assert rule.refusal("initial") is None  # no estimate yet: a fresh worker claims
    rule.durations.add("initial", 60.0)
    assert rule.refusal("initial") is None  # 60 s x 1.25 = 75 s fits in 100 s
    rule.durations.add("initial", 85.0)  # the longest recent task decides: 106 s
    assert rule.refusal("initial") == (
        "100 s left before USR1 may come, a task of phase initial takes 106 s "
        "(the estimate for this phase): claiming no more tasks, leaving"
    )
    assert rule.refusal("retry-1") is None  # per phase: retries have their own estimate
    now[0] += 500  # past the signal: nothing is claimed, the room shows as 0
    assert (rule.refusal("initial") or "").startswith("0 s left before USR1")


def test_min_remaining_replaces_the_estimate_and_zero_turns_the_rule_off() -> None:
    now = [0.0]
    rule = _rule(now, end=150 + 40, min_remaining=50)
    assert rule.refusal("initial") == (
        "40 s left before USR1 may come, a task of phase initial takes 50 s "
        "(slurm.min_remaining): claiming no more tasks, leaving"
    )
    off = _rule(now, end=150 + 1, min_remaining=0)
    off.durations.add("initial", 1000.0)
    assert off.refusal("initial") is None
    outside = WalltimeRule.of(AllocationClock({}, lambda j: None), None, None)
    outside.durations.add("initial", 1000.0)
    assert outside.refusal("initial") is None  # no allocation: no end, no rule


def test_estimate_is_the_longest_of_the_last_ten_tasks_with_a_margin() -> None:
    d = TaskDurations()
    assert d.estimate("initial") is None
    d.add("initial", 100.0)
    for _ in range(10):
        d.add("initial", 8.0)
    assert d.estimate("initial") == 10.0  # the 100 s task is no longer among the last ten


def test_the_end_time_query_backs_off_on_a_timed_out_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in `squeue` first on PATH: a timed-out socket, then the answer."""
    calls = tmp_path / "calls"
    fake = tmp_path / "squeue"
    fake.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {calls}\n'
        f'if [ "$(wc -l < {calls})" -eq 1 ]; then\n'
        '  echo "slurm_load_jobs error: Socket timed out on send/recv operation" >&2; exit 1\n'
        "fi\n"
        "echo 2026-12-01T13:00:00\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert _squeue_end("42", backoff_s=0.01) == parse_end_time("2026-12-01T13:00:00")
    assert calls.read_text().splitlines() == ["-h -j 42 -o %e"] * 2
    fake.write_text(
        "#!/bin/bash\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n"
    )
    assert _squeue_end("42", backoff_s=0.01) is None  # not transient: asked once
