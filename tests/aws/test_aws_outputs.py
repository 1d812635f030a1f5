"""Output options and `clean --intermediates` with `backend: aws` against the moto server over
HTTP: a partitioned dataset split by rows in S3, its files listed with their sha256, read back
through the API (results, dataset over pyarrow's S3 filesystem), by the `results` command and
by DuckDB; failures streamed from S3 in each format; the intermediates removed from the bucket
(DeleteObjects) at COMPLETED, the final output and the failure manifests kept."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
import pyarrow.parquet as pq

import slurmctl
from tests.aws.jobs import make_aws_job, new_place, s3_accounted_ids, s3_url_parts
from tests.helpers import cli
from tests.moto_server import moto_endpoint, moto_server, require_boto3

_ = (moto_server, moto_endpoint)  # session fixtures
require_boto3(module_level=True)

HANDLER = """
from slurmctl import PermanentError

def process(item, ctx):
    i = int(item["id"])
    if i % 50 == 3:
        raise PermanentError("item %d is broken" % i)
    return {"id": item["id"], "double": 2 * i, "shard": "ab"[i % 2]}
"""
IDS = [str(i) for i in range(100) if i % 50 != 3]


def _keys(place: object, prefix: str) -> list[str]:
    s3 = place.s3  # type: ignore[attr-defined]
    listed = s3.list_objects_v2(Bucket=place.bucket, Prefix=prefix)  # type: ignore[attr-defined]
    return [o["Key"] for o in listed.get("Contents", [])]


def test_partitioned_output_in_s3_and_intermediates_removed(
    tmp_path: Path, moto_endpoint: str
) -> None:
    place = new_place(moto_endpoint)
    root = tmp_path / "root"
    extra = "output: {partition_by: [shard], file_rows: 20, keep_intermediates: false}\n"
    config = make_aws_job(place, tmp_path / "job", 100, handler=HANDLER, extra=extra,
                          batch_size=10, workers=2)  # fmt: skip
    job = slurmctl.submit(config, root=root, wait=True)
    manifest = job.manifest()
    files = manifest["files"]
    jobdir = f"{place.prefix}jobs/aws1/"
    # 49 rows per shard (3 and 53 failed: both odd, so shard b has 48): files of 20 rows at most
    assert [(f["partition"], f["rows"]) for f in files] == [
        ({"shard": "a"}, 20),
        ({"shard": "a"}, 20),
        ({"shard": "a"}, 10),
        ({"shard": "b"}, 20),
        ({"shard": "b"}, 20),
        ({"shard": "b"}, 8),
    ]
    assert manifest["output"] == f"s3://{place.bucket}/{jobdir}final/data/"
    for f in files:
        bucket, key = s3_url_parts(f["path"])
        assert key.startswith(f"{jobdir}final/data/shard={f['partition']['shard']}/aws1-")
        data = place.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
        assert pq.read_table(io.BytesIO(data)).num_rows == f["rows"]
    assert job.verify() == files

    rows = job.results().to_pylist()
    assert sorted((r["id"], r["shard"]) for r in rows) == sorted((i, "ab"[int(i) % 2]) for i in IDS)
    ds = job.dataset()  # in S3, the partition column from the folder names
    assert ds.count_rows() == 98
    odd = ds.to_table(filter=pads.field("shard") == "b").column("id").to_pylist()
    assert sorted(odd) == sorted(i for i in IDS if int(i) % 2)
    out = cli(root, "results", "aws1", "--to", str(tmp_path / "r.parquet"))
    assert out.returncode == 0, out.stderr
    got = duckdb.connect().execute(
        f"SELECT shard, count(*) FROM read_parquet('{tmp_path / 'r.parquet'}') "
        "GROUP BY shard ORDER BY shard"
    )
    assert got.fetchall() == [("a", 50), ("b", 48)]

    for fmt in ("jsonl", "csv", "parquet"):
        out = cli(root, "failures", "aws1", "--to", str(tmp_path / f"f.{fmt}"), "--limit", "1")
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"1 failures written to {tmp_path / f'f.{fmt}'} ({fmt})\n"
    assert json.loads((tmp_path / "f.jsonl").read_text())["id"] == "3"
    assert pq.read_table(tmp_path / "f.parquet").column("id").to_pylist() == ["3"]
    assert (tmp_path / "f.csv").read_text().splitlines()[1].startswith('"3","initial",')
    assert sorted(job.failures().column("id").to_pylist()) == ["3", "53"]

    # output.keep_intermediates: false: gone at COMPLETED, the rest kept
    for folder in ("batches/", "results/", "aggregate/", "checkpoints/"):
        assert _keys(place, jobdir + folder) == [], folder
    assert _keys(place, jobdir + "failures/") == [
        f"{jobdir}failures/initial.jsonl",
        f"{jobdir}failures/initial.summary.json",
    ]
    got_ids = s3_accounted_ids(root, place, "aws1")
    assert sorted(got_ids["output"] + got_ids["failures"], key=int) == [str(i) for i in range(100)]


def test_clean_intermediates_of_an_aws_job(tmp_path: Path, moto_endpoint: str) -> None:
    place = new_place(moto_endpoint)
    root = tmp_path / "root"
    config = make_aws_job(place, tmp_path / "job", 100, handler=HANDLER, batch_size=5, workers=2)
    out = cli(root, "submit", str(config), "--no-progress")
    assert out.returncode == 0, out.stderr
    jobdir = f"{place.prefix}jobs/aws1/"
    packs = _keys(place, jobdir + "batches/")
    assert len(packs) == 5, packs  # 20 batches in packs of 1, 2, 4, 8 and the last 5
    before = len(packs + _keys(place, jobdir + "results/"))
    assert before == 27  # a result per task (no marker), the item errors of items 3 and 53
    out = cli(root, "clean", "aws1", "--intermediates", "--yes")
    assert out.returncode == 0, out.stderr
    removed = int(out.stdout.rsplit("(", 1)[1].split()[0])
    assert removed >= before
    for folder in ("batches/", "results/", "aggregate/"):
        assert _keys(place, jobdir + folder) == [], folder
    job = slurmctl.job("aws1", root=root)
    assert sorted(job.results().column("id").to_pylist(), key=int) == IDS
    assert sorted(job.failures().column("id").to_pylist()) == ["3", "53"]
    out = cli(root, "retry", "--job-id", "aws1", "--errors", "validation")
    assert out.returncode == 2 and out.stderr.endswith(": its failures cannot be retried\n")
