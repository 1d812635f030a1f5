"""Reading a Slurm job's state in the tests: the state store, the manifests, squeue."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from slurmctl.backends import open_local
from slurmctl.backends.statestore import JobRecord, TaskRecord
from slurmctl.executors.slurm.sbatch import Element, SlurmClient
from tests import helpers
from tests.helpers import wait_for

SLURM_JOB = "executor: slurm\n"


def job(root: Path, job_id: str) -> JobRecord:
    backend = open_local(root)
    try:
        record = backend.state.get_job(job_id)
        assert record is not None
        return record
    finally:
        backend.close()


def task(root: Path, job_id: str, task_id: str) -> TaskRecord:
    backend = open_local(root)
    try:
        record = backend.state.get_task(job_id, task_id)
        assert record is not None
        return record
    finally:
        backend.close()


def wait_status(root: Path, job_id: str, status: str, timeout: float) -> None:
    def reached() -> bool:
        got = job(root, job_id).status
        if got in ("FAILED",) and status != "FAILED":
            raise AssertionError(f"job {job_id} FAILED: {job(root, job_id).error}")
        return got == status

    wait_for(reached, timeout=timeout, what=f"job {job_id} {status}")


def jobdir(root: Path, job_id: str) -> Path:
    return root / "objects" / "jobs" / job_id


def manifest(root: Path, job_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((jobdir(root, job_id) / "manifest.json").read_text())
    return doc


def history(root: Path, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (jobdir(root, job_id) / "history.jsonl").open()]


def task_manifests(root: Path, job_id: str) -> list[dict[str, Any]]:
    return helpers.task_manifests(root, job_id)


def elements(*ids: str) -> list[Element]:
    return SlurmClient().elements(list(ids))


def alive(*ids: str) -> list[Element]:
    return [e for e in elements(*ids) if e.state.alive]


def scontrol(*args: str) -> None:
    out = subprocess.run(["scontrol", *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


SLOW_HANDLER = """
import os, time

def process(item, ctx):
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(item["id"] + "\\n")
    time.sleep(float(os.environ.get("ITEM_S", "0.02")))
    return {"id": item["id"], "n": item["n"]}
"""
