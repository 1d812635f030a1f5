"""The final output as several files: a hive-style partitioned dataset (`output.partition_by`)
and/or files of a target size (`output.file_rows`, `output.file_mb`).

The aggregator's last level (at most `fan_in` verified parts) is streamed, row group by row
group and cast to the job's schema, through `pyarrow.dataset.write_dataset` into a local folder
(one thread, so the files and their order are the same on every run), and each file written is
stored under `final/` with its sha256 and rows: the result manifest lists every one. A rerun
writes the same files under the same keys. The partition columns live in the folder names
(`final/country=FR/<job_id>-00000.parquet`), not in the files, as Hive, Spark, DuckDB and
pyarrow expect; the manifest records their Arrow types so that `Job.results()` reads them back
typed.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from slurmctl.backends import Backend
from slurmctl.config import OutputOptions
from slurmctl.errors import IntegrityError, SlurmctlError
from slurmctl.layout import JobLayout

MAX_PARTITIONS = 10_000
"""Distinct partition values one job may write (pyarrow's default is 1,024)."""
MAX_OPEN_FILES = 256
ROW_GROUP_ROWS = 128 * 1024
MB = 1 << 20


class PartitionError(SlurmctlError):
    """The output cannot be partitioned as `output.partition_by` asks: one line, the job fails."""


@dataclass(frozen=True)
class OutputFile:
    key: str
    url: str
    sha256: str
    rows: int
    partition: dict[str, str] | None = None
    """The file's partition values as its folder names them (partition_by only)."""

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.url,
            "key": self.key,
            "rows": self.rows,
            "sha256": self.sha256,
        }
        if self.partition is not None:
            out["partition"] = self.partition
        return out


def partitioning_doc(schema: pa.Schema, columns: list[str]) -> dict[str, Any]:
    """What the result manifest says of the partitioning: the columns and their Arrow types."""
    fields = pa.schema([schema.field(c) for c in columns])
    return {
        "flavor": "hive",
        "columns": columns,
        "schema": base64.b64encode(fields.serialize().to_pybytes()).decode(),
    }


def partitioning_of(doc: dict[str, Any] | None) -> pads.Partitioning | None:
    """The pyarrow partitioning a result manifest's "partitioning" describes."""
    if not doc:
        return None
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["schema"])))
    return pads.partitioning(schema, flavor="hive")


def _check_columns(schema: pa.Schema, columns: list[str]) -> None:
    for name in columns:
        if name not in schema.names:
            raise PartitionError(
                f"output.partition_by: column {name!r} is not in the output "
                f"(its columns: {', '.join(schema.names) or 'none'})"
            )
        t = schema.field(name).type
        if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            raise PartitionError(
                f"output.partition_by: column {name!r} is {t}: a partition column must hold "
                "scalar values (text, numbers, dates, booleans)"
            )


def rows_per_file(options: OutputOptions, local: list[Path], rows: int) -> int | None:
    """`file_rows`, or the rows that make about `file_mb` at the inputs' bytes per row."""
    if options.file_rows is not None:
        return options.file_rows
    if options.file_mb is None or rows == 0:
        return None
    size = sum(os.path.getsize(p) for p in local)
    per_row = max(size / rows, 1e-3)
    return max(1, int(options.file_mb * MB / per_row))


def write(
    backend: Backend,
    job_id: str,
    local: list[Path],
    schema: pa.Schema,
    options: OutputOptions,
    work: Path,
    conform: Any,
) -> tuple[list[OutputFile], dict[str, Any] | None]:
    """Write the local parts (verified) as the final dataset and store its files; returns them
    in key order and the manifest's "partitioning" (None when not partitioned)."""
    columns = list(options.partition_by or [])
    _check_columns(schema, columns)
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in local)
    per_file = rows_per_file(options, local, rows)
    out = work / "final"
    written: dict[str, int] = {}

    def visit(f: Any) -> None:
        written[f.path] = f.metadata.num_rows

    def batches() -> Iterator[pa.RecordBatch]:
        for path in local:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS):
                yield from conform(pa.Table.from_batches([batch]), schema).to_batches()

    group = min(ROW_GROUP_ROWS, per_file) if per_file else ROW_GROUP_ROWS
    try:
        pads.write_dataset(
            pa.RecordBatchReader.from_batches(schema, batches()),
            out,
            format="parquet",
            basename_template="part-{i}.parquet",
            partitioning=_partitioning(schema, columns),
            use_threads=False,
            preserve_order=True,
            max_partitions=MAX_PARTITIONS,
            max_open_files=MAX_OPEN_FILES,
            max_rows_per_file=per_file or 0,
            max_rows_per_group=group,
            min_rows_per_group=0,
            file_visitor=visit,
            existing_data_behavior="overwrite_or_ignore",
        )
    except pa.ArrowInvalid as e:
        if "partitions" in str(e):
            raise PartitionError(
                f"output.partition_by: more than {MAX_PARTITIONS} distinct values of "
                f"{', '.join(columns)}; partition by a column of fewer values"
            ) from None
        raise
    if sum(written.values()) != rows:
        raise IntegrityError(f"job {job_id}: wrote {sum(written.values())} rows, inputs {rows}")
    files = _store(backend, job_id, out, written, bool(columns))
    return files, partitioning_doc(schema, columns) if columns else None


def _partitioning(schema: pa.Schema, columns: list[str]) -> pads.Partitioning | None:
    if not columns:
        return None
    return pads.partitioning(pa.schema([schema.field(c) for c in columns]), flavor="hive")


def _store(
    backend: Backend, job_id: str, out: Path, written: dict[str, int], partitioned: bool
) -> list[OutputFile]:
    layout = JobLayout(job_id)
    files = []
    for path_text, rows in written.items():
        path = Path(path_text)
        rel = path.relative_to(out)
        number = int(rel.name.removeprefix("part-").removesuffix(".parquet"))
        folder = "" if rel.parent == Path(".") else rel.parent.as_posix() + "/"
        key = layout.final_dataset + folder + f"{job_id}-{number:05d}.parquet"
        info = backend.objects.put_file(key, path, move=True)
        assert info is not None
        partition = None
        if partitioned:
            partition = {k: unquote(v) for k, v in (p.split("=", 1) for p in rel.parent.parts)}
        files.append(OutputFile(key, backend.objects.url(key), info.sha256, rows, partition))
    return sorted(files, key=lambda f: f.key)
