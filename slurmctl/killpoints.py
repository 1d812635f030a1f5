"""Named kill points for fault tests: a process SIGKILLs itself at an exact line.

`SLURMCTL_KILL_AT=<name>[@N][,...]` in the environment makes the N-th call (default: the first)
of `kill_point(name)` send SIGKILL to the calling process, so a test can show what a crash at
that very line leaves behind (a power cut, an OOM kill) and that the next run carries on.
Unset (always, outside tests), a kill point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SLURMCTL_KILL_AT"
_calls: dict[str, int] = {}


def kill_point(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    for spec in wanted.split(","):
        point, _, nth = spec.partition("@")
        if point == name:
            _calls[name] = _calls.get(name, 0) + 1
            if _calls[name] == int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)
