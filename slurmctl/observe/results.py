"""Reading a job's results and failures back, for the Python API and the `results` and
`failures` commands: the result manifest, every output file verified against its sha256, the
output as one Arrow table or as a `pyarrow.dataset` read where it is (local or S3, partition
columns typed from the manifest), and the failure manifests as Arrow record batches, streamed.

pyarrow (and boto3, for S3) are imported when a function runs: `status` never pays for them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.statestore import JobRecord
from slurmctl.errors import JobStateError, SlurmctlError
from slurmctl.finalize import failures as manifests
from slurmctl.finalize.dataset import partitioning_of
from slurmctl.layout import JobLayout
from slurmctl.states import JobStatus

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads


def result_manifest(backend: Backend, job: JobRecord) -> dict[str, Any]:
    if job.status != JobStatus.COMPLETED:
        raise JobStateError(
            f"job {job.job_id} is {job.status}: its results exist once it is COMPLETED"
        )
    key = JobLayout(job.job_id).final_manifest
    try:
        manifest: Any = backend.objects.get_json(key)
    except ObjectNotFound:
        raise SlurmctlError(
            f"job {job.job_id} is COMPLETED but its final manifest {key} is missing"
        ) from None
    result: dict[str, Any] = manifest
    return result


def verify_outputs(backend: Backend, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = manifest["files"]
    with tempfile.TemporaryDirectory(prefix="slurmctl-verify-") as tmp:
        for f in files:
            if backend.objects.verify(f["key"], f["sha256"]) is None:
                check = Path(tmp) / "check.parquet"
                backend.objects.get_file(f["key"], check, sha256=f["sha256"])
                check.unlink()
    return files


def results_table(backend: Backend, job_id: str, manifest: dict[str, Any]) -> pa.Table:
    import pyarrow.dataset as pads

    final = JobLayout(job_id).final_dataset
    with tempfile.TemporaryDirectory(prefix="slurmctl-results-") as tmp:
        paths = []
        for f in manifest["files"]:
            path = backend.objects.verify(f["key"], f["sha256"])
            if path is None:  # not on this host (S3): fetched, verified
                path = Path(tmp) / f["key"].removeprefix(final)
                backend.objects.get_file(f["key"], path, sha256=f["sha256"])
            paths.append(str(path))
        partitioning = partitioning_of(manifest.get("partitioning"))
        base = _base_dir(paths[0], manifest["files"][0]["key"], final)
        ds = pads.dataset(
            paths, format="parquet", partitioning=partitioning, partition_base_dir=base
        )
        return ds.to_table()


def results_dataset(backend: Backend, job_id: str, manifest: dict[str, Any]) -> pads.Dataset:
    import pyarrow.dataset as pads

    files = manifest["files"]
    final = JobLayout(job_id).final_dataset
    partitioning = partitioning_of(manifest.get("partitioning"))
    if backend.kind == "local":
        paths = [f["path"] for f in files]
        base = _base_dir(paths[0], files[0]["key"], final)
        return pads.dataset(
            paths, format="parquet", partitioning=partitioning, partition_base_dir=base
        )
    paths = [f["path"].removeprefix("s3://") for f in files]
    base = _base_dir(paths[0], files[0]["key"], final)
    return pads.dataset(
        paths,
        format="parquet",
        filesystem=s3_filesystem(backend),
        partitioning=partitioning,
        partition_base_dir=base,
    )


def failure_batches(
    backend: Backend, job_id: str, last_phase: str, errors: set[str] | None, rows: int
) -> Iterator[pa.RecordBatch]:
    schema = FAILURE_SCHEMA()
    columns: list[list[Any]] = [[] for _ in schema]
    for _, e in manifests.all_entries(backend, job_id, last_phase):
        if errors is None or e["error_type"] in errors:
            for column, value in zip(columns, _failure_row(e), strict=True):
                column.append(value)
            if len(columns[0]) >= rows:
                yield _batch(columns, schema)
                columns = [[] for _ in schema]
    if columns[0]:
        yield _batch(columns, schema)


def FAILURE_SCHEMA() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("phase", pa.string()),
            ("error_type", pa.string()),
            ("permanent", pa.bool_()),
            ("message", pa.string()),
            ("attempts", pa.int64()),
            ("reason", pa.string()),
            ("task_id", pa.string()),
            ("batch_id", pa.string()),
        ]
    )


def _batch(columns: list[list[Any]], schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    arrays = [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _failure_row(e: Mapping[str, Any]) -> tuple[Any, ...]:
    """A manifest record as the values of FAILURE_SCHEMA's columns, in order."""
    return (
        str(e["item_id"]),
        e.get("phase"),
        e["error_type"],
        bool(e.get("permanent")),
        e.get("message"),
        e.get("attempt"),
        e.get("reason"),
        e.get("task_id"),
        e.get("batch_id"),
    )


def _base_dir(path: str, key: str, final: str) -> str:
    """The folder of the final output, for a file's path whose key is under `final`."""
    rel = key.removeprefix(final)
    return path[: len(path) - len(rel)].rstrip("/")


def s3_filesystem(backend: Backend) -> Any:
    """pyarrow's S3 filesystem on the backend's endpoint, with boto3's credentials."""
    import boto3
    from pyarrow import fs

    objects: Any = backend.objects
    endpoint = objects.s3.endpoint
    session = boto3.session.Session()
    creds = session.get_credentials()
    frozen = creds.get_frozen_credentials() if creds is not None else None
    scheme, _, host = endpoint.partition("://")
    return fs.S3FileSystem(
        access_key=frozen.access_key if frozen else None,
        secret_key=frozen.secret_key if frozen else None,
        session_token=frozen.token if frozen else None,
        region=objects.s3.client.meta.region_name,
        endpoint_override=host if "amazonaws.com" not in host else None,
        scheme=scheme or "https",
    )
