"""The items progress bar that `submit`, `resume` and `--follow` draw on stderr.

Its own module so that running a local job (cli/run.py) and following a Slurm job (cli/slurm.py)
share it without importing each other.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

stderr = Console(stderr=True)


def bar_shown(enabled: bool) -> bool:
    """Whether `items_bar(enabled, ...)` draws a bar (else nobody need read the counters)."""
    return enabled and sys.stderr.isatty()


@contextmanager
def items_bar(enabled: bool, label: str) -> Iterator[Any]:
    """Yields an update(counters) callback; a rich bar when stderr is a terminal."""
    if not bar_shown(enabled):
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("items"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(c: dict[str, int]) -> None:
            total = c.get("items.total", 0)
            bar.update(task, total=total or None, completed=total - c.get("items.pending", 0))

        yield update
