"""`slurmctl results` and `slurmctl failures` through the real CLI: each format's exact bytes,
to stdout and to a file, the preview table, --limit, --errors, and the one-line mistakes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import cli, make_job

ROWS = [{"id": str(i), "double": 2 * i} for i in range(12) if i != 3]
FAILURE = {
    "id": "3",
    "phase": "initial",
    "error_type": "validation",
    "permanent": True,
    "message": "PermanentError: item 3 is broken",
    "attempts": 1,
    "reason": "permanent error",
    "task_id": "task-000000",
    "batch_id": "batch-000000",
}


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A COMPLETED job t1 of 12 items, item 3 failed permanently."""
    tmp = tmp_path_factory.mktemp("results")
    root = tmp / "root"
    config = make_job(tmp / "job", 12, batch_size=6, workers=1)
    out = cli(root, "submit", str(config), "--no-progress")
    assert out.returncode == 0, out.stderr
    return root


def _ok(root: Path, *args: str) -> str:
    out = cli(root, *args)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out.stdout


def test_results_to_stdout_in_each_format(done: Path) -> None:
    csv = "".join(f'"{r["id"]}",{r["double"]}\n' for r in ROWS)
    assert _ok(done, "results", "t1", "--format", "csv") == '"id","double"\n' + csv
    jsonl = "".join(json.dumps(r) + "\n" for r in ROWS)
    assert _ok(done, "results", "t1", "--format", "jsonl") == jsonl
    assert _ok(done, "results", "t1", "--format", "jsonl", "--limit", "2") == (
        '{"id": "0", "double": 0}\n{"id": "1", "double": 2}\n'
    )


def test_results_to_a_file_in_each_format(done: Path, tmp_path: Path) -> None:
    assert _ok(done, "results", "t1", "--to", str(tmp_path / "r.parquet")) == (
        f"11 rows written to {tmp_path / 'r.parquet'} (parquet)\n"
    )
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == ROWS
    _ok(done, "results", "t1", "--to", str(tmp_path / "r.csv"), "--limit", "3")
    assert (tmp_path / "r.csv").read_text() == '"id","double"\n"0",0\n"1",2\n"2",4\n'
    _ok(done, "results", "t1", "--to", str(tmp_path / "r.out"), "--format", "jsonl")
    assert [json.loads(x) for x in (tmp_path / "r.out").read_text().splitlines()] == ROWS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.out", "r.parquet"]


def test_results_parquet_to_stdout_when_piped(done: Path) -> None:
    args = ["results", "t1", "--format", "parquet", "--limit", "4"]
    out = subprocess.run(
        [sys.executable, "-m", "slurmctl", "--root", str(done), *args],
        capture_output=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert pq.read_table(io.BytesIO(out.stdout)).to_pylist() == ROWS[:4]


def test_failures_to_a_file_in_each_format_with_limit(done: Path, tmp_path: Path) -> None:
    for fmt in ("csv", "jsonl", "parquet"):
        to = tmp_path / f"f.{fmt}"
        assert _ok(done, "failures", "t1", "--to", str(to), "--limit", "5") == (
            f"1 failures written to {to} ({fmt})\n"
        )
    assert [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()] == [FAILURE]
    assert (tmp_path / "f.csv").read_text().splitlines()[1].startswith('"3","initial",')
    assert pq.read_table(tmp_path / "f.parquet").to_pylist() == [FAILURE]
    assert _ok(done, "failures", "t1", "--format", "jsonl", "--limit", "0") == ""
    to = tmp_path / "none.csv"
    _ok(done, "failures", "t1", "--errors", "network", "--to", str(to))
    assert to.read_text() == (
        '"id","phase","error_type","permanent","message","attempts","reason","task_id","batch_id"\n'
    )


def test_results_preview_table(done: Path) -> None:
    out = _ok(done, "results", "t1", "--limit", "2")
    lines = out.splitlines()
    assert [ln.split() for ln in lines if ln.startswith("│")] == [
        ["│", "0", "│", "0", "│"],
        ["│", "1", "│", "2", "│"],
    ]
    assert lines[-1] == "2 of 11 rows shown; --to PATH or --format writes them all"


def test_failures_in_each_format(done: Path, tmp_path: Path) -> None:
    assert [
        json.loads(x) for x in _ok(done, "failures", "t1", "--format", "jsonl").splitlines()
    ] == [FAILURE]
    assert _ok(done, "failures", "t1", "--format", "csv") == (
        '"id","phase","error_type","permanent","message","attempts","reason","task_id",'
        '"batch_id"\n"3","initial","validation",true,"PermanentError: item 3 is broken",1,'
        '"permanent error","task-000000","batch-000000"\n'
    )
    _ok(done, "failures", "t1", "--to", str(tmp_path / "f.parquet"))
    assert pq.read_table(tmp_path / "f.parquet").to_pylist() == [FAILURE]
    assert _ok(done, "failures", "t1", "--errors", "network", "--format", "jsonl") == ""
    assert _ok(done, "failures", "t1", "--errors", "validation,network", "--format", "jsonl")
    assert _ok(done, "failures", "t1").splitlines()[-1] == "1 of 1 failures shown"


def test_results_and_failures_mistakes_are_one_line(done: Path, tmp_path: Path) -> None:
    cases = {
        ("results", "t1", "--to", str(tmp_path / "r.txt")): (
            f"error: --to {tmp_path / 'r.txt'}: cannot tell the format from the extension "
            "'.txt'; give --format (parquet|csv|jsonl) or end the name in .parquet, .csv, "
            ".jsonl, .ndjson"
        ),
        ("failures", "t1", "--errors", "bogus"): (
            "error: --errors: unknown error type(s) bogus; valid: client, crash, network, "
            "not_found, oom, poison, preempted, schema, server, throttled, timeout, unknown, "
            "validation"
        ),
        ("results", "nope"): (
            "error: no job 'nope' in this state root; `slurmctl list` shows the jobs"
        ),
    }
    for args, line in cases.items():
        out = cli(done, *args)
        assert (out.returncode, out.stderr, out.stdout) == (2, line + "\n", ""), args
    assert not (tmp_path / "r.txt").exists()


def test_results_of_an_unfinished_job_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = make_job(tmp_path / "job", 10, batch_size=5, workers=1)
    out = cli(root, "submit", str(config), "--dry-run")
    assert out.returncode == 0
    handler = (  # every item fails for good at once: FAILED without retry phases
        "from slurmctl import PermanentError\n\n"
        "def process(item, ctx):\n    raise PermanentError('no')\n"
    )
    (tmp_path / "job" / "handler.py").write_text(handler)
    out = cli(root, "submit", str(config), "--no-progress")
    assert out.returncode == 1, out.stderr
    out = cli(root, "results", "t1")
    assert (out.returncode, out.stderr) == (
        2,
        "error: job t1 is FAILED: its results exist once it is COMPLETED\n",
    )
