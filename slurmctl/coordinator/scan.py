"""Streaming the input: each line a JSON object with a unique id, checked without holding the ids
in memory (a SQLite index on disk, `idindex.py`), bad lines set aside with their line numbers.

The input is a local file or any `InputSource`: something with a name (for messages) that yields
the input's raw lines, each with its `\n`, e.g. `backends.objectstore.lines_of(chunks)` over an
S3 object's body.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from slurmctl import fastjson
from slurmctl.coordinator.idindex import ChildIndex, Duplicate, LocalIndex
from slurmctl.errors import InputError

CHUNK_LINES = 2000
DEPTH = 2
"""Chunks sent to the id index and not yet answered, beyond the one being answered."""
CHILD_INDEX_BYTES = 8 << 20
"""From this input size on, the id index runs in a child process (a second core)."""
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

    def _reject(self, lineno: int, reason: str, raw: bytes) -> None:
        self.stats.quarantined += 1
        kind = reason.split(":", 1)[0]
        self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1
        if self.quarantine is not None:
            text = raw[:TEXT_KEEP].decode("utf-8", "replace")
            doc = {"line": lineno, "reason": reason, "text": text}
            self.quarantine.write(json.dumps(doc).encode() + b"\n")

    def _index(self, db_path: Path) -> LocalIndex | ChildIndex:
        child = self.child_index
        if child is None:
            try:
                child = self.source.size() >= CHILD_INDEX_BYTES
            except InputError:
                child = False
        if child:
            try:
                return ChildIndex(db_path, CHUNK_LINES, DEPTH)
            except OSError:
                pass  # no big enough pipe on this system: one core it is
        return LocalIndex(db_path)

    def items(self) -> Iterator[bytes]:
        """The valid lines in input order. A chunk's lines are yielded once the id index has
        checked it; the index works on the next chunks meanwhile (at most DEPTH ahead)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        db_path = self.work_dir / "ids.sqlite"
        db_path.unlink(missing_ok=True)
        index = self._index(db_path)
        raws: Iterator[bytes] | None = None
        sent: deque[_Chunk] = deque()
        # the hot loop: only the id matters here, and an id orjson turned into a float (an
        # integer beyond 64 bits) is read again exactly
        loads, id_field, on_bytes = fastjson.loads_unchecked, self.id_field, self.on_bytes
        try:
            raws = self.source.lines()
            chunk = _Chunk()
            lineno = 0
            for raw in raws:
                lineno += 1
                if on_bytes is not None:
                    on_bytes(len(raw))
                line = raw.rstrip(b"\r\n")
                if not line or line.isspace():
                    continue  # blank lines are not items
                self.stats.lines += 1
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
                    chunk.bad(lineno, _bad_id(obj.get(id_field), id_field), line)
                    continue
                chunk.ids.append(key)
                chunk.linenos.append(lineno)
                chunk.lines.append(line)
                if len(chunk.ids) >= CHUNK_LINES:
                    index.send(chunk.ids, chunk.linenos)
                    sent.append(chunk)
                    chunk = _Chunk()
                    if len(sent) > DEPTH:
                        yield from self._settle(sent.popleft(), index.receive())
            index.send(chunk.ids, chunk.linenos)
            sent.append(chunk)
            while sent:
                yield from self._settle(sent.popleft(), index.receive())
        except UnicodeDecodeError as e:
            raise InputError(f"{self.name}: cannot read input: {e}") from None
        finally:
            close = getattr(raws, "close", None)  # a file, or a generator over a stream
            if close is not None:
                close()
            index.close()
            db_path.unlink(missing_ok=True)

    def _settle(self, chunk: _Chunk, duplicates: list[Duplicate]) -> Iterator[bytes]:
        """The chunk's bad lines and duplicates to the quarantine, in line order; the rest out."""
        dup = dict(duplicates)
        rejects = list(chunk.rejects)
        for position, first in duplicates:
            reason = f"duplicate id: {chunk.ids[position]!r} first seen on line {first}"
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


def id_text(value: object) -> str:
    """An id's canonical form, its text: ids are strings or integers (of any size, exact), so
    `1` and `"1"` are the same id. "" when the value cannot be an id: absent, empty, a float, a
    boolean, an object, a list, or text with a lone surrogate from a "\\ud800" escape (no
    store accepts it)."""
    if type(value) is int:
        return str(value)
    if type(value) is not str:
        return ""
    try:
        value.encode()
    except UnicodeEncodeError:
        return ""
    return value


def _bad_id(value: object, id_field: str) -> str:
    if value is None or value == "":
        return f"missing id: no usable {id_field!r} field"
    if isinstance(value, str):
        what = "text that is not valid Unicode (a lone surrogate)"
    elif isinstance(value, bool):
        what = "true" if value else "false"
    elif isinstance(value, float):
        what = f"a float ({value!r})"
    elif isinstance(value, dict):
        what = "an object"
    elif isinstance(value, list):
        what = "a list"
    else:
        what = type(value).__name__
    return f"bad id: {id_field!r} is {what}; ids are strings or integers"


@dataclass
class _Chunk:
    """Up to CHUNK_LINES valid lines, with the bad lines met among them."""

    ids: list[str] = field(default_factory=list)
    linenos: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    rejects: list[tuple[int, str, bytes]] = field(default_factory=list)

    def bad(self, lineno: int, reason: str, raw: bytes) -> None:
        self.rejects.append((lineno, reason, raw))
