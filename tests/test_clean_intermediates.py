"""`slurmctl clean JOB --intermediates` and `output.keep_intermediates: false` through the real
CLI: a COMPLETED job's batches, per-task results, aggregation levels and checkpoints go, its
final output, result manifest and failure manifests stay and still read; a retry that needs the
batches is refused with one line; an unfinished job is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slurmctl
from slurmctl.errors import JobStateError
from tests.helpers import cli, make_job, status

KEPT = {
    "definition.json",
    "manifest.json",
    "history.jsonl",
    "quarantine.jsonl",
    "intermediates-removed.json",
    "final",
    "failures",
    "tasks",
}
GONE = {"batches", "results", "aggregate", "checkpoints"}


def _folders(jobdir: Path) -> set[str]:
    return {p.name for p in jobdir.iterdir()}


def _assert_cleaned(root: Path) -> None:
    jobdir = root / "objects" / "jobs" / "t1"
    assert _folders(jobdir) >= KEPT and not GONE & _folders(jobdir), _folders(jobdir)
    out = cli(root, "results", "t1", "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 399
    out = cli(root, "failures", "t1", "--format", "jsonl")
    assert [json.loads(x)["id"] for x in out.stdout.splitlines()] == ["3"]
    out = cli(root, "retry", "--job-id", "t1", "--errors", "validation", "--no-progress")
    assert (out.returncode, out.stderr) == (
        2,
        "error: job t1: its intermediates (batches, per-task results) were removed "
        "(`slurmctl clean --intermediates` or output.keep_intermediates: false): its failures "
        "cannot be retried\n",
    )
    out = cli(root, "retry", "--job-id", "t1", "--tasks", "task-000001", "--no-progress")
    assert (out.returncode, out.stderr) == (
        2,
        "error: job t1: its intermediates (batches, per-task results) were removed "
        "(`slurmctl clean --intermediates` or output.keep_intermediates: false): task "
        "task-000001 cannot run again\n",
    )
    assert status(root, "t1")["status"] == "COMPLETED"


def test_clean_intermediates_keeps_the_final_output(tmp_path: Path) -> None:
    root = tmp_path / "root"
    # 400 items in 20 tasks, fan_in 4: levels 1 and 2 of aggregation parts before the final
    config = make_job(tmp_path / "job", 400, batch_size=20, extra="output: {fan_in: 4}\n")
    out = cli(root, "submit", str(config), "--no-progress")
    assert out.returncode == 0, out.stderr
    jobdir = root / "objects" / "jobs" / "t1"
    assert {"batches", "results", "aggregate"} <= _folders(jobdir)
    assert (jobdir / "aggregate" / "L2").is_dir()
    before = json.loads((jobdir / "final" / "manifest.json").read_text())
    packs = sorted(p.name for p in (jobdir / "batches").iterdir())
    assert len(packs) == 5, packs  # 20 batches in packs of 1, 2, 4, 8 and the last 5

    out = cli(root, "clean", "t1", "--intermediates", "--yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(
        "objects); its final output, manifest and failure manifests stay\n"
    ), out.stdout
    removed = int(out.stdout.rsplit("(", 1)[1].split()[0])
    assert removed >= 5 + 20  # the packs of batches and a result per task, at least
    _assert_cleaned(root)
    assert json.loads((jobdir / "final" / "manifest.json").read_text()) == before
    history = [json.loads(x) for x in (jobdir / "history.jsonl").read_text().splitlines()]
    assert history[-1]["action"] == "clean_intermediates"
    assert history[-1]["objects"] == removed and history[-1]["by"] == "clean"
    again = cli(root, "clean", "t1", "--intermediates", "--yes")  # idempotent
    assert again.returncode == 0 and "(0 objects)" in again.stdout, again.stdout


def test_keep_intermediates_false_removes_them_at_completed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    extra = "output: {keep_intermediates: false}\n"
    config = make_job(tmp_path / "job", 400, batch_size=50, extra=extra)
    out = cli(root, "submit", str(config), "--no-progress")
    assert out.returncode == 0, out.stderr
    _assert_cleaned(root)
    history = [
        json.loads(x) for x in (root / "objects/jobs/t1/history.jsonl").read_text().splitlines()
    ]
    [cleaned] = [h for h in history if h["action"] == "clean_intermediates"]
    assert (
        cleaned["by"] == "output.keep_intermediates" and cleaned["objects"] >= 4 + 8
    )  # 4 packs (1, 2, 4, 1), 8 results


def test_clean_intermediates_refuses_an_unfinished_job(tmp_path: Path) -> None:
    root = tmp_path / "root"
    handler = (
        "from slurmctl import PermanentError\n\n"
        "def process(item, ctx):\n    raise PermanentError('no')\n"
    )
    config = make_job(tmp_path / "job", 10, handler=handler, batch_size=5, workers=1)
    out = cli(root, "submit", str(config), "--no-progress")
    assert out.returncode == 1, out.stderr
    out = cli(root, "clean", "t1", "--intermediates", "--yes")
    assert (out.returncode, out.stderr, out.stdout) == (
        2,
        "error: job t1 is FAILED: --intermediates applies to a COMPLETED job (an unfinished "
        "or failed one still needs its batches and results)\n",
        "",
    )
    with pytest.raises(JobStateError) as refused:  # the API's, which the command runs
        slurmctl.job("t1", root=root).remove_intermediates()
    assert f"error: {refused.value}\n" == out.stderr
    assert (root / "objects" / "jobs" / "t1" / "batches").is_dir()
    out = cli(root, "clean", "t1", "--intermediates", "--everything", "--yes")
    assert (out.returncode, out.stderr) == (
        2,
        "error: clean: give --intermediates or --everything, not both\n",
    )
