"""Input files of every format for the input tests, local and S3: the same records written as
JSON Lines, CSV or Parquet, plain, gzip or zstd, with the same bad records at known places."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

COUNT = 300
BAD = {
    # record number (1-based among the data records) -> what is wrong with it
    5: "missing id",
    10: "duplicate id",
}
"""Records 5 and 10 are bad in every format: an empty (or null) id, and the id of record 9."""


def records() -> list[dict[str, Any]]:
    """COUNT good records (ids "0".."299", n = the id as an int), with the two bad ones inserted."""
    out: list[dict[str, Any]] = [{"id": str(i), "n": i} for i in range(COUNT)]
    out.insert(4, {"id": None, "n": -1})  # record 5: no id
    out.insert(9, {"id": out[8]["id"], "n": -2})  # record 10: the id of record 9
    return out


def compress(data: bytes, codec: str) -> bytes:
    if codec == "gzip":
        return gzip.compress(data)
    if codec == "zstd":
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as out:
            out.write(data)
        return bytes(sink.getvalue().to_pybytes())
    return data


SUFFIX = {"none": "", "gzip": ".gz", "zstd": ".zst"}


def encode(fmt: str, rows: list[dict[str, Any]], codec: str = "none", **kwargs: Any) -> bytes:
    """rows in a format: jsonl (a null id left out), csv (a header, n as text), parquet."""
    if fmt == "jsonl":
        lines = [json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows]
        data = ("\n".join(lines) + "\n").encode()
    elif fmt == "csv":
        lines = ["id,n"] + [f"{r['id'] or ''},{r['n']}" for r in rows]
        data = ("\n".join(lines) + "\n").encode()
    else:
        table = pa.Table.from_pylist(
            rows, schema=pa.schema([("id", pa.string()), ("n", pa.int64())])
        )
        buf = io.BytesIO()
        pq.write_table(table, buf, **kwargs)
        data = buf.getvalue()
    return compress(data, codec)


def unit(fmt: str) -> str:
    return "row" if fmt == "parquet" else "line"


def number(fmt: str, record: int) -> int:
    """The line or row a quarantine entry names for a data record: CSV counts its header."""
    return record + 1 if fmt == "csv" else record


def expected_quarantine(fmt: str) -> list[tuple[int, str]]:
    return [
        (number(fmt, 5), "missing id: no usable 'id' field"),
        (number(fmt, 10), f"duplicate id: '7' first seen on {unit(fmt)} {number(fmt, 9)}"),
    ]
