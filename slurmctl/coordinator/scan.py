"""Streaming the input: each record (a JSON Lines line, a CSV or Parquet row) an object with a
unique id, checked without holding the ids in memory (a SQLite index on disk, `idindex.py`), bad
records set aside with their line or row numbers (and their file, for an input of several).

The input is a local file, an `inputs.Input` (files of any format, as `Part`s of lines or rows),
or any `InputSource`: something with a name (for messages) that yields the input's raw lines,
each with its `\n`, e.g. `backends.objectstore.lines_of(chunks)` over an S3 object's body.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from slurmctl import fastjson
from slurmctl.coordinator.idindex import ChildIndex, Duplicate, LocalIndex
from slurmctl.coordinator.inputs import Part, Tap
from slurmctl.coordinator.records import bad_id, id_text
from slurmctl.errors import InputError

if TYPE_CHECKING:
    from slurmctl.coordinator.tabular import Row  # pyarrow: only for CSV and Parquet inputs

__all__ = ["FileSource", "InputScanner", "InputSource", "ScanStats", "id_text"]

CHUNK_LINES = 2000
DEPTH = 2
"""Chunks sent to the id index and not yet answered, beyond the one being answered."""
CHILD_INDEX_BYTES = 8 << 20
"""From this input size on (`scan_size` when the source has one: compressed files and Parquet
count more than their bytes), the id index runs in a child process (a second core)."""
TEXT_KEEP = 200
SHAPES = {
    "jsonl": "one JSON object per line",
    "csv": "a header line, then one row per line",
    "parquet": "one row per item",
}


class InputSource(Protocol):
    name: str
    """A path or URL, for messages."""

    def size(self) -> int:
        """The input's size in bytes (InputError if it cannot be read)."""
        ...

    def lines(self) -> Iterator[bytes]:
        """The raw lines in order, each with its b"\n" (the last one may lack it). A source
        with `parts` (`inputs.Input`) is scanned through them instead: its `lines()` are the
        raw bytes its digest covers."""
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


@dataclass
class ScanStats:
    lines: int = 0
    """Records read: lines of JSON Lines and CSV (but blank lines), rows of Parquet."""
    items: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    unit: str = "line"
    """What the input's records are called in messages: line (JSON Lines, CSV) or row (Parquet)."""
    format: str = "jsonl"
    """The first file's format."""

    @property
    def shape(self) -> str:
        """What a record of the input is expected to be, for messages."""
        return SHAPES.get(self.format, SHAPES["jsonl"])


class InputScanner:
    """Yields the raw bytes of every valid line; writes the quarantine as JSON lines."""

    def __init__(
        self,
        source: Path | InputSource,
        id_field: str,
        work_dir: Path,
        quarantine: IO[bytes] | None,
        on_bytes: Callable[[int], None] | None = None,
        child_index: bool | None = None,
    ) -> None:
        """child_index: the id index in a child process (None: when the input is large)."""
        self.source: InputSource = FileSource(source) if isinstance(source, Path) else source
        self.name = self.source.name
        self.id_field = id_field
        self.work_dir = work_dir
        self.quarantine = quarantine
        self.on_bytes = on_bytes
        self.child_index = child_index
        self.stats = ScanStats()
        self._files: list[tuple[int, str, str]] = []
        """(first number - 1, name, unit) of each file read so far."""
        self._starts: list[int] = []
        self._multi = False
        self._last = 0
        self._chunk = _Chunk()
        self._sent: deque[_Chunk] = deque()

    def _where(self, number: int) -> tuple[str | None, str, int]:
        """A record's file (None for an input of one file), unit and number in that file."""
        at = bisect_left(self._starts, number) - 1
        start, name, unit = self._files[at]
        return (name if len(self._files) > 1 or self._multi else None), unit, number - start

    def _reject(self, number: int, reason: str, raw: bytes) -> None:
        self.stats.quarantined += 1
        kind = reason.split(":", 1)[0]
        self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1
        if self.quarantine is not None:
            text = raw[:TEXT_KEEP].decode("utf-8", "replace")
            name, unit, local = self._where(number)
            doc: dict[str, object] = {} if name is None else {"file": name}
            doc.update({unit: local, "reason": reason, "text": text})
            self.quarantine.write(json.dumps(doc).encode() + b"\n")

    def _index(self, db_path: Path) -> LocalIndex | ChildIndex:
        child = self.child_index
        if child is None:
            try:
                size = getattr(self.source, "scan_size", self.source.size)
                child = size() >= CHILD_INDEX_BYTES
            except InputError:
                child = False
        if child:
            try:
                return ChildIndex(db_path, CHUNK_LINES, DEPTH)
            except OSError:
                pass  # no big enough pipe on this system: one core it is
        return LocalIndex(db_path)

    def _parts(self) -> Iterator[Part]:
        """The source's files as parts; its progress (on_bytes) fed with every raw byte read."""
        on_bytes = self.on_bytes
        tap: Tap | None = None if on_bytes is None else (lambda raw: on_bytes(len(raw)))
        parts = getattr(self.source, "parts", None)
        if parts is not None:
            return iter(parts(self.work_dir, self.id_field, tap))
        return iter([Part(self.name, "line", lines=_tapped_lines(self.source.lines(), tap))])

    def items(self) -> Iterator[bytes]:
        """The valid records' JSON lines in input order. A chunk's lines are yielded once the id
        index has checked it; the index works on the next chunks meanwhile (at most DEPTH
        ahead). Records are numbered across files: file k's record n is number start_k + n."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        db_path = self.work_dir / "ids.sqlite"
        db_path.unlink(missing_ok=True)
        index = self._index(db_path)
        parts: Iterator[Part] | None = None
        self._multi = len(getattr(self.source, "files", ())) > 1
        self._starts.clear()
        self._files.clear()
        self._last = 0
        self._chunk, self._sent = _Chunk(), deque()
        try:
            parts = self._parts()
            for part in parts:
                start = self._last
                self._starts.append(start)
                self._files.append((start, part.name, part.unit))
                if len(self._files) == 1:
                    self.stats.unit, self.stats.format = part.unit, part.format
                if part.lines is not None:
                    yield from self._scan_lines(part.lines, start, index)
                elif part.rows is not None:
                    yield from self._scan_rows(part.rows, start, index)
            sent = self._sent
            index.send(self._chunk.ids, self._chunk.linenos)
            sent.append(self._chunk)
            while sent:
                yield from self._settle(sent.popleft(), index.receive())
        except UnicodeDecodeError as e:
            raise InputError(f"{self.name}: cannot read input: {e}") from None
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()
            index.close()
            db_path.unlink(missing_ok=True)

    def _full(self, index: LocalIndex | ChildIndex) -> Iterator[bytes]:
        """The current chunk to the index; the oldest answered chunk out, DEPTH behind."""
        chunk, sent = self._chunk, self._sent
        index.send(chunk.ids, chunk.linenos)
        sent.append(chunk)
        self._chunk = _Chunk()
        if len(sent) > DEPTH:
            yield from self._settle(sent.popleft(), index.receive())

    def _scan_rows(
        self, rows: Iterator[Row], start: int, index: LocalIndex | ChildIndex
    ) -> Iterator[bytes]:
        chunk = self._chunk
        ids, numbers, lines = chunk.ids, chunk.linenos, chunk.lines
        count, number = 0, start
        try:
            for local, key, line, reason in rows:
                count += 1
                number = start + local
                if reason is not None:
                    chunk.bad(number, reason, line)
                    continue
                ids.append(key)
                numbers.append(number)
                lines.append(line)
                if len(ids) >= CHUNK_LINES:
                    self._last = number
                    yield from self._full(index)
                    chunk = self._chunk
                    ids, numbers, lines = chunk.ids, chunk.linenos, chunk.lines
        finally:
            self.stats.lines += count
            self._last = number
            close = getattr(rows, "close", None)
            if close is not None:
                close()

    def _scan_lines(
        self, raws: Iterator[bytes], start: int, index: LocalIndex | ChildIndex
    ) -> Iterator[bytes]:
        """The hot loop: only the id matters here, and an id orjson turned into a float (an
        integer beyond 64 bits) is read again exactly."""
        loads, id_field, stats = fastjson.loads_unchecked, self.id_field, self.stats
        chunk = self._chunk
        lineno = start
        try:
            for raw in raws:
                lineno += 1
                line = raw.rstrip(b"\r\n")
                if not line or line.isspace():
                    continue  # blank lines are not items
                stats.lines += 1
                try:
                    obj = loads(line)
                except json.JSONDecodeError as e:
                    chunk.bad(lineno, f"invalid JSON: {e.msg} at column {e.colno}", line)
                    continue
                except UnicodeDecodeError:
                    chunk.bad(lineno, "invalid JSON: not UTF-8 text", line)
                    continue
                if type(obj) is not dict:
                    chunk.bad(lineno, f"not a JSON object: a {type(obj).__name__}", line)
                    continue
                key = obj.get(id_field)
                if type(key) is not str or not key.isascii():
                    if type(key) is float:
                        obj = json.loads(line)
                    key = id_text(obj.get(id_field))
                if not key:
                    chunk.bad(lineno, bad_id(obj.get(id_field), id_field), line)
                    continue
                chunk.ids.append(key)
                chunk.linenos.append(lineno)
                chunk.lines.append(line)
                if len(chunk.ids) >= CHUNK_LINES:
                    yield from self._full(index)
                    chunk = self._chunk
        finally:
            self._last = lineno
            close = getattr(raws, "close", None)  # a file, or a generator over a stream
            if close is not None:
                close()

    def _settle(self, chunk: _Chunk, duplicates: list[Duplicate]) -> Iterator[bytes]:
        """The chunk's bad lines and duplicates to the quarantine, in line order; the rest out."""
        dup = dict(duplicates)
        rejects = list(chunk.rejects)
        for position, first in duplicates:
            name, unit, local = self._where(first)
            where = f"{unit} {local}" if name is None else f"{unit} {local} of {name}"
            reason = f"duplicate id: {chunk.ids[position]!r} first seen on {where}"
            rejects.append((chunk.linenos[position], reason, chunk.lines[position]))
        rejects.sort(key=lambda r: r[0])
        for lineno, reason, raw in rejects:
            self._reject(lineno, reason, raw)
        if not dup:
            self.stats.items += len(chunk.lines)
            yield from chunk.lines
            return
        for position, line in enumerate(chunk.lines):
            if position not in dup:
                self.stats.items += 1
                yield line


def _tapped_lines(lines: Iterator[bytes], tap: Tap | None) -> Iterator[bytes]:
    if tap is None:
        yield from lines
        return
    try:
        for line in lines:
            tap(line)
            yield line
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()


@dataclass
class _Chunk:
    """Up to CHUNK_LINES valid lines, with the bad lines met among them."""

    ids: list[str] = field(default_factory=list)
    linenos: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    rejects: list[tuple[int, str, bytes]] = field(default_factory=list)

    def bad(self, lineno: int, reason: str, raw: bytes) -> None:
        self.rejects.append((lineno, reason, raw))
