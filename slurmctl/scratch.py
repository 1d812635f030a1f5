"""The worker's private scratch: a folder only its user can enter, and files only it can read.

The default scratch used to be a predictable path in a shared `$TMPDIR`: another local user who
planted `job_<id>/task_<id>/checkpoint.sqlite` there, or a symlink in place of a worker log, got
their data into the job's output or the user's files into a log object. So the scratch root is
created 0700 and verified (a real folder, not a symlink, owned by this user, writable by no one
else) before anything is put in it; every folder below is created 0700 and every file 0600 with
`O_NOFOLLOW`. Nothing below a verified root can then be planted by another (non-root) user.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from slurmctl.errors import UserError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class ScratchRefused(UserError):
    """A scratch folder that another user could have planted or can write into."""


def scratch_root(configured: str | Path | None) -> Path:
    """The job's scratch root: `scratch:` from the job definition, else a folder of this user's
    own in the system's temp folder (`$TMPDIR/slurmctl-<uid>`)."""
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"slurmctl-{os.geteuid()}"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or verify that the existing one is private to this user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, PRIVATE_DIR)
    st = os.lstat(path)
    where = f"scratch folder {path}"
    if stat.S_ISLNK(st.st_mode):
        raise ScratchRefused(f"{where} is a symlink: refusing it (give the job a private folder)")
    if not stat.S_ISDIR(st.st_mode):
        raise ScratchRefused(f"{where} is not a folder: refusing it")
    if st.st_uid != os.geteuid():
        raise ScratchRefused(
            f"{where} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}): "
            "refusing it (another user may have planted it)"
        )
    if st.st_mode & 0o022:
        raise ScratchRefused(
            f"{where} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): refusing "
            "it (set `scratch:` to a folder of your own, or chmod 700 it)"
        )
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)  # ours and unwritable by others: nothing planted, tighten it
    return path


def private_dirs(root: Path, *parts: str) -> Path:
    """`root/parts...`, every missing level created 0700 (root itself verified first)."""
    here = ensure_private_dir(root)
    for part in parts:
        here = here / part
        try:
            os.mkdir(here, PRIVATE_DIR)
        except FileExistsError:
            if os.path.islink(here):
                raise ScratchRefused(f"scratch folder {here} is a symlink: refusing it") from None
    return here


def open_private(path: Path, flags: int) -> int:
    """`os.open` that never follows a symlink and creates the file 0600."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)


def create_private(path: Path) -> None:
    """Create an empty 0600 file, or refuse a symlink or another user's file in its place."""
    try:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT)
    except OSError as e:
        raise ScratchRefused(f"scratch file {path}: {e.strerror}: refusing it") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ScratchRefused(f"scratch file {path} is owned by uid {st.st_uid}: refusing it")
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def private_folder(path: Path) -> Path:
    """A folder of the user's own choosing (the state root) made private: created 0700, or
    tightened to 0700 when it is the user's. Its files are created 0600 (`open_private`)."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path
