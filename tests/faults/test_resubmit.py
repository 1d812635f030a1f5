"""Submitting an existing job_id again, and resuming a killed submit (issue 12 point 6, issue 13
hole 6): the stored definition and input fingerprint decide; anything different is refused with
exit 2 and one line saying what differs, and nothing is written."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job, status, stored_batches


def _tasks(root: Path) -> int:
    return int(sum(status(root, "t1")["tasks"].values()))


def test_resubmit_with_a_changed_definition_is_refused(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 200, batch_size=50, workers=2)
    root = tmp_path / "root"
    assert cli(root, "submit", str(config), "--no-progress").returncode == 0
    same = cli(root, "submit", str(config), "--no-progress")
    assert same.returncode == 0, same.stderr
    assert "job t1 already COMPLETED" in same.stdout
    dry_same = cli(root, "submit", str(config), "--dry-run")
    assert dry_same.returncode == 0, dry_same.stderr
    assert "  existing      COMPLETED, same definition and input: would report it" in (
        dry_same.stdout
    )
    config.write_text(config.read_text().replace("batch_size: 50", "batch_size: 20"))
    line = "error: job t1 exists with batch_size 50, this definition says 20; use another job_id\n"
    for args in ((), ("--dry-run",)):
        refused = cli(root, "submit", str(config), "--no-progress", *args)
        assert (refused.returncode, refused.stderr, refused.stdout) == (2, line, ""), args
    config.write_text(config.read_text().replace("batch_size: 20", "batch_size: 50"))
    config.write_text(config.read_text() + "retry: {max_attempts: 5}\n")
    nested = cli(root, "submit", str(config))
    assert nested.returncode == 2
    assert nested.stderr == (
        "error: job t1 exists with retry.max_attempts 3, this definition says 5; "
        "use another job_id\n"
    )
    assert _tasks(root) == 4


def test_resubmit_with_a_changed_input_is_refused(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 200, batch_size=50, workers=2)
    root = tmp_path / "root"
    assert cli(root, "submit", str(config), "--no-progress").returncode == 0
    path = tmp_path / "job/input.jsonl"
    original = path.read_bytes()
    path.write_bytes(original + b'{"id": "200", "n": 200}\n')
    line = (
        f"error: job t1 exists with input {path} of {len(original)} bytes, it now has "
        f"{len(original) + 24} bytes; use another job_id\n"
    )
    for args in ((), ("--dry-run",)):
        refused = cli(root, "submit", str(config), *args)
        assert (refused.returncode, refused.stderr) == (2, line), args
    path.write_bytes(original.replace(b'"n": 17}', b'"n": 71}'))  # same size, other content
    edited = cli(root, "submit", str(config))
    assert edited.returncode == 2
    assert edited.stderr.startswith(f"error: job t1 exists with input {path} of sha256 ")
    assert edited.stderr.endswith(" (same size); use another job_id\n")
    path.write_bytes(original)  # the same bytes again, a new mtime: the digest says same
    again = cli(root, "submit", str(config), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "job t1 already COMPLETED" in again.stdout
    assert_exactly_once(root, "t1", 200)


def _padded_input(path: Path, count: int, pad: int = 560) -> bytes:
    pad_text = "x" * pad
    data = "".join(json.dumps({"id": str(i), "n": i, "pad": pad_text}) + "\n" for i in range(count))
    path.write_text(data)
    return data.encode()


def test_resume_of_a_killed_submit_refuses_a_changed_input(tmp_path: Path) -> None:
    """Hole 6: 200 one-item batches of ~6 KB (1.2 MB: 7-digit ids); cutting the tail to 160
    items (under 1 MB: 6 digits) used to make resume write every task again."""
    config = make_job(tmp_path / "job", 0, batch_size=1, workers=4)
    path = tmp_path / "job/input.jsonl"
    original = _padded_input(path, 200, pad=5960)
    root = tmp_path / "root"
    kill = {"SLURMCTL_KILL_AT": "submit.after_batch@30"}
    killed = cli(root, "submit", str(config), "--no-progress", env=kill)
    assert killed.returncode == -signal.SIGKILL
    batches = root / "objects/jobs/t1/batches"
    written = sorted(p.name for p in batches.iterdir())
    # packs of 1, 2, 4, 8, then 16 batches: the one holding the 30th (15 to 30) is stored
    # before its tasks
    assert written[:2] == [
        "batch-0000000--batch-0000000.jsonl",
        "batch-0000001--batch-0000002.jsonl",
    ]
    cut = stored_batches(batches)
    assert len(cut) == 31 and cut[0] == "batch-0000000" and cut[-1] == "batch-0000030"
    path.write_bytes(original[: 160 * len(original) // 200])
    assert path.stat().st_size < 1_000_000 < len(original)
    line = (
        f"error: job t1 exists with input {path} of {len(original)} bytes, it now has "
        f"{path.stat().st_size} bytes; use another job_id\n"
    )
    for command in (("resume", "t1"), ("submit", str(config))):
        refused = cli(root, *command, "--no-progress")
        assert (refused.returncode, refused.stderr) == (2, line), command
        assert sorted(p.name for p in batches.iterdir()) == written, "nothing written"
    path.write_bytes(original)
    os.utime(path, ns=(1, 1))  # restored, with another mtime: same size, batches verified
    resumed = cli(root, "resume", "t1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    s = status(root, "t1")
    assert s["tasks"]["SUCCESS"] == 200 and s["items"]["total"] == 200
    assert s["items"]["pending"] == 0
    ids = stored_batches(batches)
    assert ids[0] == "batch-0000000" and len(ids) == len(set(ids)) == 200
    assert_exactly_once(root, "t1", 200)
