"""A test-only fault injection point, so fault tests can make one real store call fail at an
exact line of a real worker process.

`SLURMCTL_FAULT=<point>@<n>` makes the n-th call of `inject(<point>)` in each process raise
`TimeoutError`; `<point>@<n>-<m>` makes calls n to m raise. Unset (always, outside the tests),
`inject` is one dictionary lookup.

`SLURMCTL_FAULT_ERROR=<point>` makes every call of `inject_error(<point>)` raise a
`RuntimeError`: a bug in slurmctl's own code at that line (`output`: just before a task's output
is written), which must become the job's reason, never a silent worker death.
"""

from __future__ import annotations

import os
from collections import Counter

_calls: Counter[str] = Counter()


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
