"""A job's input as files: JSON Lines, CSV or Parquet, each optionally gzip- or zstd-compressed,
one file or a folder (an S3 prefix) of them, read one after another in sorted order.

Why a layer of its own: the scan (`scan.py`) checks ids and quarantines records without caring
where they come from. This module turns each file into `Part`s the scan reads (the raw lines of a
JSON Lines file, the rows of a CSV or Parquet file with their numbers, `tabular.py`), and sends
every raw byte it reads to a `tap` (the fingerprint's digest), so a resume still detects a
changed input at no second read. Nothing is loaded whole: lines and 1 MiB chunks, CSV blocks,
Parquet row groups. A Parquet file needs random access, so one that is compressed or on S3 is
first copied (streamed, while it is hashed) into the submit's temporary folder, one file at a
time.

The format comes from each file's name (`.jsonl`, `.ndjson`, `.json`, `.csv`, `.parquet`, then
an optional `.gz` / `.zst`) or from `input_format:`; compression from the file's first bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from slurmctl.backends.objectstore import CHUNK, lines_of
from slurmctl.coordinator.streams import MAGIC, decompressed
from slurmctl.errors import InputError, UserError

if TYPE_CHECKING:
    from slurmctl.backends import Backend
    from slurmctl.config import JobDefinition

Format = Literal["jsonl", "csv", "parquet"]
Tap = Callable[[bytes], object]
FORMATS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
COMPRESSED = (".gz", ".zst", ".zstd")
NAMES = ".jsonl, .ndjson, .json, .csv or .parquet (optionally + .gz or .zst)"


class InputFile(Protocol):
    """One file or object of the input."""

    name: str

    def size(self) -> int: ...

    def stamp(self) -> str | None:
        """A cheap change marker (a file's mtime, an object's ETag), None when there is none."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The raw bytes in order."""
        ...


class LocalFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def _stat(self) -> os.stat_result:
        try:
            return self.path.stat()
        except OSError as e:
            raise InputError(f"{self.path}: cannot read input: {e.strerror}") from None

    def size(self) -> int:
        return self._stat().st_size

    def stamp(self) -> str | None:
        return f"mtime_ns:{self._stat().st_mtime_ns}"

    def _open(self) -> io.BufferedReader:
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise InputError(f"{self.path}: cannot read input: {e.strerror}") from None

    def chunks(self) -> Iterator[bytes]:
        with self._open() as f:
            while data := f.read(CHUNK):
                yield data

    def lines(self) -> Iterator[bytes]:
        return self._open()  # the file itself: the fast path of a plain JSON Lines file


@dataclass
class Part:
    """One file of the input as the scan reads it: `lines` (JSON Lines: the raw lines, each with
    its b"\\n") or `rows` (CSV, Parquet: `tabular.Row`s), and what its numbers count."""

    name: str
    unit: Literal["line", "row"]
    lines: Iterator[bytes] | None = None
    rows: Iterator[tuple[int, str, bytes, str | None]] | None = None
    format: Format = "jsonl"


def format_of(name: str) -> Format | None:
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    for ext in COMPRESSED:
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return next((fmt for ext, fmt in FORMATS.items() if base.endswith(ext)), None)


def _tapped(chunks: Iterable[bytes], tap: Tap | None) -> Iterator[bytes]:
    for data in chunks:
        if tap is not None:
            tap(data)
        yield data


class Input:
    """The job's input: its files in order, their format, and the CSV columns' declared types.
    What the scan, the fingerprint and `try` read (`InputSource` of scan.py)."""

    def __init__(
        self,
        name: str,
        files: list[InputFile],
        fmt: Format | None = None,
        columns: dict[str, str] | None = None,
    ) -> None:
        self.name, self.files, self.columns = name, files, columns
        self.formats = [fmt or _format_of_file(f.name) for f in files]
        if columns and any(f != "csv" for f in self.formats):
            other = next(f for f in self.formats if f != "csv")
            raise InputError(f"{name}: input_columns: only for CSV input, this input is {other}")

    @property
    def format(self) -> Format:
        return self.formats[0]

    def size(self) -> int:
        return sum(f.size() for f in self.files)

    def scan_size(self) -> int:
        """About how many bytes the scan parses: compressed files and Parquet count 8 times
        their size (what decides the id index's second process, scan.py)."""
        return sum(
            f.size() * (8 if fmt == "parquet" or f.name.lower().endswith(COMPRESSED) else 1)
            for f, fmt in zip(self.files, self.formats, strict=True)
        )

    def stamp(self) -> str | None:
        stamps = [f.stamp() for f in self.files]
        if len(self.files) == 1 or None in stamps:
            return stamps[0] if len(self.files) == 1 else None
        h = hashlib.sha256()
        for f, s in zip(self.files, stamps, strict=True):
            h.update(f"{f.name}\0{f.size()}\0{s}\0".encode())
        return f"files:{len(self.files)}:{h.hexdigest()}"

    def _marker(self, f: InputFile) -> bytes:
        """What the digest reads before each file of several (a boundary moved is a change)."""
        return f"\0file:{f.name}\0{f.size()}\0".encode() if len(self.files) > 1 else b""

    def lines(self) -> Iterator[bytes]:
        """The bytes the digest covers: one file's raw bytes, or each file's after a marker."""
        for f in self.files:
            if marker := self._marker(f):
                yield marker
            yield from f.chunks()

    def parts(self, work_dir: Path, id_field: str, tap: Tap | None = None) -> Iterator[Part]:
        """Each file as the scan reads it, in order; every raw byte read goes to tap."""
        for f, fmt in zip(self.files, self.formats, strict=True):
            if tap is not None and (marker := self._marker(f)):
                tap(marker)
            if fmt == "jsonl":
                yield Part(f.name, "line", lines=self._jsonl(f, tap))
            elif fmt == "csv":
                from slurmctl.coordinator.tabular import csv_rows

                raw = decompressed(_tapped(f.chunks(), tap), f.name)
                rows = csv_rows(raw, f.name, id_field, self.columns or {})
                yield Part(f.name, "line", rows=rows, format="csv")
            else:
                yield Part(
                    f.name, "row", rows=self._parquet(f, work_dir, id_field, tap), format="parquet"
                )

    def _jsonl(self, f: InputFile, tap: Tap | None) -> Iterator[bytes]:
        if isinstance(f, LocalFile) and not _compressed(f):
            lines = f.lines()
            try:
                if tap is None:
                    yield from lines
                else:
                    for line in lines:
                        tap(line)
                        yield line
            finally:
                close = getattr(lines, "close", None)
                if close is not None:
                    close()
            return
        yield from lines_of(decompressed(_tapped(f.chunks(), tap), f.name))

    def _parquet(
        self, f: InputFile, work_dir: Path, id_field: str, tap: Tap | None
    ) -> Iterator[tuple[int, str, bytes, str | None]]:
        from slurmctl.coordinator.tabular import parquet_rows

        if isinstance(f, LocalFile) and not _compressed(f):
            if tap is not None:  # the digest: one sequential read (from the page cache after)
                for _ in _tapped(f.chunks(), tap):
                    pass
            yield from parquet_rows(f.path, f.name, id_field)
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        copy = work_dir / "input.parquet"
        try:
            with open(copy, "wb") as out:
                for data in decompressed(_tapped(f.chunks(), tap), f.name):
                    out.write(data)
            yield from parquet_rows(copy, f.name, id_field)
        finally:
            copy.unlink(missing_ok=True)


def _compressed(f: LocalFile) -> bool:
    with f._open() as handle:
        head = handle.read(4)
    return MAGIC.get(head[:2]) is not None or MAGIC.get(head) is not None


def _format_of_file(name: str) -> Format:
    fmt = format_of(name)
    if fmt is None:
        raise InputError(
            f"{name}: cannot tell the input format from the file's name: expected {NAMES}, "
            "or set input_format (jsonl, csv or parquet)"
        )
    return fmt


def _hidden(path: Path, root: Path) -> bool:
    """A file a tool leaves beside its data (`_SUCCESS`, `.part.crc`)."""
    return any(p.startswith(("_", ".")) for p in path.relative_to(root).parts)


def local_files(path: Path) -> list[InputFile]:
    """A file, or every file under a folder (but `_`- and `.`-named ones) in sorted order."""
    if not path.is_dir():
        return [LocalFile(path)]
    found = sorted(
        (p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)), key=lambda p: str(p)
    )
    if not found:
        raise InputError(f"{path}: cannot read input: the folder has no input file")
    return [LocalFile(p) for p in found]


def open_input(definition: JobDefinition, backend: Backend | None = None) -> Input:
    """The definition's input: local files, or s3:// objects read as streams through the job's
    AWS backend (or, without one, e.g. for a dry run, the definition's `aws:` settings)."""
    ref = definition.resolved_input()
    fmt, columns = definition.input_format, definition.input_columns
    if not ref.startswith("s3://"):
        return Input(ref, local_files(Path(ref)), fmt, columns)
    from slurmctl.backends.aws import open_s3_inputs

    if backend is not None and backend.kind == "aws":
        return Input(ref, list(open_s3_inputs(ref, objects=backend.objects)), fmt, columns)
    if definition.backend == "aws" and backend is None:
        aws = definition.aws
        endpoint = str(aws.endpoint_url) if aws.endpoint_url else None
        objects = open_s3_inputs(ref, region=aws.region, endpoint_url=endpoint)
        return Input(ref, list(objects), fmt, columns)
    raise UserError(f"{definition.config_path}: input: s3:// inputs need backend: aws")
