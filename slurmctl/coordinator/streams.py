"""Byte streams for the input readers: an iterator of chunks as a file pyarrow can read, and
transparent gzip / zstd decompression, told by the stream's first bytes (pyarrow's codecs: no
other dependency), read in bounded pieces so memory stays flat whatever the ratio.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from itertools import chain

from slurmctl.backends.objectstore import CHUNK
from slurmctl.errors import InputError

MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


class ChunkReader(io.RawIOBase):
    """A byte iterator as a readable file (for pyarrow's streams)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._rest = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def decompressed(chunks: Iterator[bytes], name: str) -> Iterator[bytes]:
    """The bytes as they are, or decompressed when they start as gzip or zstd does."""
    first = next(chunks, b"")
    codec = MAGIC.get(first[:2]) or MAGIC.get(first[:4])
    if codec is None:
        if first:
            yield first
        yield from chunks
        return
    import pyarrow as pa

    stream = pa.CompressedInputStream(
        pa.PythonFile(ChunkReader(chain([first], chunks)), mode="r"), codec
    )
    while True:
        try:
            data = stream.read(CHUNK)
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{name}: cannot read input: corrupt {codec} data ({e})") from None
        if not data:
            return
        yield data
