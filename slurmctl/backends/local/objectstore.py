"""The embedded object store: a folder, every write a temp file + rename (or link, for
put-if-absent).

The folder is the user's only (0700) and every object file is created 0600: item data, logs and
checkpoints are nobody else's to read.

Each object's sha256 travels with it in an extended attribute (`user.slurmctl.sha256`), set on
the temp file before the rename so data and checksum appear together. On a filesystem without
user xattrs it falls back to a sidecar under `.meta/`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from slurmctl.backends.objectstore import (
    CHUNK,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    check_range,
)
from slurmctl.errors import IntegrityError, SlurmctlError
from slurmctl.scratch import PRIVATE_FILE, open_private, private_folder

META = ".meta"
XATTR = "user.slurmctl.sha256"
_counter = itertools.count()


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


def _create(path: Path) -> BinaryIO:
    """A new file, mode 0600, never through a symlink."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")


def _sha_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class FolderObjectStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = private_folder(root.resolve())  # 0700, its files 0600
        self._xattrs: bool | None = None

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.root / META / (check_key(key) + ".sha256")

    def _tmp(self, final: Path) -> Path:
        return final.parent / f".tmp-{os.getpid()}-{next(_counter)}-{final.name}"

    def _tag(self, tmp: Path, info: ObjectInfo) -> None:
        """Attach the checksum to the temp file, before it becomes visible."""
        if self._xattrs is not False:
            try:
                os.setxattr(tmp, XATTR, info.sha256.encode())
                self._xattrs = True
                return
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                self._xattrs = False
        meta = self._meta_path(info.key)
        meta.parent.mkdir(parents=True, exist_ok=True)
        side = self._tmp(meta)
        with _create(side) as f:
            f.write(f"{info.sha256} {info.size}\n".encode())
        os.replace(side, meta)

    def _install(self, tmp: Path, info: ObjectInfo, if_absent: bool) -> ObjectInfo | None:
        final = self.path(info.key)
        try:
            self._tag(tmp, info)
            if if_absent:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    return None
            else:
                os.replace(tmp, final)
                return info
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return info

    def _open_tmp(self, key: str, if_absent: bool) -> Path | None:
        final = self.path(key)
        if if_absent and final.exists():
            return None
        final.parent.mkdir(parents=True, exist_ok=True)
        return self._tmp(final)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo | None:
        tmp = self._open_tmp(key, if_absent)
        if tmp is None:
            return None
        with _create(tmp) as f:
            f.write(data)
        return self._install(
            tmp, ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest()), if_absent
        )

    def put_file(
        self, key: str, path: Path, *, if_absent: bool = False, move: bool = False
    ) -> ObjectInfo | None:
        tmp = self._open_tmp(key, if_absent)
        if tmp is None:
            return None
        if move:
            try:
                os.rename(path, tmp)  # same filesystem: no copy
            except OSError:
                pass
            else:
                os.chmod(tmp, PRIVATE_FILE)
                sha, size = _sha_file(tmp)
                return self._install(tmp, ObjectInfo(key, size, sha), if_absent)
        h = hashlib.sha256()
        size = 0
        with _create(tmp) as out, open(path, "rb") as src:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        return self._install(tmp, ObjectInfo(key, size, h.hexdigest()), if_absent)

    def _recorded(self, key: str) -> str | None:
        if self._xattrs is not False:
            try:
                return os.getxattr(self.path(key), XATTR).decode()
            except OSError:
                pass
        try:
            return self._meta_path(key).read_text().split()[0]
        except (FileNotFoundError, IndexError):
            return None

    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        expected = sha256 or self._recorded(key)
        actual = hashlib.sha256(data).hexdigest()
        if expected is not None and actual != expected:
            raise IntegrityError(
                f"{self.url(key)}: sha256 {actual} does not match recorded {expected}"
            )
        return data

    def get_range(self, key: str, start: int, length: int, *, sha256: str | None = None) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                f.seek(start)
                data = f.read(length)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        return check_range(self.url(key), start, length, data, sha256)

    def verify(self, key: str, sha256: str | None = None) -> Path:
        """The object's own file, its bytes checked: for readers on this host (no copy)."""
        path = self.path(key)
        if not path.exists():
            raise ObjectNotFound(key)
        expected = sha256 or self._recorded(key)
        actual, _ = _sha_file(path)
        if expected is not None and actual != expected:
            raise IntegrityError(
                f"{self.url(key)}: sha256 {actual} does not match recorded {expected}"
            )
        return path

    def get_file(self, key: str, dest: Path, *, sha256: str | None = None) -> ObjectInfo:
        src = self.path(key)
        if not src.exists():
            raise ObjectNotFound(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp(dest)
        h = hashlib.sha256()
        size = 0
        try:
            with _create(tmp) as out, open(src, "rb") as f:
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
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return ObjectInfo(key, size, h.hexdigest())

    def head(self, key: str) -> ObjectInfo | None:
        p = self.path(key)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return None
        recorded = self._recorded(key) or _sha_file(p)[0]
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
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
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
