"""Output options through the real CLI: a hive-partitioned dataset (`output.partition_by`),
several files of a target size (`output.file_rows`, `output.file_mb`), each listed with its
sha256 in the result manifest and read back by pyarrow and DuckDB; verification covering every
file; a partition column the output lacks failing the job with one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import slurmctl
from slurmctl.errors import IntegrityError
from tests.helpers import cli, make_job, status

SHARDED = """
from slurmctl import PermanentError

def process(item, ctx):
    if item["id"] == "3":
        raise PermanentError("item 3 is broken")
    i = int(item["id"])
    return {"id": item["id"], "double": 2 * i, "shard": "abc"[i % 3], "odd": i % 2 == 1}
"""
IDS = [str(i) for i in range(60) if i != 3]


def _manifest(root: Path) -> dict[str, object]:
    path = root / "objects" / "jobs" / "t1" / "final" / "manifest.json"
    doc: dict[str, object] = json.loads(path.read_text())
    return doc


def _submit(root: Path, config: Path, code: int = 0) -> str:
    out = cli(root, "submit", str(config), "--no-progress")
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr
    return out.stdout


def test_partitioned_output_read_by_pyarrow_and_duckdb(tmp_path: Path) -> None:
    root = tmp_path / "root"
    extra = "output: {partition_by: [shard, odd], file_rows: 7}\n"
    config = make_job(tmp_path / "job", 60, handler=SHARDED, extra=extra, batch_size=10)
    printed = _submit(root, config)
    final = root / "objects" / "jobs" / "t1" / "final" / "data"
    assert printed.splitlines()[-1] == (
        f"output: {final}/ (12 files, 59 rows; `slurmctl status t1 --json` lists them)"
    )
    manifest = _manifest(root)
    files = manifest["files"]
    assert isinstance(files, list)
    # 6 partitions (3 shards x odd/even) of 9 or 10 rows each, split at 7 rows: 2 files each
    assert len(files) == 12 and manifest["rows"] == 59
    assert sum(f["rows"] for f in files) == 59 and max(f["rows"] for f in files) == 7
    for f in files:
        rel = Path(f["path"]).relative_to(final)
        assert rel.parts[0] == f"shard={f['partition']['shard']}"
        assert rel.parts[1] == f"odd={f['partition']['odd']}"
        assert rel.name.startswith("t1-") and rel.suffix == ".parquet"
        assert hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest() == f["sha256"]
        assert "shard" not in pq.read_schema(f["path"]).names  # in the folder names only
    shown = cli(root, "status", "t1", env={"COLUMNS": "400"}).stdout
    assert f"{final}/ (12 files, 59 rows; `slurmctl status t1 --json` lists them)" in shown
    assert status(root, "t1")["outputs"] == [
        {"path": f["path"], "rows": f["rows"], "sha256": f["sha256"]} for f in files
    ]

    ds = pads.dataset(final, format="parquet", partitioning="hive")
    rows = ds.to_table().to_pylist()
    assert sorted((r["id"] for r in rows), key=int) == IDS
    assert all(r["shard"] == "abc"[int(r["id"]) % 3] for r in rows)
    got = (
        duckdb.connect()
        .execute(
            f"SELECT shard, count(*), sum(double) FROM read_parquet('{final}/**/*.parquet', "
            "hive_partitioning = true) GROUP BY shard ORDER BY shard"
        )
        .fetchall()
    )
    assert got == [
        ("a", 19, sum(2 * i for i in range(0, 60, 3) if i != 3)),
        ("b", 20, sum(2 * i for i in range(1, 60, 3))),
        ("c", 20, sum(2 * i for i in range(2, 60, 3))),
    ]

    job = slurmctl.job("t1", root=root)  # the partition columns come back, typed
    table = job.results()
    assert table.schema.field("shard").type == "string" and table.schema.field("odd").type == "bool"
    assert {(r["id"], r["shard"], r["odd"]) for r in table.to_pylist()} == {
        (i, "abc"[int(i) % 3], int(i) % 2 == 1) for i in IDS
    }
    assert job.dataset().count_rows() == 59
    out = cli(root, "results", "t1", "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(IDS) and set(lines[0]) >= {"shard", "odd"}

    assert cli(root, "results", "t1", "--verify").stdout == (
        "job t1: 12 output files (59 rows) match their sha256\n"
    )
    damaged = Path(files[5]["path"])
    damaged.write_bytes(damaged.read_bytes() + b"x")
    out = cli(root, "results", "t1", "--verify")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr.startswith(f"integrity error: {damaged}: sha256 "), out.stderr
    with pytest.raises(IntegrityError, match=f"{damaged}: sha256 .* does not match"):
        job.verify()
    with pytest.raises(IntegrityError, match=str(damaged)):
        job.results()


def test_files_of_a_target_size(tmp_path: Path) -> None:
    root = tmp_path / "rows"
    _submit(root, make_job(tmp_path / "a", 200, extra="output: {file_rows: 45}\n", batch_size=20))
    files = _manifest(root)["files"]
    assert isinstance(files, list)
    final = root / "objects" / "jobs" / "t1" / "final" / "data"
    assert [(Path(f["path"]).name, f["rows"]) for f in files] == [
        ("t1-00000.parquet", 45),
        ("t1-00001.parquet", 45),
        ("t1-00002.parquet", 45),
        ("t1-00003.parquet", 45),
        ("t1-00004.parquet", 19),
    ]
    paths = [f["path"] for f in files]
    got = duckdb.connect().execute(
        f"SELECT count(*), count(DISTINCT id) FROM read_parquet({paths!r})"
    )
    assert got.fetchall() == [(199, 199)]
    assert pads.dataset(final).count_rows() == 199  # the folder holds the output only
    assert status(root, "t1")["outputs"][0]["path"] == str(final / "t1-00000.parquet")
    assert slurmctl.job("t1", root=root).results().num_rows == 199

    root = tmp_path / "mb"
    _submit(root, make_job(tmp_path / "b", 400, extra="output: {file_mb: 0.002}\n"))
    files = _manifest(root)["files"]
    assert isinstance(files, list) and len(files) > 1
    assert sum(f["rows"] for f in files) == 399
    assert len({f["rows"] for f in files[:-1]}) == 1  # rows per file from the bytes per row
    assert pads.dataset([f["path"] for f in files]).count_rows() == 399


def test_a_partition_column_the_output_lacks_fails_the_job(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = make_job(tmp_path / "job", 20, extra="output: {partition_by: [country]}\n")
    _submit(root, config, code=1)
    s = status(root, "t1")
    assert (s["status"], s["error"]) == (
        "FAILED",
        "output.partition_by: column 'country' is not in the output (its columns: id, double)",
    )


def test_output_options_are_checked_at_submit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = make_job(tmp_path / "job", 20, extra="output: {file_rows: 10, file_mb: 1}\n")
    out = cli(root, "submit", str(config), "--no-progress")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        f"error: {config}:10: output.file_mb: give output.file_rows or output.file_mb, not both\n"
    )
    assert cli(root, "list").stdout == f"no jobs in {root}\n"
    assert not (root / "objects" / "jobs" / "t1").exists()
