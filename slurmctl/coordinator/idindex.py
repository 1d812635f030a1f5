"""The on-disk index that proves every id unique without holding the ids in memory.

Checking an id costs an SQLite insert (about 1 µs), as much as parsing its line; for a large input
the index therefore runs in a child process (`python -m slurmctl.coordinator.idindex DB`) fed chunk
by chunk through a pipe, so the scan and the index use two cores. A small input keeps it in-process:
starting a child costs more than it saves.

Both run `check`: an `INSERT OR IGNORE` of the whole chunk, which in the usual case (no duplicate)
is the only statement; when some row was ignored the chunk is rolled back and checked id by id.
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from slurmctl import fastjson
from slurmctl.errors import InputError

Duplicate = tuple[int, int]
"""(position in the chunk, line number where the id was first seen)."""

_LEN = struct.Struct("<I")
SELECT_MAX = 500  # ids per `IN (...)` query, under SQLite's variable limit
PIPE_BYTES = 1 << 20
ANSWER_ROW_MAX = 24
"""Bytes of one duplicate in an answer at most: `[1999,12345678901234],`."""


def open_db(path: Path) -> sqlite3.Connection:
    """A scratch database: no journal, no fsync (it is removed after the scan)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
    return db


def check(db: sqlite3.Connection, ids: Sequence[str], lines: Sequence[int]) -> list[Duplicate]:
    """Add a chunk's ids (found on these lines) to the index; returns those already seen (earlier
    in the input or earlier in this chunk), with the line of their first occurrence."""
    if not ids:
        return []
    db.execute("BEGIN")
    before = db.total_changes
    db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?)", zip(ids, lines, strict=True))
    if db.total_changes - before == len(ids):
        db.execute("COMMIT")
        return []
    db.execute("ROLLBACK")
    seen: dict[str, int] = {}
    for start in range(0, len(ids), SELECT_MAX):
        part = ids[start : start + SELECT_MAX]
        marks = ",".join("?" * len(part))
        seen.update(db.execute(f"SELECT id, line FROM ids WHERE id IN ({marks})", part))
    duplicates: list[Duplicate] = []
    fresh: list[tuple[str, int]] = []
    for position, (key, line) in enumerate(zip(ids, lines, strict=True)):
        first = seen.get(key)
        if first is not None:
            duplicates.append((position, first))
            continue
        seen[key] = line
        fresh.append((key, line))
    db.execute("BEGIN")
    db.executemany("INSERT INTO ids VALUES (?, ?)", fresh)
    db.execute("COMMIT")
    return duplicates


class LocalIndex:
    """In-process: check() answers at once."""

    def __init__(self, path: Path) -> None:
        self.db = open_db(path)
        self._answers: list[list[Duplicate]] = []

    def send(self, ids: Sequence[str], lines: Sequence[int]) -> None:
        self._answers.append(check(self.db, ids, lines))

    def receive(self) -> list[Duplicate]:
        return self._answers.pop(0)

    def close(self) -> None:
        self.db.close()


class ChildIndex:
    """In a child process: send() returns at once, receive() gives the answers in order.

    Neither side can block the other: the parent has at most DEPTH + 2 answers unread, each under
    ANSWER_MAX bytes, and the child's output pipe is made large enough to hold them all.
    """

    def __init__(self, path: Path, chunk_ids: int, depth: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slurmctl.coordinator.idindex", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: IO[bytes] = self.proc.stdin
        self._out: IO[bytes] = self.proc.stdout
        need = (depth + 2) * chunk_ids * ANSWER_ROW_MAX
        _pipe_size(self._in.fileno(), PIPE_BYTES)  # chunks queue up without blocking the scan
        if _pipe_size(self._out.fileno(), need) < need:
            self.close()
            raise OSError(f"cannot make a pipe of {need} bytes")

    def send(self, ids: Sequence[str], lines: Sequence[int]) -> None:
        try:
            _write_frame(self._in, fastjson.dumps((ids, lines)))
        except BrokenPipeError:
            raise self._died() from None

    def receive(self) -> list[Duplicate]:
        answer = _read_frame(self._out)
        if answer is None:
            raise self._died()
        return [(p, f) for p, f in fastjson.loads(answer)]

    def _died(self) -> InputError:
        code = self.proc.wait()
        return InputError(f"the id index process exited with code {code} during the input scan")

    def close(self) -> None:
        """Ends the child (its failures surface in receive(), which every chunk goes through)."""
        with contextlib.suppress(BrokenPipeError):
            self._in.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


def _pipe_size(fd: int, size: int) -> int:
    """Grow a pipe's buffer (Linux); returns its size, 0 where that cannot be done."""
    try:
        import fcntl

        setter = getattr(fcntl, "F_SETPIPE_SZ", None)
        if setter is None:
            return 0
        return int(fcntl.fcntl(fd, setter, max(size, 65536)))
    except OSError:
        return 0


def _write_frame(out: IO[bytes], data: bytes) -> None:
    out.write(_LEN.pack(len(data)))
    out.write(data)
    out.flush()


def _read_frame(inp: IO[bytes]) -> bytes | None:
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (size,) = _LEN.unpack(head)
    return inp.read(size)


def serve(path: Path, inp: IO[bytes], out: IO[bytes]) -> None:
    """The child's loop: one answer per chunk, until the parent closes the pipe."""
    db = open_db(path)
    try:
        while (frame := _read_frame(inp)) is not None:
            ids, lines = fastjson.loads(frame)
            _write_frame(out, fastjson.dumps(check(db, ids, lines)))
    finally:
        db.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
