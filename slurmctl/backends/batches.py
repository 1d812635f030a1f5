"""A task's batch in the object store: several batches packed into one object, each task
reading only its own batch with a ranged read.

Why: one object per batch was one S3 PUT per task at submit (and per retried task), about 40%
of a task's S3 cost at batch 100. Consecutive batches are packed instead, up to
`PACK_BATCHES` (16) or `PACK_BYTES` (8 MB) an object, whichever comes first, so a pack stays a
few MB at most and a worker reads its batch alone (`ObjectStore.get_range`). The first packs of
a job are smaller (1, 2, 4, 8 batches), as the first chunks of task records are: a streaming
submit's workers start after the first batch, not the first 16.

A task record says where its batch lies: `batch_key` (the object), `batch_range` (`<first>-<last>`,
the bytes of its batch, both included, as S3's `Range: bytes=` names them) and `batch_sha256`
(the sha256 of the batch's own bytes, checked on every read). A record without `batch_range`
names a whole object: jobs submitted before packing, and the batch `retry --tasks` rewrites
for a task of an earlier phase. The packing is a pure function of the batches (hence of the
input), so a resumed submit cuts the same packs under the same keys and stores them
put-if-absent, as it did the batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from slurmctl.backends.objectstore import ObjectStore
from slurmctl.backends.records import TaskRecord
from slurmctl.errors import SlurmctlError
from slurmctl.ids import batch_id, group_for_phase, task_id

PACK_BATCHES = 16
"""Batches in one pack at most (the first packs hold 1, 2, 4 and 8)."""
PACK_BYTES = 8 << 20
"""A pack takes no further batch that would grow it beyond this (a larger batch is a pack alone)."""


@dataclass(frozen=True)
class Region:
    """Where one batch lies in its pack, and its own sha256."""

    start: int
    length: int
    sha256: str

    @property
    def range(self) -> str:
        """The task record's `batch_range`: first and last byte, both included."""
        return f"{self.start}-{self.start + self.length - 1}"


def parse_range(text: str) -> tuple[int, int]:
    """A record's `batch_range` as (start, length)."""
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit()) or int(last) < int(first):
        raise SlurmctlError(f"invalid batch_range {text!r}: expected <first>-<last> bytes")
    return int(first), int(last) - int(first) + 1


def batch_bytes(lines: list[bytes]) -> bytes:
    """A batch as stored: its lines, each ending in a newline."""
    return b"\n".join(lines) + b"\n"


def pack_tasks(
    job_id: str,
    phase: str,
    width: int,
    group: list[tuple[int, bytes]],
    key: str,
    regions: list[Region],
) -> list[TaskRecord]:
    """The task records of one stored pack: batch `index` of `group` lies at its region of
    `key` (submit's initial phase and the retry planner's phases alike)."""
    return [
        TaskRecord(
            job_id=job_id,
            task_id=task_id(phase, index, width),
            batch_id=batch_id(phase, index, width),
            phase=phase,
            group=group_for_phase(phase),
            items=batch.count(b"\n"),
            batch_key=key,
            batch_sha256=region.sha256,
            batch_range=region.range,
        )
        for (index, batch), region in zip(group, regions, strict=True)
    ]


def pack(batches: Iterable[bytes]) -> tuple[bytes, list[Region]]:
    """The pack's bytes (the batches one after another) and each batch's region in it."""
    parts: list[bytes] = []
    regions: list[Region] = []
    at = 0
    for data in batches:
        parts.append(data)
        regions.append(Region(at, len(data), hashlib.sha256(data).hexdigest()))
        at += len(data)
    return b"".join(parts), regions


def packs(batches: Iterable[tuple[int, bytes]]) -> Iterator[list[tuple[int, bytes]]]:
    """Consecutive batches (index, bytes) grouped into packs: the n-th pack holds at most
    min(2**n, PACK_BATCHES) batches, and no batch that would take it beyond PACK_BYTES."""
    group: list[tuple[int, bytes]] = []
    size = 0
    limit = 1
    for index, data in batches:
        if group and (len(group) >= limit or size + len(data) > PACK_BYTES):
            yield group
            group, size, limit = [], 0, min(limit * 2, PACK_BATCHES)
        group.append((index, data))
        size += len(data)
    if group:
        yield group


def read_batch(objects: ObjectStore, task: TaskRecord) -> bytes:
    """The task's batch, verified against its sha256: its region of a pack, or a whole object
    (a job written before packing). ObjectNotFound or IntegrityError as the store raises them."""
    if task.batch_range is None:
        return objects.get_bytes(task.batch_key, sha256=task.batch_sha256)
    start, length = parse_range(task.batch_range)
    return objects.get_range(task.batch_key, start, length, sha256=task.batch_sha256)


def batch_where(task: TaskRecord) -> str:
    """The task's batch for messages: its key, and its bytes when it is part of a pack."""
    if task.batch_range is None:
        return task.batch_key
    return f"{task.batch_key} bytes {task.batch_range}"
