"""Nothing of a job can be read, planted or redirected by another local user (issue 13, hole
10): the scratch root is private and verified, checkpoints are never unpickled, worker logs are
never opened through a symlink, the state root is the user's only."""

from __future__ import annotations

import os
import pickle
import sqlite3
import stat
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job, status

ECHO = """
def process(item, ctx):
    return {"id": item["id"], "n": item["n"]}
"""

NOBODY = 65534


def _default_scratch_job(tmp_path: Path, count: int = 50) -> Path:
    """A job without `scratch:`: its scratch is under $TMPDIR."""
    config = make_job(tmp_path / "job", count, handler=ECHO, batch_size=25, workers=1)
    config.write_text(
        "".join(line for line in config.read_text().splitlines(True) if "scratch:" not in line)
    )
    (tmp_path / "tmp").mkdir(mode=0o1777)
    os.chmod(tmp_path / "tmp", 0o1777)  # a shared temp folder, as /tmp
    return config


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_default_scratch_and_the_state_root_are_the_users_only(tmp_path: Path) -> None:
    config = _default_scratch_job(tmp_path)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", env={"TMPDIR": str(tmp_path / "tmp")})
    assert run.returncode == 0, run.stderr
    assert_exactly_once(root, "t1", 50)
    scratch = tmp_path / "tmp" / f"slurmctl-{os.geteuid()}"
    assert _mode(scratch) == 0o700 and os.lstat(scratch).st_uid == os.geteuid()
    assert _mode(root) == 0o700 and _mode(root / "objects") == 0o700
    databases = [p for p in root.glob("*.sqlite*") if p.is_file()]
    assert {p.name for p in databases} >= {"state.sqlite", "queue.sqlite"}
    files = [*databases, *(p for p in (root / "objects").rglob("*") if p.is_file())]
    assert len(files) > 10
    assert {str(p): oct(_mode(p)) for p in files if _mode(p) != 0o600} == {}


def test_a_pickled_checkpoint_planted_in_the_shared_temp_folder_is_never_read(
    tmp_path: Path,
) -> None:
    """Another user plants a checkpoint at the old predictable path: unpickling it would run
    their code; its forged row would reach the output."""
    config = _default_scratch_job(tmp_path)
    ran = tmp_path / "planted-code-ran"
    planted = tmp_path / "tmp" / "job_t1" / "task_task-000000" / "checkpoint.sqlite"
    planted.parent.mkdir(parents=True)

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {ran}",))

    conn = sqlite3.connect(planted)
    conn.execute("CREATE TABLE chunks (first INTEGER PRIMARY KEY, rows BLOB)")
    conn.execute("CREATE TABLE inflight (idx INTEGER PRIMARY KEY)")
    rows = [(0, "0", True, [{"id": "0", "n": -1}], None, None, None), Exploit()]
    conn.execute("INSERT INTO chunks VALUES (0, ?)", (pickle.dumps(rows),))
    conn.commit()
    conn.close()
    for p in (planted, planted.parent, planted.parent.parent):
        os.chown(p, NOBODY, NOBODY)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", env={"TMPDIR": str(tmp_path / "tmp")})
    assert run.returncode == 0, run.stderr
    assert not ran.exists(), "the planted checkpoint was unpickled"
    assert_exactly_once(root, "t1", 50)
    [out] = status(root, "t1")["outputs"]
    import pyarrow.parquet as pq

    assert all(r["n"] == int(r["id"]) for r in pq.read_table(out["path"]).to_pylist())


def test_a_scratch_root_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    config = _default_scratch_job(tmp_path)
    planted = tmp_path / "tmp" / f"slurmctl-{os.geteuid()}"
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)
    os.chown(planted, NOBODY, NOBODY)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", env={"TMPDIR": str(tmp_path / "tmp")})
    assert run.returncode == 1, run.stderr
    expected = (
        f"scratch folder {planted} is owned by uid {NOBODY}, not by this user "
        f"(uid {os.geteuid()}): refusing it (another user may have planted it)"
    )
    assert status(root, "t1")["error"] == expected
    assert expected in run.stdout + run.stderr
    assert list(planted.iterdir()) == []


def test_a_symlinked_scratch_and_a_symlinked_worker_log_are_refused(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 50, handler=ECHO, batch_size=25, workers=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "job" / "scratch").symlink_to(elsewhere)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert run.returncode == 1, run.stderr
    scratch = tmp_path / "job" / "scratch"
    assert status(root, "t1")["error"] == (
        f"scratch folder {scratch} is a symlink: refusing it (give the job a private folder)"
    )
    assert list(elsewhere.iterdir()) == []

    # a private scratch of the user's, with a symlink where the worker log goes
    secret = tmp_path / "id_secret"
    secret.write_text("TOPSECRET\n")
    secret.chmod(0o600)
    scratch.unlink()
    logs = scratch / "job_t2" / "logs"
    logs.mkdir(parents=True)
    os.chmod(scratch, 0o700)
    (logs / "local-1-0.jsonl").symlink_to(secret)
    config.write_text(config.read_text().replace("job_id: t1", "job_id: t2"))
    run = cli(root, "submit", str(config), "--no-progress")
    assert run.returncode == 1, run.stderr
    error = status(root, "t2")["error"]
    assert error == (
        f"worker log {logs / 'local-1-0.jsonl'}: Too many levels of symbolic links: refusing it"
    )
    shipped = b"".join(p.read_bytes() for p in (root / "objects").rglob("*") if p.is_file())
    assert b"TOPSECRET" not in shipped
