"""Test-only fault points, so fault tests can act at an exact line of a real process.

`SLURMCTL_FAULT=<point>@<n>` makes the n-th call of `inject(<point>)` in each process raise
`TimeoutError`; `<point>@<n>-<m>` makes calls n to m raise (one real store call failing).

`SLURMCTL_FAULT_ERROR=<point>` makes every call of `inject_error(<point>)` raise a
`RuntimeError`: a bug in slurmctl's own code at that line (`output`: just before a task's output
is written), which must become the job's reason, never a silent worker death.

`SLURMCTL_KILL_AT=<point>[@<n>][,...]` makes the n-th call (default: the first) of
`kill_point(<point>)` SIGKILL the calling process, so a test can show what a crash at that very
line leaves behind (a power cut, an OOM kill) and that the next run carries on.

`SLURMCTL_HOLD_AT=<point>[@<n>]=<path>` makes the n-th call of `kill_point(<point>)` wait until
the file <path> exists, so a test can hold a process at that very line (a slow input, a submit
still cutting batches) while it looks at what the others do, and then let it go on.

Unset (always, outside the tests), each is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

_calls: Counter[str] = Counter()
_kills: Counter[str] = Counter()
_holds: Counter[str] = Counter()
HOLD_ENV = "SLURMCTL_HOLD_AT"


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


def _hold(point: str, spec: str) -> None:
    where, _, gate = spec.partition("=")
    name, _, nth = where.partition("@")
    if name != point:
        return
    _holds[point] += 1
    if _holds[point] == int(nth or 1):
        while not os.path.exists(gate):
            time.sleep(0.02)


def kill_point(point: str) -> None:
    hold = os.environ.get(HOLD_ENV)
    if hold:
        _hold(point, hold)
    wanted = os.environ.get("SLURMCTL_KILL_AT")
    if not wanted:
        return
    for spec in wanted.split(","):
        name, _, nth = spec.partition("@")
        if name == point:
            _kills[point] += 1
            if _kills[point] == int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)
