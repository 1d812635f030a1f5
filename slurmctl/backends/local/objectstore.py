"""The embedded object store: a folder, every write a temp file + rename.

Each object's sha256 and size sit in a sidecar under `.meta/` so `head` need not re-read the bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from slurmctl.backends.objectstore import CHUNK, ObjectInfo, ObjectNotFound, ObjectStore
from slurmctl.errors import IntegrityError, SlurmctlError

META = ".meta"


def check_key(key: str) -> str:
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or any(p in {"", ".", ".."} for p in parts)
        or parts[0] == META
    ):
        raise SlurmctlError(f"invalid object key {key!r}")
    return key


class FolderObjectStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.root / META / (check_key(key) + ".sha256")

    def _write_meta(self, info: ObjectInfo) -> None:
        meta = self._meta_path(info.key)
        meta.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=meta.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(f"{info.sha256} {info.size}\n")
        os.replace(tmp, meta)

    def _install(self, key: str, tmp: str, info: ObjectInfo, if_absent: bool) -> ObjectInfo | None:
        final = self.path(key)
        try:
            if if_absent:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    return None
                self._write_meta(info)
            else:
                self._write_meta(info)
                os.replace(tmp, final)
                tmp = ""
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return info

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo | None:
        final = self.path(key)
        if if_absent and final.exists():
            return None
        final.parent.mkdir(parents=True, exist_ok=True)
        info = ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest())
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self._install(key, tmp, info, if_absent)

    def put_file(self, key: str, path: Path, *, if_absent: bool = False) -> ObjectInfo | None:
        final = self.path(key)
        if if_absent and final.exists():
            return None
        final.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        return self._install(key, tmp, ObjectInfo(key, size, h.hexdigest()), if_absent)

    def _recorded(self, key: str) -> str | None:
        try:
            return self._meta_path(key).read_text().split()[0]
        except (FileNotFoundError, IndexError):
            return None

    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        for _ in range(3):
            try:
                data = self.path(key).read_bytes()
            except FileNotFoundError:
                raise ObjectNotFound(key) from None
            expected = sha256 or self._recorded(key)
            actual = hashlib.sha256(data).hexdigest()
            if expected is None or actual == expected:
                return data
            if sha256 is not None:
                break  # the committed checksum does not change: no point reading again
        raise IntegrityError(f"{self.url(key)}: sha256 {actual} does not match recorded {expected}")

    def get_file(self, key: str, dest: Path, *, sha256: str | None = None) -> ObjectInfo:
        src = self.path(key)
        if not src.exists():
            raise ObjectNotFound(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            expected = sha256 or self._recorded(key)
            if expected is not None and h.hexdigest() != expected:
                raise IntegrityError(
                    f"{self.url(key)}: sha256 {h.hexdigest()} does not match recorded {expected}"
                )
            os.replace(tmp, dest)
            tmp = ""
        finally:
            if tmp:
                os.unlink(tmp)
        return ObjectInfo(key, size, h.hexdigest())

    def head(self, key: str) -> ObjectInfo | None:
        p = self.path(key)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return None
        recorded = self._recorded(key)
        if recorded is None:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            recorded = h.hexdigest()
        return ObjectInfo(key, size, recorded)

    def delete(self, key: str) -> None:
        for p, top in ((self.path(key), self.root), (self._meta_path(key), self.root / META)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            # prune folders left empty, so a deleted job leaves no trace
            parent = p.parent
            while parent != top and parent.is_relative_to(top):
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, base)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d != META]
                rel = ""
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                key = f"{rel}/{name}" if rel else name
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def url(self, key: str) -> str:
        return str(self.path(key))
