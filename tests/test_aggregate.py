"""The hierarchical merge: fan-in levels, restart skipping finished parts, corrupt parts rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from slurmctl.backends import open_local
from slurmctl.config import load_job_definition
from slurmctl.coordinator.submit import submit
from slurmctl.errors import IntegrityError
from slurmctl.finalize import aggregate as agg
from slurmctl.worker.runner import Worker
from tests.helpers import make_job


@pytest.fixture
def drained(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A job of 23 tasks whose workers have committed everything; not yet aggregated."""
    config = make_job(tmp_path / "job", 230, batch_size=10, workers=1)
    backend = open_local(tmp_path / "root")
    submit(backend, load_job_definition(config))
    assert Worker(backend, "t1", "w", tmp_path / "scratch", poll_s=0.05).run() == 0
    return backend


def test_levels_with_fan_in_3(drained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    final = agg.aggregate(drained, "t1", fan_in=3)
    # 23 outputs -> 8 -> 3 -> 1
    assert final.levels == 3 and final.inputs == 23
    assert final.rows == 230 - 1  # item 3 fails permanently
    table = pq.read_table(final.url)
    assert sorted(table.column("id").to_pylist(), key=int) == [str(i) for i in range(230) if i != 3]
    parts = sorted((tmp_path / "root/objects/jobs/t1/aggregate").rglob("*.parquet"))
    assert len(parts) == 8 + 3  # the last merge writes the final output itself


def test_rerun_skips_finished_parts(drained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agg.aggregate(drained, "t1", fan_in=4)
    level1 = tmp_path / "root/objects/jobs/t1/aggregate/L1"
    mtimes = {p: p.stat().st_mtime_ns for p in level1.glob("*.parquet")}
    again = agg.aggregate(drained, "t1", fan_in=4)
    assert again.rows == 229
    assert {p: p.stat().st_mtime_ns for p in level1.glob("*.parquet")} == mtimes


def test_corrupt_or_unmarked_part_is_rebuilt(drained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = agg.aggregate(drained, "t1", fan_in=4)
    level1 = tmp_path / "root/objects/jobs/t1/aggregate/L1"
    victim = level1 / "part-000001.parquet"
    victim.write_bytes(victim.read_bytes()[:100])  # truncated behind the store's back
    other = level1 / "part-000002.parquet"
    pq.write_table(pq.read_table(other).replace_schema_metadata(None), other)  # footer unnamed
    kept = {p: p.stat().st_mtime_ns for p in level1.glob("*.parquet") if p not in (victim, other)}
    again = agg.aggregate(drained, "t1", fan_in=4)
    assert again.rows == first.rows == 229
    assert pq.read_table(victim).num_rows > 0
    named = json.loads(pq.read_schema(other).metadata[agg.PART_META])
    assert pq.read_metadata(other).num_rows == 40 and len(named["inputs"]) == 4
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the others were not redone
    assert not list(level1.glob("*.done"))  # one object per merge


def test_corrupt_task_output_is_an_integrity_error(drained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    [out] = list((tmp_path / "root/objects/jobs/t1/results/task-000004").glob("*.parquet"))
    out.write_bytes(b"garbage")
    with pytest.raises(IntegrityError, match="does not match"):
        agg.aggregate(drained, "t1", fan_in=10)
