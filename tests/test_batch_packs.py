"""Batches packed several to an object (issue 16's cost, the S3 side): submit and the retry
planner store up to 16 consecutive batches in one object, each task reads only its own with a
ranged read, checked against the batch's own sha256; a killed submit resumed stores every
pack once and counts every item once; a damaged region fails only its task; a job stopped under
the previous layout (one object per batch) still resumes to COMPLETED."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
from pathlib import Path

from slurmctl.backends import open_local
from slurmctl.backends.batches import PACK_BYTES, pack, packs, read_batch
from slurmctl.holders import Holder
from slurmctl.layout import JobLayout
from slurmctl.states import TaskStatus
from tests.faults.test_retry_holes import HANDLER
from tests.helpers import (
    assert_exactly_once,
    cli,
    make_job,
    popen,
    status,
    stored_batches,
    task_records,
    wait_for,
)


def test_packs_grow_to_sixteen_batches_and_stay_under_the_byte_limit() -> None:
    small = [(i, b"x" * 100) for i in range(100)]
    sizes = [len(g) for g in packs(small)]
    assert sizes == [1, 2, 4, 8, 16, 16, 16, 16, 16, 5]
    assert [i for g in packs(small) for i, _ in g] == list(range(100)), "in order, each once"
    big = [(i, b"y" * (3 << 20)) for i in range(20)]  # 3 MB batches: two fit in 8 MB
    assert [len(g) for g in packs(big)] == [1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1]
    huge = [(0, b"z" * (PACK_BYTES + 1)), (1, b"z")]  # a batch larger than a pack is alone
    assert [len(g) for g in packs(huge)] == [1, 1]
    data, regions = pack([b"a\n", b"bb\ncc\n", b"d\n"])
    assert data == b"a\nbb\ncc\nd\n"
    assert [(r.start, r.length, r.range) for r in regions] == [
        (0, 2, "0-1"),
        (2, 6, "2-7"),
        (8, 2, "8-9"),
    ]
    assert regions[1].sha256 == hashlib.sha256(b"bb\ncc\n").hexdigest()


def test_a_job_packs_its_batches_and_each_task_reads_only_its_own(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 1000, batch_size=10, workers=2)
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert_exactly_once(root, "t1", 1000)
    folder = root / "objects/jobs/t1/batches"
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 10, names  # 100 batches: 1, 2, 4, 8, 16, 16, 16, 16, 16 and 5
    assert names[:3] == [
        "batch-000000--batch-000000.jsonl",
        "batch-000001--batch-000002.jsonl",
        "batch-000003--batch-000006.jsonl",
    ]
    backend = open_local(root)
    for t in task_records(root, "t1").values():
        index = int(t.batch_id.rsplit("-", 1)[1])
        assert t.batch_range is not None
        lines = read_batch(backend.objects, t).decode().splitlines()
        assert [json.loads(x)["id"] for x in lines] == [
            str(i) for i in range(index * 10, index * 10 + 10)
        ]
    [manifest] = [
        m
        for m in (
            json.loads(x) for p in (folder.parent / "tasks").glob("*.jsonl") for x in p.open()
        )
        if m["task_id"] == "task-000005"
    ]
    record = task_records(root, "t1")["task-000005"]
    assert manifest["input_s3"] == f"file://{root / 'objects' / record.batch_key}"
    assert manifest["input_range"] == record.batch_range


def test_a_submit_killed_inside_a_pack_resumes_with_every_item_once(tmp_path: Path) -> None:
    """SIGKILLed after the 20th task record: the pack of batches 15 to 30 is stored, its first
    tasks maybe; resume cuts the same packs, stores none of them twice (put-if-absent: the
    files already there are untouched) and counts every task once."""
    config = make_job(tmp_path / "job", 2000, batch_size=10, workers=2)
    root = tmp_path / "root"
    kill = {"SLURMCTL_KILL_AT": "submit.after_batch@20"}
    killed = cli(root, "submit", str(config), "--no-progress", env=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = root / "objects/jobs/t1/batches"
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert sorted(first) == [
        "batch-000000--batch-000000.jsonl",
        "batch-000001--batch-000002.jsonl",
        "batch-000003--batch-000006.jsonl",
        "batch-000007--batch-000014.jsonl",
        "batch-000015--batch-000030.jsonl",
    ]
    assert len(task_records(root, "t1")) == 15, "chunks of 1, 2, 4, 8 tasks stored and counted"
    resumed = cli(root, "resume", "t1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "job t1 was not fully submitted: carrying on with the submission" in resumed.stdout
    assert_exactly_once(root, "t1", 2000)
    s = status(root, "t1")
    assert s["tasks"]["SUCCESS"] == 200 and s["items"]["total"] == 2000
    for name, stamp in first.items():
        path = folder / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, name
    ids = stored_batches(folder)
    assert ids == [f"batch-{i:06d}" for i in range(200)], "every batch stored once"
    keys = {t.batch_key for t in task_records(root, "t1").values()}
    assert len(keys) == len(list(folder.iterdir())) == 16  # 31 in 5 packs, 160 in 10, then 9


def test_a_damaged_region_fails_only_its_task(tmp_path: Path) -> None:
    """The retry planner packs too: 600 items, 60 retried (i % 10 == 1 fail once) in 3 batches
    of 20, packed as [0] and [1, 2]. Batch 2's bytes damaged in the pack: its task fails with
    the same line as a damaged batch object of its own, batch 1 beside it runs; restored,
    `retry --tasks` runs it, and every item ends exactly once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"MARKS": str(marks)}
    extra = "retry: {max_attempts: 2, backoff_s: 0.1}\n"
    config = make_job(tmp_path / "job", 600, handler=HANDLER, batch_size=20, workers=2, extra=extra)
    root = tmp_path / "root"
    kill = {**env, "SLURMCTL_KILL_AT": "finalize.after_phase_flip"}
    assert cli(root, "submit", str(config), env=kill).returncode == -signal.SIGKILL
    records = {k: v for k, v in task_records(root, "t1").items() if k.startswith("r1-")}
    assert sorted(records) == ["r1-task-000000", "r1-task-000001", "r1-task-000002"]
    one, two = records["r1-task-000001"], records["r1-task-000002"]
    assert one.batch_key == two.batch_key and one.batch_key.endswith(".jsonl")
    assert one.batch_key.startswith("jobs/t1/batches/r1-batch-000001--r1-batch-000002.")
    assert two.batch_range is not None
    path = root / "objects" / two.batch_key
    original = path.read_bytes()
    start = int(two.batch_range.split("-")[0])
    assert b'"n": 591' in original[start:], "the last retried item is in batch 2"
    path.write_bytes(original.replace(b'"n": 591', b'"n": 519'))
    failed = cli(root, "resume", "t1", "--no-progress", env=env)
    assert failed.returncode == 1, failed.stderr
    damaged = hashlib.sha256(path.read_bytes()[start:]).hexdigest()
    reason = (
        f"{path} bytes {two.batch_range}: sha256 {damaged} does not match recorded "
        f"{two.batch_sha256}"
    )
    assert f"1 task(s) could not run, e.g. r1-task-000002: {reason}" in failed.stderr
    after = task_records(root, "t1")
    assert after["r1-task-000002"].status is TaskStatus.FAILED
    assert after["r1-task-000002"].error == reason
    assert after["r1-task-000001"].status is TaskStatus.SUCCESS, "its neighbour in the pack ran"
    assert after["r1-task-000000"].status is TaskStatus.SUCCESS
    path.write_bytes(original)
    rerun = cli(root, "retry", "--job-id", "t1", "--tasks", "r1-task-000002", env=env)
    assert rerun.returncode == 0, rerun.stderr
    got = assert_exactly_once(root, "t1", 600)
    assert sorted(map(int, got["failures"])) == [3, 103, 203, 303, 403, 503]


def _to_previous_layout(root: Path, job_id: str) -> int:
    """What the previous version left: one `batches/<batch_id>.jsonl` per stored task, whose
    record names it whole (a state root without the `batch_range` column), and no pack.
    Returns how many tasks it holds."""
    backend = open_local(root)
    layout = JobLayout(job_id)
    tasks = list(backend.state.iter_tasks(job_id))
    moved = []
    for t in tasks:
        key = layout.batch(t.batch_id)
        backend.objects.put_bytes(key, read_batch(backend.objects, t))
        moved.append((key, t.task_id))
    backend.close()
    for pack_file in (root / "objects" / layout.root / "batches").glob("*--*.jsonl"):
        pack_file.unlink()
    with sqlite3.connect(root / "state.sqlite") as conn:
        conn.executemany(
            "UPDATE tasks SET batch_key = ? WHERE job_id = 't1' AND task_id = ?", moved
        )
        conn.execute("ALTER TABLE tasks DROP COLUMN batch_range")
    return len(tasks)


def test_a_job_stopped_under_the_previous_layout_resumes_to_completed(tmp_path: Path) -> None:
    """A submit stopped half way (held, then its whole process group SIGKILLed, workers with
    it) by a version that stored one object per batch: resumed by this one, its stored tasks
    read their whole objects, the rest read packs, and every item ends exactly once."""
    config = make_job(tmp_path / "job", 3000, batch_size=10, workers=2)
    root, gate = tmp_path / "root", tmp_path / "gate"
    held = {"SLURMCTL_HOLD_AT": f"submit.after_batch@150={gate}"}
    proc = popen(root, "submit", str(config), "--no-progress", env=held)
    wait_for(lambda: _committed(root) >= 3, what="committed tasks")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: _workers_gone(root), what="the workers gone with their submit")
    stored = _to_previous_layout(root, "t1")
    assert stored == 127, "chunks of 1, 2, 4, ... 64 tasks stored before the hold"
    resumed = cli(root, "resume", "t1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "job t1 was not fully submitted: carrying on with the submission" in resumed.stdout
    assert_exactly_once(root, "t1", 3000)
    records = task_records(root, "t1")
    old = [t for t in records.values() if t.batch_range is None]
    assert sorted(t.task_id for t in old) == [f"task-{i:06d}" for i in range(127)]
    assert all(t.batch_key == f"jobs/t1/batches/{t.batch_id}.jsonl" for t in old)
    assert all(t.status is TaskStatus.SUCCESS for t in records.values())
    assert len(records) == 300


def _committed(root: Path) -> int:
    out = cli(root, "status", "t1", "--json")
    if out.returncode != 0 or not out.stdout.strip():
        return 0
    return int(json.loads(out.stdout)["tasks"]["SUCCESS"])


def _workers_gone(root: Path) -> bool:
    holders = (Holder.decode(t.holder) for t in task_records(root, "t1").values())
    return all(h.process_gone() for h in holders if h is not None)
