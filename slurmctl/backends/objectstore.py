"""The object store interface: bytes under keys, each object kept with its sha256.

Implementations: `backends.local.objectstore.FolderObjectStore` (temp file + rename) and, with the
`aws` extra, S3. Keys are `/`-separated and relative (`jobs/<job_id>/batches/batch-000001.jsonl`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from slurmctl.errors import IntegrityError, SlurmctlError

CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str


class ObjectNotFound(SlurmctlError, KeyError):
    """No object under this key."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_range(url: str, start: int, length: int, data: bytes, sha256: str | None) -> bytes:
    """A region as read (get_range): whole, and its bytes those recorded."""
    if len(data) != length:
        raise IntegrityError(
            f"{url} bytes {start}-{start + length - 1}: the object is shorter than that"
        )
    if sha256 is not None and (actual := hashlib.sha256(data).hexdigest()) != sha256:
        raise IntegrityError(
            f"{url} bytes {start}-{start + length - 1}: sha256 {actual} does not match "
            f"recorded {sha256}"
        )
    return data


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


class ObjectStore(ABC):
    """Atomic puts (a reader sees the whole old object or the whole new one, never a part)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo | None:
        """Store data under key. With if_absent, write nothing and return None if key exists."""

    @abstractmethod
    def put_file(
        self, key: str, path: Path, *, if_absent: bool = False, move: bool = False
    ) -> ObjectInfo | None:
        """Like put_bytes, streaming from a local file. With move, the file is the caller's to
        give away: a store on the same filesystem may rename it instead of copying."""

    @abstractmethod
    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        """The object's bytes, verified against sha256 (or the stored one when not given).

        Raises ObjectNotFound, or IntegrityError when the bytes do not match.
        """

    @abstractmethod
    def get_range(self, key: str, start: int, length: int, *, sha256: str | None = None) -> bytes:
        """The `length` bytes from byte `start` of the object (S3's `Range: bytes=start-end`),
        verified against sha256 when given: the region's own, which the caller recorded (the
        stored sha256 covers the whole object, so it cannot check a region).

        Raises ObjectNotFound, or IntegrityError when the bytes do not match or the object
        ends before the region does.
        """

    @abstractmethod
    def get_file(self, key: str, dest: Path, *, sha256: str | None = None) -> ObjectInfo:
        """Download to dest (atomically), verified as get_bytes."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size and recorded sha256, or None if absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove key; absent keys are not an error."""

    def delete_many(self, keys: list[str]) -> None:
        """Remove the keys (at most 1,000, S3's batch); absent ones are not an error."""
        for key in keys:
            self.delete(key)

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Keys under prefix, sorted. For humans and `clean`: never to find committed outputs."""

    def verify(self, key: str, sha256: str | None = None) -> Path | None:
        """Where this host can read the object in place, its bytes checked against sha256;
        None when the store is remote (then use get_file)."""
        return None

    @abstractmethod
    def url(self, key: str) -> str:
        """Where users find the object: an absolute path (embedded) or an s3:// URL."""

    def put_json(self, key: str, obj: object, *, if_absent: bool = False) -> ObjectInfo | None:
        import json

        return self.put_bytes(
            key, json.dumps(obj, indent=1, sort_keys=True).encode(), if_absent=if_absent
        )

    def get_json(self, key: str, *, sha256: str | None = None) -> object:
        import json

        return json.loads(self.get_bytes(key, sha256=sha256))
