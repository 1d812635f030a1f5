"""End-to-end: real jobs through the CLI, real worker subprocesses, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.helpers import (
    assert_exactly_once,
    cli,
    failure_manifest,
    make_job,
    status,
    task_manifests,
)

FOUR_WORKERS_HANDLER = """
import os
import time
from pathlib import Path

from slurmctl import PermanentError

STARTED = Path(__file__).parent / "started"


def setup(ctx):
    ctx.waited = False


def process(item, ctx):
    # a barrier, polled: each worker's first item waits until all four workers hold a task, so
    # each of the four commits at least one (a worker's start-up takes ~0.4 s on 2 busy cores,
    # a task a few ms: without it one worker may drain every task before the others start)
    if not ctx.waited:
        STARTED.mkdir(exist_ok=True)
        (STARTED / ctx.worker_id).touch()
        deadline = time.monotonic() + 120
        while len(os.listdir(STARTED)) < 4:
            if time.monotonic() > deadline:
                raise RuntimeError("the four workers never all held a task")
            time.sleep(0.02)
        ctx.waited = True
    ctx.acquire()
    if int(item["id"]) % 500 == 3:
        raise PermanentError("item %s is broken" % item["id"])
    return {"id": item["id"], "double": item["n"] * 2}
"""


def test_10k_items_four_workers_every_item_once(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job", 10_000, batch_size=100, workers=4, handler=FOUR_WORKERS_HANDLER
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config))
    assert run.returncode == 0, run.stderr
    assert "job t1: COMPLETED: 9980 succeeded, 20 failed permanently" in run.stdout
    got = assert_exactly_once(root, "t1", 10_000)
    assert len(got["output"]) == 9980
    assert sorted(got["failures"], key=int) == [str(i) for i in range(3, 10_000, 500)]
    s = status(root, "t1")
    assert s["status"] == "COMPLETED"
    assert s["items"] == {
        "total": 10_000,
        "succeeded": 9980,
        "failed_permanent": 20,
        "failed_transient": 0,
        "quarantined": 0,
        "pending": 0,
    }
    assert s["tasks"] == {"PENDING": 0, "RUNNING": 0, "SUCCESS": 100, "FAILED": 0}
    [out] = s["outputs"]
    assert out["rows"] == 9980 and Path(out["path"]).is_absolute()
    table = pq.read_table(out["path"])
    assert table.column_names == ["id", "double"]
    doubles = dict(
        zip(table.column("id").to_pylist(), table.column("double").to_pylist(), strict=True)
    )
    assert doubles["42"] == 84 and "3" not in doubles
    # four workers drained 100 tasks, every one of them (the handler's barrier)
    jobdir = root / "objects" / "jobs" / "t1"
    workers = {m["worker_id"] for m in task_manifests(root, "t1")}
    assert workers == {f"local-1-{i}" for i in range(4)}, workers
    assert sorted(p.name for p in (tmp_path / "job" / "started").iterdir()) == sorted(workers)
    history = [json.loads(x) for x in (jobdir / "history.jsonl").read_text().splitlines()]
    [spawned] = [h for h in history if h["action"] == "workers"]
    assert spawned["count"] == 4
    failures = failure_manifest(jobdir, "initial")
    assert failures["count"] == 20
    assert failures["items"][0]["error_type"] == "validation"
    assert failures["items"][0]["reason"] == "permanent error"
    manifest = json.loads((jobdir / "manifest.json").read_text())
    for key in (
        "job_id",
        "job_type",
        "handler",
        "git_commit",
        "config_file",
        "input_file",
        "batch_size",
        "task_count",
        "slurm_array_id",
        "submitted_at",
        "phases",
        "status",
    ):
        assert key in manifest
    assert manifest["task_count"] == 100
    final = json.loads((jobdir / "final" / "manifest.json").read_text())
    assert final["rows"] == 9980 and final["levels"] == 2  # 100 outputs, fan-in 10: 10, then 1


def test_submit_again_says_completed_and_does_not_redo(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 300, batch_size=100, workers=2)
    root = tmp_path / "root"
    assert cli(root, "submit", str(config)).returncode == 0
    before = (root / "objects" / "jobs" / "t1" / "history.jsonl").read_text()
    again = cli(root, "submit", str(config))
    assert again.returncode == 0
    assert "job t1 already COMPLETED" in again.stdout
    assert (root / "objects" / "jobs" / "t1" / "history.jsonl").read_text() == before
    resume = cli(root, "resume", "t1")
    assert resume.returncode == 0 and "nothing to resume" in resume.stdout


def test_default_job_id_is_stable_for_the_same_input(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 50, batch_size=10, workers=1)
    config.write_text(config.read_text().replace("job_id: t1\n", ""))
    root = tmp_path / "root"
    first = cli(root, "submit", str(config))
    assert first.returncode == 0, first.stderr
    again = cli(root, "submit", str(config))
    assert "already COMPLETED" in again.stdout
    [job] = json.loads(cli(root, "list", "--json").stdout)
    assert job["job_id"].startswith("test-") and len(job["job_id"].split("-")[-1]) == 8


def test_quarantine_keeps_bad_lines_with_numbers(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job", 500, batch_size=50, workers=2, extra="max_quarantine_share: 0.05\n"
    )
    with open(tmp_path / "job" / "input.jsonl", "a") as f:
        f.write('not json\n{"n": 1}\n{"id": "7", "n": 7}\n[1, 2]\n')
    root = tmp_path / "root"
    run = cli(root, "submit", str(config))
    assert run.returncode == 0, run.stderr
    lines = (root / "objects" / "jobs" / "t1" / "quarantine.jsonl").read_text().splitlines()
    got = sorted((q["line"], q["reason"].split(":")[0]) for q in map(json.loads, lines))
    assert got == [
        (501, "invalid JSON"),
        (502, "missing id"),
        (503, "duplicate id"),
        (504, "not a JSON object"),
    ]
    assert status(root, "t1")["items"]["quarantined"] == 4
    assert_exactly_once(root, "t1", 500)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job",
        1000,
        batch_size=64,
        workers=3,
        extra="rate_limit: {tokens_per_sec: 10, burst: 2}\n",
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "items         1000" in run.stdout
    assert "quarantined   0" in run.stdout
    assert "batches       16 of up to 64 items" in run.stdout
    assert "tasks         16" in run.stdout
    assert "workers       3 (local executor)" in run.stdout
    assert "shortest run  1m40s at 10 requests/s" in run.stdout
    assert not (root / "objects" / "jobs").exists()
    assert json.loads(cli(root, "list", "--json").stdout) == []


def test_try_runs_the_handler_without_state(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 10)
    root = tmp_path / "root"
    run = cli(root, "try", str(config), "--items", "4")
    assert run.returncode == 1, "an item failed: non-zero"
    lines = run.stdout.splitlines()
    assert lines[0] == '0\tok\t{"id": "0", "double": 0}'
    assert lines[3] == "3\tvalidation (permanent)\tPermanentError: item 3 is broken"
    assert lines[4].startswith("3 ok, 1 failed")
    assert not root.exists() or json.loads(cli(root, "list", "--json").stdout) == []


def test_unknown_job_is_a_one_line_error(tmp_path: Path) -> None:
    for args in (
        ["status", "nope"],
        ["pause", "nope"],
        ["resume", "nope"],
        ["history", "nope"],
        ["status", "../x"],
    ):
        run = cli(tmp_path / "root", *args)
        assert run.returncode == 2, args
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "Traceback" not in run.stderr
    assert "no job 'nope'" in cli(tmp_path / "root", "status", "nope").stderr
