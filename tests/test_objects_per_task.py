"""Objects per task (issue 16's cost): a committed task stores its result and nothing else; its
task manifest is a JSON line gathered with the worker's others into one object.

The state store's commit records the result's key, sha256 and rows, so no `.done` marker sits
beside the result, and the manifests (for people and tools) cost one PUT per hundred tasks."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

from slurmctl.backends import open_local
from slurmctl.layout import JobLayout
from slurmctl.states import TaskStatus
from slurmctl.worker.outputs import MANIFEST_FLUSH_TASKS, read_task_manifests
from tests.helpers import (
    assert_exactly_once,
    cli,
    make_job,
    popen,
    status,
    task_manifests,
    wait_for,
)
from tests.test_faults_local import SLOW_HANDLER

NOOP = """
def process(item, ctx):
    return {"id": item["id"], "n": item["n"]}
"""


def test_a_committed_task_stores_exactly_one_object(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 400, handler=NOOP, batch_size=20, workers=2)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert run.returncode == 0, run.stderr
    assert_exactly_once(root, "t1", 400)
    results = root / "objects/jobs/t1/results"
    per_task = {d.name: sorted(p.name for p in d.iterdir()) for d in results.iterdir()}
    assert len(per_task) == 20
    assert all(len(names) == 1 and names[0].endswith(".parquet") for names in per_task.values())
    assert not list((root / "objects").rglob("results/**/*.done"))
    # the state store's commit is what vouches for the result: key, sha256 and rows
    backend = open_local(root)
    tasks = list(backend.state.iter_tasks("t1"))
    assert {t.status for t in tasks} == {TaskStatus.SUCCESS}
    for t in tasks:
        assert t.output_key is not None
        data = backend.objects.get_bytes(t.output_key)
        assert hashlib.sha256(data).hexdigest() == t.output_sha256 and t.output_rows == 20
        assert t.output_key == f"jobs/t1/results/{t.task_id}/{per_task[t.task_id][0]}"
    # 20 manifests in one object per worker that committed a task (fewer than 100 each)
    objects = sorted(p.name for p in (root / "objects/jobs/t1/tasks").iterdir())
    assert 1 <= len(objects) <= 2 and all(n.endswith(".jsonl") for n in objects), objects
    manifests = task_manifests(root, "t1")
    assert sorted(m["task_id"] for m in manifests) == sorted(per_task)
    by_task = {t.task_id: t for t in tasks}
    for m in manifests:
        assert m["output_sha256"] == by_task[m["task_id"]].output_sha256
        assert m["lease_token"] == by_task[m["task_id"]].lease_token
        assert m["status"] == "SUCCESS" and m["metrics"]["items"] == 20


def test_manifests_are_written_a_hundred_at_a_time(tmp_path: Path) -> None:
    count = 2 * MANIFEST_FLUSH_TASKS + 10
    config = make_job(tmp_path / "job", count, handler=NOOP, batch_size=1, workers=1)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert run.returncode == 0, run.stderr
    folder = root / "objects/jobs/t1/tasks"
    sizes = sorted(len(p.read_bytes().splitlines()) for p in folder.iterdir())
    assert sizes == [10, MANIFEST_FLUSH_TASKS, MANIFEST_FLUSH_TASKS]  # the rest at exit
    assert len({m["task_id"] for m in task_manifests(root, "t1")}) == count


def test_manifests_are_written_when_they_have_waited_long_enough(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 30, handler=NOOP, batch_size=1, workers=1)
    root = tmp_path / "root"
    env = {"SLURMCTL_MANIFEST_FLUSH_S": "0"}  # every manifest is due at its commit
    run = cli(root, "submit", str(config), "--no-progress", env=env)
    assert run.returncode == 0, run.stderr
    folder = root / "objects/jobs/t1/tasks"
    assert sorted(len(p.read_bytes().splitlines()) for p in folder.iterdir()) == [1] * 30


def test_manifests_of_a_job_written_before_are_read_beside_the_new_ones(tmp_path: Path) -> None:
    """A job submitted before kept one `tasks/<task_id>.json` per task; resumed by this version
    it gathers the rest: the reader returns both."""
    backend = open_local(tmp_path / "root")
    layout = JobLayout("old")
    backend.objects.put_json(layout.root + "tasks/task-000000.json", {"task_id": "task-000000"})
    backend.objects.put_bytes(
        layout.task_manifests("w1", "ab12cd34-000000"),
        b'{"task_id": "task-000001"}\n{"task_id": "task-000002"}\n',
    )
    got = sorted(m["task_id"] for m in read_task_manifests(backend, "old"))
    assert got == ["task-000000", "task-000001", "task-000002"]


def _to_previous_layout(root: Path, job_id: str) -> int:
    """What the previous version left for the tasks committed so far: a `.done` beside each
    result and one `tasks/<task_id>.json` per task, no gathered manifests. Returns how many."""
    backend = open_local(root)
    folder = root / "objects/jobs" / job_id / "tasks"
    manifests = {m["task_id"]: m for m in task_manifests(root, job_id)}
    for path in folder.glob("*.jsonl"):
        path.unlink()
    committed = [t for t in backend.state.iter_tasks(job_id) if t.status is TaskStatus.SUCCESS]
    for t in committed:
        assert t.output_key is not None
        done = f"{t.output_sha256} {t.output_rows}\n".encode()
        backend.objects.put_bytes(t.output_key + ".done", done)
        backend.objects.put_json(f"jobs/{job_id}/tasks/{t.task_id}.json", manifests[t.task_id])
    return len(committed)


def _committed(calls: Path, root: Path) -> int:
    if not calls.exists():  # no item ran yet: the job may not be in the state store either
        return 0
    return int(status(root, "t1")["tasks"]["SUCCESS"])


def test_a_job_stopped_under_the_previous_layout_resumes_to_completed(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job", 600, handler=SLOW_HANDLER, batch_size=50, workers=2,
        extra="checkpoint_every: 10\n",
    )  # fmt: skip
    root = tmp_path / "root"
    env = {"CALLS_FILE": str(calls)}
    proc = popen(root, "submit", str(config), env=env)
    wait_for(lambda: _committed(calls, root) >= 2, what="two commits")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    before = _to_previous_layout(root, "t1")
    assert 2 <= before < 12
    resumed = cli(root, "resume", "t1", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "COMPLETED: 600 succeeded" in resumed.stdout
    assert_exactly_once(root, "t1", 600)
    manifests = task_manifests(root, "t1")  # the old per-task files and the gathered lines
    assert sorted(m["task_id"] for m in manifests) == [f"task-{i:06d}" for i in range(12)]
    folder = root / "objects/jobs/t1/tasks"
    assert len(list(folder.glob("*.json"))) == before
