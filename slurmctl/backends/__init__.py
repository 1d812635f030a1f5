"""Backends: the three stores a job's coordination state lives in.

`open_local(root)` gives the embedded backend (a folder + SQLite). The AWS backend (S3, DynamoDB,
SQS) is an optional extra imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slurmctl.backends.objectstore import ObjectStore
from slurmctl.backends.queue import QueueService
from slurmctl.backends.statestore import StateStore


@dataclass
class Backend:
    kind: str
    objects: ObjectStore
    state: StateStore
    queue: QueueService
    url: str = ""
    """The BackendSpec URL it was opened from: what a worker is handed to find it."""

    def close(self) -> None:
        for part in (self.objects, self.state, self.queue):
            close = getattr(part, "close", None)
            if close is not None:
                close()


def open_local(root: Path) -> Backend:
    from slurmctl.backends.local.objectstore import FolderObjectStore
    from slurmctl.backends.local.queue import SQLiteQueue
    from slurmctl.backends.local.statestore import SQLiteStateStore
    from slurmctl.scratch import private_folder

    root = private_folder(root.resolve())  # the state root is the user's only: 0700
    return Backend(
        kind="local",
        objects=FolderObjectStore(root / "objects"),
        state=SQLiteStateStore(root / "state.sqlite"),
        queue=SQLiteQueue(root / "queue.sqlite"),
    )
