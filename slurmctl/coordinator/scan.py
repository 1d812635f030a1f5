"""Streaming the input: each line a JSON object with a unique id, checked without holding the ids
in memory (a SQLite index on disk), bad lines set aside with their line numbers.

The input is a local file or any `InputSource`: something with a name (for messages) that yields
the input's raw lines, each with its `\n`, e.g. `lines_of(chunks)` over an S3 object's body.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from slurmctl import fastjson
from slurmctl.errors import InputError

CHUNK_LINES = 2000
TEXT_KEEP = 200


class InputSource(Protocol):
    name: str
    """A path or URL, for messages."""

    def size(self) -> int:
        """The input's size in bytes (InputError if it cannot be read)."""
        ...

    def lines(self) -> Iterator[bytes]:
        """The raw lines in order, each with its b"\n" (the last one may lack it)."""
        ...


class FileSource:
    """A local file, read line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError as e:
            raise InputError(f"{self.path}: cannot read input: {e.strerror}") from None

    def lines(self) -> Iterator[bytes]:
        try:
            # the file itself, no generator between: the embedded path stays as fast as it was
            return open(self.path, "rb")  # the scanner closes it
        except OSError as e:
            raise InputError(f"{self.path}: cannot read input: {e.strerror}") from None


def lines_of(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a stream of byte chunks into lines, as iterating a binary file does (on b"\n")."""
    rest: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if rest:
                rest.append(chunk[start : end + 1])
                yield b"".join(rest)
                rest = []
            else:
                yield chunk[start : end + 1]
            start = end + 1
        if start < len(chunk):
            rest.append(chunk[start:])
    if rest:
        yield b"".join(rest)


@dataclass
class ScanStats:
    lines: int = 0
    items: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class InputScanner:
    """Yields the raw bytes of every valid line; writes the quarantine as JSON lines."""

    def __init__(
        self,
        source: Path | InputSource,
        id_field: str,
        work_dir: Path,
        quarantine: IO[bytes] | None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.source: InputSource = FileSource(source) if isinstance(source, Path) else source
        self.name = self.source.name
        self.id_field = id_field
        self.work_dir = work_dir
        self.quarantine = quarantine
        self.on_bytes = on_bytes
        self.stats = ScanStats()

    def _reject(self, lineno: int, reason: str, raw: bytes) -> None:
        self.stats.quarantined += 1
        kind = reason.split(":", 1)[0]
        self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1
        if self.quarantine is not None:
            text = raw[:TEXT_KEEP].decode("utf-8", "replace")
            doc = {"line": lineno, "reason": reason, "text": text}
            self.quarantine.write(json.dumps(doc).encode() + b"\n")

    def items(self) -> Iterator[bytes]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        db_path = self.work_dir / "ids.sqlite"
        db_path.unlink(missing_ok=True)
        db = sqlite3.connect(db_path, isolation_level=None)
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
        raws: Iterator[bytes] | None = None
        try:
            raws = self.source.lines()
            chunk: list[tuple[int, bytes, str]] = []
            lineno = 0
            for raw in raws:
                lineno += 1
                if self.on_bytes is not None:
                    self.on_bytes(len(raw))
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue  # blank lines are not items
                self.stats.lines += 1
                try:
                    obj = fastjson.loads(line)
                except json.JSONDecodeError as e:
                    self._reject(lineno, f"invalid JSON: {e.msg} at column {e.colno}", line)
                    continue
                except UnicodeDecodeError:
                    self._reject(lineno, "invalid JSON: not UTF-8 text", line)
                    continue
                if not isinstance(obj, dict):
                    self._reject(lineno, f"not a JSON object: a {type(obj).__name__}", line)
                    continue
                key = obj.get(self.id_field)
                if key is None or isinstance(key, dict | list | bool) or key == "":
                    self._reject(lineno, f"missing id: no usable {self.id_field!r} field", line)
                    continue
                chunk.append((lineno, line, str(key)))
                if len(chunk) >= CHUNK_LINES:
                    yield from self._unique(db, chunk)
                    chunk = []
            yield from self._unique(db, chunk)
        except UnicodeDecodeError as e:
            raise InputError(f"{self.name}: cannot read input: {e}") from None
        finally:
            close = getattr(raws, "close", None)  # a file, or a generator over a stream
            if close is not None:
                close()
            db.close()
            db_path.unlink(missing_ok=True)

    def _unique(
        self, db: sqlite3.Connection, chunk: list[tuple[int, bytes, str]]
    ) -> Iterator[bytes]:
        if not chunk:
            return
        ids = [c[2] for c in chunk]
        seen: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            seen.update(db.execute(f"SELECT id, line FROM ids WHERE id IN ({marks})", part))
        fresh: list[tuple[str, int]] = []
        for lineno, line, key in chunk:
            first = seen.get(key)
            if first is not None:
                self._reject(lineno, f"duplicate id: {key!r} first seen on line {first}", line)
                continue
            seen[key] = lineno
            fresh.append((key, lineno))
            self.stats.items += 1
            yield line
        db.execute("BEGIN")
        db.executemany("INSERT INTO ids VALUES (?, ?)", fresh)
        db.execute("COMMIT")
