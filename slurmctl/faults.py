"""Test-only fault points, so fault tests can act at an exact line of a real process.

`SLURMCTL_FAULT=<point>@<n>` makes the n-th call of `inject(<point>)` in each process raise
`TimeoutError`; `<point>@<n>-<m>` makes calls n to m raise (one real store call failing).

`SLURMCTL_FAULT_ERROR=<point>` makes every call of `inject_error(<point>)` raise a
`RuntimeError`: a bug in slurmctl's own code at that line (`output`: just before a task's output
is written), which must become the job's reason, never a silent worker death.

`SLURMCTL_KILL_AT=<point>[@<n>][,...]` makes the n-th call (default: the first) of
`kill_point(<point>)` SIGKILL the calling process, so a test can show what a crash at that very
line leaves behind (a power cut, an OOM kill) and that the next run carries on.

Unset (always, outside the tests), each is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_calls: Counter[str] = Counter()
_kills: Counter[str] = Counter()


def inject(point: str) -> None:
    spec = os.environ.get("SLURMCTL_FAULT")
    if not spec:
        return
    name, _, span = spec.partition("@")
    if name != point:
        return
    _calls[point] += 1
    first, _, last = span.partition("-")
    n = _calls[point]
    if int(first) <= n <= int(last or first):
        raise TimeoutError(f"injected fault at {point} #{n}")


ERROR_ENV = "SLURMCTL_FAULT_ERROR"


def inject_error(point: str) -> None:
    if os.environ.get(ERROR_ENV) == point:
        raise RuntimeError(f"fault injected at {point} ({ERROR_ENV})")


def kill_point(point: str) -> None:
    wanted = os.environ.get("SLURMCTL_KILL_AT")
    if not wanted:
        return
    for spec in wanted.split(","):
        name, _, nth = spec.partition("@")
        if name == point:
            _kills[point] += 1
            if _kills[point] == int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)
