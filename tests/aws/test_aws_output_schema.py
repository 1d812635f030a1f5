"""Typed outputs with `backend: aws`: the schema recorded in DynamoDB (a versioned item), the
widening and the `schema` failures as on the embedded backend, the Parquet read from S3 by
pyarrow and DuckDB."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tests.aws.jobs import aws_failures, every_table_item, make_aws_job, new_place, s3_url_parts
from tests.helpers import cli, status
from tests.moto_server import moto_endpoint, moto_server, require_boto3

_ = (moto_server, moto_endpoint)  # session fixtures
require_boto3(module_level=True)

HANDLER = """
def process(item, ctx):
    i = int(item["id"])
    row = {"id": item["id"], "v": i if i < 10 else i + 0.5}   # int64, widened to float64
    if i % 5 == 4:
        row["email"] = "u%d@x" % i                            # never in a batch's first row
    row["tag"] = 97 if i == 13 else "t%d" % i
    if i == 17:
        row["big"] = 2**70
    return row
"""


def test_aws_job_records_and_widens_one_schema(moto_endpoint: str, tmp_path: Path) -> None:
    place = new_place(moto_endpoint)
    config = make_aws_job(place, tmp_path / "job", 20, handler=HANDLER, batch_size=5, workers=2)
    root = tmp_path / "root"
    run = cli(root, "submit", "--no-progress", str(config))
    assert "Traceback" not in run.stderr
    assert run.returncode == 0, run.stderr
    s = status(root, "aws1")
    assert (s["items"]["succeeded"], s["items"]["failed_permanent"]) == (18, 2)
    [out] = s["outputs"]
    bucket, key = s3_url_parts(out["path"])
    data = place.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    table = pq.read_table(io.BytesIO(data))
    assert {f.name: f.type for f in table.schema} == {
        "id": pa.string(),
        "v": pa.float64(),
        "email": pa.string(),
        "tag": pa.string(),
    }
    local = tmp_path / "final.parquet"
    local.write_bytes(data)
    got = duckdb.connect().execute(
        f"SELECT count(*), count(email), typeof(any_value(v)) FROM read_parquet('{local}')"
    )
    assert got.fetchall() == [(18, 4, "DOUBLE")]
    messages = {i["item_id"]: i["message"] for i in aws_failures(place, "aws1", "initial")}
    assert messages["17"] == (
        "output field 'big': got int 1180591620717411303424, which does not fit in int64"
    )
    assert messages["13"].startswith("output field 'tag': column is string (fixed by task-0000")
    docs = [i for i in every_table_item(place) if i["sk"]["S"].startswith("DOC#output")]
    assert [d["sk"]["S"] for d in docs] == ["DOC#output_schema"]  # one schema, however many tasks
    assert int(docs[0]["version"]["N"]) >= 1
