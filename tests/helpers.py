"""Running real jobs through the real CLI, in subprocesses, for the end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

DEFAULT_HANDLER = """
from slurmctl import PermanentError

def process(item, ctx):
    ctx.acquire()
    if int(item["id"]) % 500 == 3:
        raise PermanentError("item %s is broken" % item["id"])
    return {"id": item["id"], "double": item["n"] * 2}
"""


def cli(
    root: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slurmctl", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def popen(root: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "slurmctl", "--root", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def make_job(
    folder: Path,
    count: int,
    *,
    handler: str = DEFAULT_HANDLER,
    extra: str = "",
    batch_size: int = 100,
    workers: int = 4,
    job_id: str = "t1",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "input.jsonl", "w") as f:
        for i in range(count):
            f.write(json.dumps({"id": str(i), "n": i}) + "\n")
    (folder / "handler.py").write_text(textwrap.dedent(handler))
    config = folder / "job.yaml"
    config.write_text(
        f"job_id: {job_id}\njob_type: test\nhandler: handler:process\ninput: input.jsonl\n"
        f"id_field: id\nbatch_size: {batch_size}\nworkers: {workers}\n"
        f"scratch: {folder / 'scratch'}\n"
        "lease: {ttl_s: 3, heartbeat_s: 1}\n" + textwrap.dedent(extra)
    )
    return config


STATUS_EXIT = {"FAILED": 1, "PAUSED": 3, "STOPPED": 3, "CANCELLED": 3}
"""`status`'s exit code by the status it shows (README's table); every other status exits 0."""


def status(root: Path, job_id: str) -> dict[str, Any]:
    out = cli(root, "status", job_id, "--json")
    result: dict[str, Any] = json.loads(out.stdout)
    assert out.returncode == STATUS_EXIT.get(result["status"], 0), out.stderr
    return result


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def accounted_ids(root: Path, job_id: str) -> dict[str, list[str]]:
    """Every item id, by where it ended: output rows, failure manifest, quarantine."""
    s = status(root, job_id)
    out: dict[str, list[str]] = {"output": [], "failures": [], "quarantine": []}
    for o in s["outputs"]:
        out["output"] += [
            str(x) for x in pq.read_table(o["path"], columns=["id"]).column("id").to_pylist()
        ]
    jobdir = root / "objects" / "jobs" / job_id
    phases = {f.name.split(".")[0] for f in (jobdir / "failures").glob("*.json")}
    for phase in sorted(phases):
        out["failures"] += [str(i["item_id"]) for i in failure_manifest(jobdir, phase)["items"]]
    q = jobdir / "quarantine.jsonl"
    if q.exists():
        out["quarantine"] += [str(json.loads(line)["line"]) for line in q.read_text().splitlines()]
    return out


def failure_manifest(jobdir: Path, phase: str) -> dict[str, Any]:
    """A phase's failure manifest of an embedded job (its summary, the records it names as
    "items"), read as the files are: the records one JSON object per line; or one of the old
    form, one JSON document."""
    legacy = jobdir / "failures" / f"{phase}.json"
    if legacy.exists():
        old: dict[str, Any] = json.loads(legacy.read_text())
        return old
    summary = json.loads((jobdir / "failures" / f"{phase}.summary.json").read_text())
    records = (jobdir.parent.parent / summary["key"]).read_text().splitlines()
    return {**summary, "items": [json.loads(line) for line in records]}


def assert_exactly_once(root: Path, job_id: str, count: int) -> dict[str, list[str]]:
    """docs/architecture.md invariant 1, item by item."""
    got = accounted_ids(root, job_id)
    everything = got["output"] + got["failures"]
    assert len(everything) == len(set(everything)), "an item is accounted for twice"
    assert sorted(everything, key=int) == [str(i) for i in range(count)]
    return got


def task_manifests(root: Path, job_id: str) -> list[dict[str, Any]]:
    """Every task manifest of a job on the embedded backend (JSON lines gathered by each
    worker under `tasks/`), through the library's reader."""
    from slurmctl.backends import open_local
    from slurmctl.worker.outputs import read_task_manifests

    return read_task_manifests(open_local(root), job_id)


def task_manifest(root: Path, job_id: str, task_id: str) -> dict[str, Any]:
    """The one manifest of a committed task."""
    [found] = [m for m in task_manifests(root, job_id) if m["task_id"] == task_id]
    return found


def s3_task_manifests(objects: Mapping[str, bytes]) -> list[dict[str, Any]]:
    """The task manifests among a bucket's objects (key -> bytes)."""
    return [
        json.loads(line)
        for key, data in objects.items()
        if "/tasks/" in key and key.endswith(".jsonl")
        for line in data.split(b"\n")
        if line.strip()
    ]


def task_records(root: Path, job_id: str) -> dict[str, Any]:
    """The state store's record of every task of a job (embedded backend), by task id: what
    vouches for a task (status, attempts, output), whether or not its manifest was written."""
    from slurmctl.backends import open_local

    return {t.task_id: t for t in open_local(root).state.iter_tasks(job_id)}


def stored_batches(folder: Path) -> list[str]:
    """The batch ids stored under a job's `batches/` folder, sorted: every batch of each pack
    (`<first>--<last>[.<token>].jsonl`, backends/batches.py), and the batch of each object of
    one batch (the layout before packing). A writer's temporary file (`.tmp-*`, left behind
    by a SIGKILLed submit before its rename) is not a stored object."""
    ids: list[str] = []
    for path in folder.glob("*.jsonl") if folder.exists() else ():
        if path.name.startswith("."):
            continue
        first, sep, last = path.name.removesuffix(".jsonl").partition("--")
        if not sep:
            ids.append(first.split(".")[0])
            continue
        prefix, digits = first.rsplit("-", 1)
        end = int(last.split(".")[0].rsplit("-", 1)[1])
        ids += [f"{prefix}-{i:0{len(digits)}d}" for i in range(int(digits), end + 1)]
    return sorted(ids)
