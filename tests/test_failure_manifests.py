"""Failure manifests as one JSON record per line: the stored form, its summary (key, sha256,
counts), a damaged one refused, and a job whose manifests were written in the old form (one
JSON document `{"items": [...]}` per phase) read by `failures`, `analyze-errors` and `retry`,
which stores it in the new form."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import slurmctl
from slurmctl.backends import open_local
from tests.helpers import assert_exactly_once, cli, failure_manifest, make_job, status

HANDLER = """
import os
from slurmctl import PermanentError

def process(item, ctx):
    i = int(item["id"])
    if i % 100 == 3:
        raise PermanentError("item %d is broken" % i)
    if i % 10 == 1 and not os.path.exists(os.environ["HEALED"]):
        raise ConnectionResetError(104, "reset by peer")
    return {"id": item["id"]}
"""
FIELDS = {
    "item_id",
    "index",
    "task_id",
    "batch_id",
    "phase",
    "error_type",
    "permanent",
    "message",
    "signature",
    "attempt",
    "reason",
}


def _job(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A COMPLETED job of 200 items, no automatic retry: 20 network failures, 2 validation."""
    env = {"HEALED": str(tmp_path / "healed")}
    config = make_job(
        tmp_path / "job", 200, handler=HANDLER, batch_size=20, workers=2,
        extra="retry: {max_attempts: 1}\nmax_failure_share: 0.5\n",
    )  # fmt: skip
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), "--no-progress", env=env)
    assert out.returncode == 0, out.stderr
    return root, env


def _failure_ids(root: Path, *args: str) -> list[str]:
    out = cli(root, "failures", "t1", "--format", "jsonl", *args)
    assert out.returncode == 0, out.stderr
    return sorted((json.loads(x)["id"] for x in out.stdout.splitlines()), key=int)


def test_manifest_is_json_lines_with_a_summary(tmp_path: Path) -> None:
    root, _ = _job(tmp_path)
    jobdir = root / "objects" / "jobs" / "t1"
    summary = json.loads((jobdir / "failures" / "initial.summary.json").read_text())
    records = jobdir / "failures" / "initial.jsonl"
    assert summary == {
        "job_id": "t1",
        "phase": "initial",
        "format": "jsonl",
        "key": "jobs/t1/failures/initial.jsonl",
        "sha256": hashlib.sha256(records.read_bytes()).hexdigest(),
        "count": 22,
        "retried": 0,
    }
    lines = records.read_text().splitlines()
    assert len(lines) == 22
    entries = [json.loads(x) for x in lines]
    assert all(set(e) >= FIELDS for e in entries)
    assert {e["error_type"] for e in entries} == {"network", "validation"}
    final = json.loads((jobdir / "final" / "manifest.json").read_text())
    assert final["failures"] == [
        {
            "phase": "initial",
            "key": "jobs/t1/failures/initial.jsonl",
            "summary": "jobs/t1/failures/initial.summary.json",
            "sha256": summary["sha256"],
            "items": 22,
            "retried": 0,
        }
    ]
    assert not (jobdir / "failures" / "initial.json").exists()

    job = slurmctl.job("t1", root=root)  # streamed in record batches of at most `rows`
    assert [b.num_rows for b in job.failure_batches(rows=8)] == [8, 8, 6]
    assert [b.num_rows for b in job.failure_batches({"validation"}, rows=8)] == [2]
    assert job.failure_count() == 22

    records.write_text(records.read_text().replace("reset by peer", "reset by peeR"))
    out = cli(root, "failures", "t1", "--format", "jsonl")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"integrity error: {records}: sha256 "), out.stderr


def _to_old_form(root: Path) -> None:
    """Rewrite the job's manifests as the earlier version stored them."""
    backend = open_local(root)
    for summary_path in (root / "objects/jobs/t1/failures").glob("*.summary.json"):
        phase = summary_path.name.removesuffix(".summary.json")
        doc = failure_manifest(root / "objects/jobs/t1", phase)
        old = {
            "job_id": "t1",
            "phase": phase,
            "items": doc["items"],
            "count": doc["count"],
            "retried": doc["retried"],
            "retried_into": None,
        }
        backend.objects.put_json(f"jobs/t1/failures/{phase}.json", old)
        backend.objects.delete(doc["key"])
        backend.objects.delete(f"jobs/t1/failures/{phase}.summary.json")
    backend.close()


def test_a_job_with_manifests_of_the_old_form_still_reads(tmp_path: Path) -> None:
    root, env = _job(tmp_path)
    expected = sorted([str(i) for i in range(200) if i % 10 == 1 or i % 100 == 3], key=int)
    assert _failure_ids(root) == expected
    _to_old_form(root)
    jobdir = root / "objects" / "jobs" / "t1"
    assert sorted(p.name for p in (jobdir / "failures").iterdir()) == ["initial.json"]

    assert _failure_ids(root) == expected
    assert _failure_ids(root, "--errors", "validation") == ["3", "103"]
    out = cli(root, "analyze-errors", "t1", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["final_failures"] == 22
    assert_exactly_once(root, "t1", 200)

    (tmp_path / "healed").touch()
    out = cli(root, "retry", "--job-id", "t1", "--errors", "network", "--no-progress", env=env)
    assert out.returncode == 0, out.stderr
    assert "retrying 20 items (20 network) in phase retry_1" in out.stdout
    # the rewrite stored the old document in the new form, without the retried entries
    names = sorted(p.name for p in (jobdir / "failures").iterdir())
    assert "initial.json" not in names and "initial.summary.json" in names
    doc = failure_manifest(jobdir, "initial")
    assert (doc["count"], doc["retried"]) == (2, 20)
    assert sorted(e["item_id"] for e in doc["items"]) == ["103", "3"]
    got = assert_exactly_once(root, "t1", 200)
    assert sorted(got["failures"], key=int) == ["3", "103"]
    assert _failure_ids(root) == ["3", "103"]
    assert status(root, "t1")["items"]["succeeded"] == 198
