"""Named kill points for fault tests: a process SIGKILLs itself at an exact line.

`SLURMCTL_KILL_AT=<name>[,<name>...]` in the environment makes `kill_point(name)` send SIGKILL
to the calling process, so a test can show what a crash at that very line leaves behind (a
power cut, an OOM kill) and that the next run carries on. Unset (always, outside tests), a kill
point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SLURMCTL_KILL_AT"


def kill_point(name: str) -> None:
    wanted = os.environ.get(ENV)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
