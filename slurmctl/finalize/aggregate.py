"""The aggregator: a hierarchical merge of the committed outputs into the final dataset.

Inputs come from the state store's committed keys (never a folder listing) and each is verified
against the sha256 recorded at commit. Level 1 merges groups of `fan_in` task outputs, level 2
groups of level-1 parts, and so on until one part is left. Each part is written atomically and
names its inputs in its own Parquet footer (`slurmctl.part`: their keys and a digest of their
keys and sha256s); a rerun skips the parts whose bytes match their recorded sha256 and whose
footer names these inputs, and rebuilds the others. No `.done` object beside a part: one PUT per
merge, not two (an earlier version's `.done` markers are ignored, their parts rebuilt once).

Types never crash a merge: every part is cast to the job's recorded output schema
(output_schema.py), which every committed output fits by construction. Outputs that still do not
fit (a job without a recorded schema, a record changed by hand) raise `OutputConflict`, one line
naming the field and the tasks, and the job fails with it instead of a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.backends.statestore import OUTPUT_ROWS, OUTPUT_SCHEMA_DOC
from slurmctl.config import OutputOptions
from slurmctl.errors import IntegrityError, SlurmctlError
from slurmctl.finalize import dataset
from slurmctl.finalize.dataset import OutputFile
from slurmctl.layout import JobLayout
from slurmctl.output_schema import Conflict, JobSchema, type_name, widen
from slurmctl.states import TaskStatus

log = logging.getLogger("slurmctl.aggregate")
MERGE_THREADS = max(1, min(4, os.cpu_count() or 1))
ROW_GROUP_ROWS = 128 * 1024
PART_OPTIONS: dict[str, Any] = {"use_dictionary": False}
"""Intermediate parts are read once, by the next level: no dictionary pages, whose building is
wasted on high-cardinality columns such as ids (the final output keeps pyarrow's defaults)."""
PART_META = b"slurmctl.part"
"""The footer's key naming a part's inputs: {"inputs_sha256": digest, "inputs": [keys]}."""


class OutputConflict(SlurmctlError):
    """Committed outputs whose types cannot be merged into one schema (names field and tasks)."""


@dataclass(frozen=True)
class Part:
    key: str
    sha256: str
    rows: int


@dataclass(frozen=True)
class Final:
    files: list[OutputFile]
    url: str
    """Where the output is: its one file, or the folder of its files."""
    rows: int
    inputs: int
    levels: int
    partitioning: dict[str, Any] | None = None


def _inputs_digest(parts: list[Part]) -> str:
    return hashlib.sha256("\n".join(f"{p.key} {p.sha256}" for p in parts).encode()).hexdigest()


def _existing(backend: Backend, key: str, digest: str, work: Path) -> Part | None:
    """A part from an earlier run, if its bytes match their recorded sha256 and its footer
    names these inputs. The bytes are read and hashed: a part damaged after it was written is
    rebuilt, not trusted."""
    check = work / "verify.parquet"
    try:
        path = backend.objects.verify(key)  # read in place when on this host
        if path is None:
            sha256: str | None = backend.objects.get_file(key, check).sha256
            path = check
        else:
            info = backend.objects.head(key)
            sha256 = info.sha256 if info is not None else None
        footer = pq.ParquetFile(path)
        named: Any = json.loads((footer.schema_arrow.metadata or {}).get(PART_META, b"{}"))
        rows = footer.metadata.num_rows
    except ObjectNotFound:
        return None
    except (IntegrityError, pa.ArrowInvalid, ValueError) as e:
        log.warning("%s: %s: rebuilding it", key, e)
        return None
    finally:
        check.unlink(missing_ok=True)
    if not sha256 or not isinstance(named, dict) or named.get("inputs_sha256") != digest:
        return None
    return Part(key, sha256, rows)


def _named(schema: pa.Schema, parts: list[Part], digest: str) -> pa.Schema:
    """The part's schema with its inputs in the footer (what `_existing` compares)."""
    named = {"inputs_sha256": digest, "inputs": [p.key for p in parts]}
    return schema.with_metadata({**(schema.metadata or {}), PART_META: json.dumps(named)})


def _merge(
    backend: Backend,
    parts: list[Part],
    key: str,
    work: Path,
    options: dict[str, Any],
    target: JobSchema | None,
) -> Part:
    """Stream the inputs' row groups into one file under the job's schema (`_target`)."""
    local: list[Path] = []
    fetched: list[Path] = []
    for i, p in enumerate(parts):
        path = backend.objects.verify(p.key, p.sha256)  # read in place when on this host
        if path is None:
            path = work / f"in-{i}.parquet"
            backend.objects.get_file(p.key, path, sha256=p.sha256)
            fetched.append(path)
        local.append(path)
    schemas = [pq.read_schema(path) for path in local]
    schema = _target(target, schemas, [p.key for p in parts])
    named = _named(schema, parts, _inputs_digest(parts))
    out = work / "out.parquet"
    rows = 0
    # Small row groups (one per task) are gathered into large ones: the writer keeps metadata
    # per row group until it closes, which would grow with the number of tasks.
    pending: list[pa.Table] = []
    pending_rows = 0
    with pq.ParquetWriter(out, named, **options) as writer:
        for path in local:
            f = pq.ParquetFile(path)
            for i in range(f.num_row_groups):
                table = f.read_row_group(i)
                if table.num_rows:
                    pending.append(_conform(table, schema))
                    pending_rows += table.num_rows
                    rows += table.num_rows
                if pending_rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    pending, pending_rows = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
    expected = sum(p.rows for p in parts)
    if rows != expected:
        raise IntegrityError(f"{key}: merged {rows} rows, inputs record {expected}")
    info = backend.objects.put_file(key, out, move=True)
    assert info is not None
    for path in (*fetched, out):
        path.unlink(missing_ok=True)
    return Part(key, info.sha256, rows)


def _source(key: str) -> str:
    """The task (or aggregate part) an input key belongs to, for messages."""
    folders = key.split("/")
    return folders[-2] if "/results/" in key else key.rsplit("/", 2)[-2] + "/" + folders[-1]


def _target(target: JobSchema | None, schemas: list[pa.Schema], keys: list[str]) -> pa.Schema:
    """The schema of the merged part: the job's recorded one, after checking that every input
    fits it; without a record, the inputs' own schemas unified."""
    if target is None:
        try:
            return pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            target = _widened(schemas, keys)  # raises OutputConflict naming the inputs
    recorded = target.arrow()
    for schema, k in zip(schemas, keys, strict=True):
        for f in schema:
            column = target.columns.get(f.name)
            try:
                if column is None:
                    raise Conflict(f.name, None, f.type)
                if widen(column, f.type, f.name, frozen=True)[0] != column:
                    raise Conflict(f.name, column, f.type)
            except Conflict as c:
                known = (
                    f"the job's schema has {type_name(c.column)}"
                    if c.column
                    else "the job's schema has no such column"
                )
                who = target.who(c.path) if c.column else ""
                raise OutputConflict(
                    f"output field {c.path!r}: cannot merge {_source(k)} ({type_name(c.found)}): "
                    f"{known}{f' (fixed by {who})' if who else ''}"
                ) from None
    return recorded


def _widened(schemas: list[pa.Schema], keys: list[str]) -> JobSchema:
    """The inputs' schemas widened in order (output_schema.py's rule), for a job that recorded
    none; OutputConflict names the field, the input that conflicts and the one that fixed it."""
    target = JobSchema()
    for schema, k in zip(schemas, keys, strict=True):
        for f in schema:
            old = target.columns.get(f.name, pa.null())
            try:
                new, paths = widen(old, f.type, f.name)
            except Conflict as c:
                raise OutputConflict(
                    f"output field {c.path!r}: cannot merge {_source(k)} ({type_name(c.found)}) "
                    f"with {target.who(c.path)} ({type_name(c.column or pa.null())})"
                ) from None
            target.columns[f.name] = new
            target.fixed_by.update(dict.fromkeys(paths, _source(k)))
    return target


def recorded_schema(backend: Backend, job_id: str) -> JobSchema | None:
    doc = backend.state.get_versioned(job_id, OUTPUT_SCHEMA_DOC)
    return JobSchema.from_bytes(doc.value, doc.version) if doc else None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    # by index, looked up once: `table.column_names` builds a list and `table.column(name)`
    # searches it, per call, which made a part of 5,000 columns take 40 s instead of 0.5
    index = {name: i for i, name in enumerate(table.column_names)}
    columns = []
    for field in schema:
        i = index.get(field.name)
        if i is not None:
            columns.append(table.column(i).cast(field.type, safe=False))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def committed_outputs(backend: Backend, job_id: str) -> list[Part]:
    return [
        Part(t.output_key, t.output_sha256 or "", t.output_rows)
        for t in backend.state.iter_tasks(job_id, status=TaskStatus.SUCCESS)
        if t.output_key
    ]


def aggregate(
    backend: Backend,
    job_id: str,
    fan_in: int,
    scratch: Path | None = None,
    options: OutputOptions | None = None,
) -> Final:
    """Merge the committed outputs level by level; the last level writes the final output:
    one file, or (options.several_files) a dataset of several (dataset.py)."""
    layout = JobLayout(job_id)
    inputs = committed_outputs(backend, job_id)
    expected_rows = backend.state.counters(job_id).get(OUTPUT_ROWS, 0)
    if sum(p.rows for p in inputs) != expected_rows:
        raise IntegrityError(
            f"job {job_id}: committed outputs hold {sum(p.rows for p in inputs)} rows, "
            f"the counters {expected_rows}"
        )
    target = recorded_schema(backend, job_id)
    work = Path(tempfile.mkdtemp(prefix=f"slurmctl-agg-{job_id}-", dir=scratch))
    final_key = layout.final_output()
    try:
        level, parts = 1, inputs
        while len(parts) > fan_in:  # intermediate levels; the last merge writes the output
            keys = [layout.aggregate_part(level, i // fan_in) for i in range(0, len(parts), fan_in)]
            groups = [parts[i : i + fan_in] for i in range(0, len(parts), fan_in)]
            # pyarrow decodes and encodes without the GIL: a level's merges run side by side
            with ThreadPoolExecutor(max_workers=MERGE_THREADS) as pool:
                parts = list(
                    pool.map(
                        lambda g, k: _part(
                            backend, g, k, work / k.rsplit("/", 1)[1], PART_OPTIONS, target
                        ),
                        groups,
                        keys,
                    )
                )
            level += 1
        if options is not None and options.several_files and expected_rows:
            files, partitioning = _dataset(backend, job_id, parts, work, options, target)
            url = backend.objects.url(layout.final_manifest).removesuffix("manifest.json") + "data/"
        else:
            one = _part(backend, parts, final_key, work, {}, target)
            url = backend.objects.url(one.key)
            files = [OutputFile(one.key, url, one.sha256, one.rows)]
            partitioning = None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = sum(f.rows for f in files)
    if rows != expected_rows:
        raise IntegrityError(f"{url}: {rows} rows, the counters say {expected_rows}")
    return Final(files, url, rows, len(inputs), level, partitioning)


def _dataset(
    backend: Backend,
    job_id: str,
    parts: list[Part],
    work: Path,
    options: OutputOptions,
    target: JobSchema | None,
) -> tuple[list[OutputFile], dict[str, Any] | None]:
    """The last level's parts, verified, written as the final dataset's files."""
    local = []
    for i, p in enumerate(parts):
        path = backend.objects.verify(p.key, p.sha256)
        if path is None:
            path = work / f"last-{i}.parquet"
            backend.objects.get_file(p.key, path, sha256=p.sha256)
        local.append(path)
    schema = _target(target, [pq.read_schema(p) for p in local], [p.key for p in parts])
    return dataset.write(backend, job_id, local, schema, options, work, _conform)


def _part(
    backend: Backend,
    group: list[Part],
    key: str,
    work: Path,
    options: dict[str, Any],
    target: JobSchema | None,
) -> Part:
    """One merge of the hierarchy, skipped when an earlier run finished it (its footer)."""
    work.mkdir(parents=True, exist_ok=True)
    digest = _inputs_digest(group)
    part = _existing(backend, key, digest, work)
    if part is None:
        if group:
            part = _merge(backend, group, key, work, options, target)
        else:
            part = _empty(backend, key, work, digest)
    return part


def _empty(backend: Backend, key: str, work: Path, digest: str) -> Part:
    out = work / "empty.parquet"
    empty = pa.table({})
    pq.write_table(empty.replace_schema_metadata(_named(empty.schema, [], digest).metadata), out)
    info = backend.objects.put_file(key, out)
    assert info is not None
    return Part(key, info.sha256, 0)
