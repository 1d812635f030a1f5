"""Typed outputs through the real CLI: every key kept, one schema for the whole job (inferred and
widened, or pinned), values that cannot be stored failing their item only as `schema`, ids and
big integers exact, and the final Parquet read back by pyarrow and by DuckDB alike."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from slurmctl.backends import open_local
from slurmctl.backends.statestore import OUTPUT_SCHEMA_DOC
from slurmctl.output_schema import JobSchema
from tests.helpers import cli, failure_manifest, make_job, status

MIXED = """
import time

def process(item, ctx):
    i = int(item["id"])
    if i in (9, 10):
        time.sleep(0.06)  # a durable checkpoint write holds the 2**70 and the surrogate rows
    batch = i // 4
    row = {"id": item["id"]}
    if batch == 0:
        row["v"] = i                      # int64 first ...
    elif batch == 1:
        row["v"] = i + 0.5                # ... widened to float64 by the next batch
    elif batch == 2:
        row["v"] = None                   # a null-only batch
    else:
        row["v"] = i if i % 2 else i + 0.25   # int and float inside one batch
    if i % 4 == 2:
        row["email"] = "u%d@x" % i        # never in a batch's first row
    if i in (5, 13):
        row["s"] = {"a": i, "b": [str(i)]}    # a struct in some rows only
    row["tag"] = 97 if i == 7 else "t%d" % i  # an int among strings inside one batch
    row["big"] = 2**60 + i
    row["w"] = 5 if i == 12 else "w"     # an int where an earlier batch fixed string
    if i == 9:
        row["huge"] = 2**70
    if i == 10:
        row["echo"] = item["text"]        # a lone surrogate from an accepted input line
    return row
"""

FIXED = (
    MIXED.replace('97 if i == 7 else "t%d" % i', '"t%d" % i')
    .replace("5 if i == 12 else", "'5' if i == 12 else")
    .replace('item["text"]', 'ascii(item["text"])')
    .replace("2**70", "2**62")
)

EXPECTED_FAILURES = {
    "7": "output field 'tag': column is string (fixed by task-000000), got int 97",
    "9": "output field 'huge': got int 1180591620717411303424, which does not fit in int64",
    "10": "output field 'echo': got str '\\ud800', which is not valid Unicode text "
    "(a lone surrogate)",
    "12": "output field 'w': column is string (fixed by task-000000), got int 5",
}


def _job(
    tmp_path: Path, handler: str, extra: str = "", lines: list[dict[str, Any]] | None = None
) -> Path:
    config = make_job(tmp_path / "job", 16, handler=handler, batch_size=4, workers=1, extra=extra)
    if lines is not None:
        (tmp_path / "job" / "input.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    else:  # item 10 carries a lone surrogate: valid JSON, accepted by the scan
        text = "".join(
            (
                json.dumps({"id": str(i), "text": "\ud800"})
                if i == 10
                else json.dumps({"id": str(i)})
            )
            + "\n"
            for i in range(16)
        )
        (tmp_path / "job" / "input.jsonl").write_text(text)
    return config


def _failures(root: Path, phase: str = "initial") -> dict[str, tuple[str, str]]:
    doc = failure_manifest(root / "objects" / "jobs" / "t1", phase)
    return {i["item_id"]: (i["error_type"], i["message"]) for i in doc["items"]}


def _final(root: Path) -> pa.Table:
    [out] = status(root, "t1")["outputs"]
    path = out["path"]
    table = pq.read_table(path)
    # a second reader: the same rows, the same columns, the same types
    con = duckdb.connect()
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
    duck_types = {name: kind for name, kind, *_ in described}
    assert list(duck_types) == table.column_names
    arrow_to_duck = {
        "string": "VARCHAR",
        "int64": "BIGINT",
        "double": "DOUBLE",
        "bool": "BOOLEAN",
        "timestamp[us, tz=UTC]": "TIMESTAMP WITH TIME ZONE",
    }
    for field in table.schema:
        expected = arrow_to_duck.get(str(field.type))
        if expected is not None:
            assert duck_types[field.name] == expected, field
    count = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()
    assert count is not None and count[0] == table.num_rows == out["rows"]
    ids = con.execute(f"SELECT id FROM read_parquet('{path}') ORDER BY id").fetchall()
    assert [r[0] for r in ids] == sorted(table.column("id").to_pylist())
    return table


def _rows_by_id(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in table.to_pylist()}


def test_mixed_types_widen_keep_every_key_and_fail_only_the_bad_items(tmp_path: Path) -> None:
    config = _job(tmp_path, MIXED, extra="checkpoint_every: 1\n")
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert "Traceback" not in run.stderr
    assert run.returncode == 0, run.stderr
    s = status(root, "t1")
    assert s["status"] == "COMPLETED"
    assert (s["items"]["succeeded"], s["items"]["failed_permanent"]) == (12, 4)
    assert _failures(root) == {k: ("schema", m) for k, m in EXPECTED_FAILURES.items()}
    table = _final(root)
    assert table.schema == pa.schema(
        [
            ("id", pa.string()),
            ("v", pa.float64()),
            ("tag", pa.string()),
            ("big", pa.int64()),
            ("w", pa.string()),
            ("email", pa.string()),
            ("s", pa.struct([("a", pa.int64()), ("b", pa.list_(pa.string()))])),
        ]
    )
    rows = _rows_by_id(table)
    assert sorted(rows, key=int) == [str(i) for i in range(16) if str(i) not in EXPECTED_FAILURES]
    assert [rows[k]["v"] for k in ("0", "3", "4", "8", "11", "13", "14")] == [
        0.0,
        3.0,
        4.5,
        None,
        None,
        13.0,
        14.25,
    ]
    assert [rows[k]["email"] for k in ("2", "6", "14", "0")] == ["u2@x", "u6@x", "u14@x", None]
    assert rows["5"]["s"] == {"a": 5, "b": ["5"]} and rows["13"]["s"] == {"a": 13, "b": ["13"]}
    assert rows["4"]["s"] is None
    assert all(rows[k]["big"] == 2**60 + int(k) for k in rows)  # 2^60 + i exactly, no float
    duck = duckdb.connect().execute(
        f"SELECT big FROM read_parquet('{s['outputs'][0]['path']}') WHERE id = '3'"
    )
    assert duck.fetchall() == [(2**60 + 3,)]
    # analyze-errors groups them under the new type, with no traceback anywhere
    errors = cli(root, "analyze-errors", "t1", "--json")
    assert errors.returncode == 0 and "Traceback" not in errors.stderr
    assert json.loads(errors.stdout)["by_type"]["schema"]["count"] == 4

    # the handler is fixed: `retry --errors=schema` re-runs exactly those four items
    (tmp_path / "job" / "handler.py").write_text(textwrap.dedent(FIXED))
    again = cli(root, "retry", "--job-id", "t1", "--errors=schema", "--no-progress")
    assert "Traceback" not in again.stderr
    assert again.returncode == 0, again.stderr
    assert "retrying 4 items (4 schema)" in again.stdout
    s = status(root, "t1")
    assert s["status"] == "COMPLETED" and s["items"]["failed_permanent"] == 0
    table = _final(root)
    rows = _rows_by_id(table)
    assert sorted(rows, key=int) == [str(i) for i in range(16)]
    assert rows["7"]["tag"] == "t7" and rows["12"]["w"] == "5" and rows["9"]["huge"] == 2**62
    assert rows["10"]["echo"] == "'\\ud800'" and rows["0"]["echo"] is None


def test_ids_are_text_or_integers_and_big_integers_stay_exact(tmp_path: Path) -> None:
    big = [2**64 + k for k in range(1, 6)]
    lines: list[dict[str, Any]] = [
        {"id": "a"},
        {"id": 1},  # a numeric id among string ids
        {"id": "b"},
        {"id": "1"},  # the same id as 1: a duplicate
        {"id": 1.5},
        {"id": True},
        *({"id": b} for b in big),  # distinct, not duplicates of 1.8446744073709552e+19
        {"id": 2**60, "n": 2**60 + 1},
    ]
    handler = """
def process(item, ctx):
    return {"id": item["id"], "kind": type(item["id"]).__name__, "n": item.get("n")}
"""
    config = _job(tmp_path, handler, extra="max_quarantine_share: 0.5\n", lines=lines)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert "Traceback" not in run.stderr
    assert run.returncode == 0, run.stderr
    quarantine = (root / "objects" / "jobs" / "t1" / "quarantine.jsonl").read_text()
    assert [(q["line"], q["reason"]) for q in map(json.loads, quarantine.splitlines())] == [
        (4, "duplicate id: '1' first seen on line 2"),
        (5, "bad id: 'id' is a float (1.5); ids are strings or integers"),
        (6, "bad id: 'id' is true; ids are strings or integers"),
    ]
    table = _final(root)
    assert table.schema.field("id").type == pa.string()
    rows = _rows_by_id(table)
    assert sorted(rows) == sorted(["a", "1", "b", *(str(b) for b in big), str(2**60)])
    assert rows["1"]["kind"] == "int" and rows["a"]["kind"] == "str"
    assert rows[str(2**64 + 3)]["kind"] == "int"  # the handler saw the exact integer
    assert rows[str(2**60)]["n"] == 2**60 + 1 and table.schema.field("n").type == pa.int64()


def test_pinned_schema_fixes_types_and_fails_a_mismatching_value(tmp_path: Path) -> None:
    handler = """
def process(item, ctx):
    i = int(item["id"])
    return {
        "id": i,
        "tag": 97 if i == 3 else "t%d" % i,
        "n": i,
        "meta": {"k": [i, None]} if i % 2 else "plain",
    }
"""
    extra = "output:\n  schema: {id: int64, tag: string, n: float64, meta: json}\n"
    config = make_job(tmp_path / "job", 8, handler=handler, batch_size=4, workers=1, extra=extra)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert "Traceback" not in run.stderr
    assert run.returncode == 0, run.stderr
    assert _failures(root) == {
        "3": ("schema", "output field 'tag': column is string (fixed by output.schema), got int 97")
    }
    [out] = status(root, "t1")["outputs"]
    table = pq.read_table(out["path"])
    assert table.schema == pa.schema(
        [("id", pa.int64()), ("tag", pa.string()), ("n", pa.float64()), ("meta", pa.string())]
    )
    assert table.to_pylist()[:2] == [
        {"id": 0, "tag": "t0", "n": 0.0, "meta": '"plain"'},
        {"id": 1, "tag": "t1", "n": 1.0, "meta": '{"k":[1,null]}'},
    ]
    assert table.column("id").to_pylist() == [0, 1, 2, 4, 5, 6, 7]
    con = duckdb.connect()
    got = con.execute(
        f"SELECT count(*), typeof(any_value(id)), typeof(any_value(n)) "
        f"FROM read_parquet('{out['path']}')"
    ).fetchall()
    assert got == [(7, "BIGINT", "DOUBLE")]


def test_pinned_schema_errors_name_file_line_and_field(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job", 4, extra="output:\n  schema:\n    id: string\n    tag: strin\n"
    )
    run = cli(tmp_path / "root", "submit", str(config), "--dry-run")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == (
        f"error: {config}:13: output.schema.tag: expected one of string, int64, float64, bool, "
        "timestamp, json, list<T>, struct<name: T, ...>, found 'strin'"
    )


def test_handler_contract_violations_are_permanent_validation_failures(tmp_path: Path) -> None:
    handler = """
async def later():
    return {}

def process(item, ctx):
    i = int(item["id"])
    if i == 1:
        return "a string"
    if i == 2:
        return later()  # a coroutine from a sync process
    if i == 3:
        return [{"id": "3"}, 4]
    return {"id": item["id"]}
"""
    config = make_job(tmp_path / "job", 6, handler=handler, batch_size=3, workers=1)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert "Traceback" not in run.stderr and "never awaited" not in run.stderr
    assert run.returncode == 0, run.stderr
    assert _failures(root) == {
        "1": (
            "validation",
            "ContractViolation: handler returned str 'a string', expected a dict, a list of "
            "dicts or None",
        ),
        "2": (
            "validation",
            "ContractViolation: handler returned a coroutine (coroutine): process must be a "
            "plain function returning a dict, a list of dicts or None, not async",
        ),
        "3": (
            "validation",
            "ContractViolation: handler returned a list holding int 4, expected dicts only",
        ),
    }
    s = status(root, "t1")
    assert s["items"]["failed_permanent"] == 3 and s["items"]["succeeded"] == 3
    assert not (root / "objects" / "jobs" / "t1" / "failures" / "retry_1.json").exists()


def test_unmergeable_outputs_fail_the_job_in_one_line_and_aggregate_carries_on(
    tmp_path: Path,
) -> None:
    handler = """
from slurmctl import PermanentError

def process(item, ctx):
    if item["id"] == "3":
        raise PermanentError("broken")
    return {"id": item["id"], "v": int(item["id"])}
"""
    config = make_job(tmp_path / "job", 8, handler=handler, batch_size=4, workers=1)
    root = tmp_path / "root"
    assert cli(root, "submit", str(config), "--no-progress").returncode == 0
    backend = open_local(root)
    try:  # the recorded schema damaged by hand: it claims `v` holds strings
        doc = backend.state.get_versioned("t1", OUTPUT_SCHEMA_DOC)
        assert doc is not None
        good = JobSchema.from_bytes(doc.value, doc.version)
        assert good.columns == {"id": pa.string(), "v": pa.int64()}
        bad = JobSchema({**good.columns, "v": pa.string()}, {**good.fixed_by, "v": "hand"})
        assert backend.state.put_versioned("t1", OUTPUT_SCHEMA_DOC, bad.to_bytes(), doc.version)
        run = cli(root, "retry", "--job-id", "t1", "--errors=validation", "--no-progress")
        assert "Traceback" not in run.stderr
        assert run.returncode == 1
        reason = (
            "output field 'v': cannot merge task-000000 (int64): the job's schema has string "
            "(fixed by hand)"
        )
        assert reason in run.stderr and len(run.stderr.strip().splitlines()) <= 2, run.stderr
        s = status(root, "t1")
        assert s["status"] == "FAILED" and s["error"] == reason
        # the fix: the record put right; `aggregate` carries on from there
        fixed = JobSchema(good.columns, good.fixed_by)
        assert backend.state.put_versioned(
            "t1", OUTPUT_SCHEMA_DOC, fixed.to_bytes(), doc.version + 1
        )
    finally:
        backend.close()
    again = cli(root, "aggregate", "t1")
    assert "Traceback" not in again.stderr
    assert again.returncode == 0, again.stderr
    s = status(root, "t1")
    assert s["status"] == "COMPLETED" and s["outputs"][0]["rows"] == 7
    assert _final(root).schema.field("v").type == pa.int64()


def test_wide_rows_and_big_strings_are_kept(tmp_path: Path) -> None:
    handler = """
def process(item, ctx):
    i = int(item["id"])
    if i == 1:  # never the first row: 5,000 columns
        return {"id": item["id"], **{"c%d" % k: k for k in range(5000)}}
    if i == 2:
        return {"id": item["id"], "blob": "x" * (10 << 20)}  # 10 MB
    return {"id": item["id"]}
"""
    config = make_job(tmp_path / "job", 4, handler=handler, batch_size=4, workers=1)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert "Traceback" not in run.stderr
    assert run.returncode == 0, run.stderr
    table = _final(root)
    assert table.num_columns == 1 + 5000 + 1 and table.num_rows == 4
    rows = _rows_by_id(table)
    assert rows["1"]["c4999"] == 4999 and rows["0"]["c0"] is None
    assert len(rows["2"]["blob"]) == 10 << 20 and rows["1"]["blob"] is None


def test_workers_widening_the_schema_at_once_lose_no_column(tmp_path: Path) -> None:
    """Four workers record the schema concurrently (compare-and-swap): every column and every
    widening of every task ends in the one schema of the output."""
    handler = """
def process(item, ctx):
    i = int(item["id"])
    batch = i // 2
    value = batch if batch < 8 else batch + 0.5   # int64 first, float64 later
    return {"id": item["id"], "c%d" % (batch % 6): value, "x": i}
"""
    config = make_job(tmp_path / "job", 32, handler=handler, batch_size=2, workers=4)
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert "Traceback" not in run.stderr
    assert run.returncode == 0, run.stderr
    table = _final(root)
    assert {f.name: f.type for f in table.schema} == {
        "id": pa.string(),
        "x": pa.int64(),
        **{f"c{k}": pa.float64() for k in range(6)},
    }
    rows = _rows_by_id(table)
    assert len(rows) == 32
    for i in range(32):
        batch = i // 2
        assert rows[str(i)][f"c{batch % 6}"] == (batch if batch < 8 else batch + 0.5)
        assert rows[str(i)]["x"] == i


def test_keys_missing_from_a_checkpoint_chunks_first_row_survive_it(tmp_path: Path) -> None:
    """Rows through durable checkpoint chunks keep every key, as rows from memory do."""
    handler = """
import time

def process(item, ctx):
    time.sleep(0.02)
    i = int(item["id"])
    row = {"id": item["id"], "n": i}
    if i % 3 == 2:
        row["email"] = "u%d@x" % i  # never the first row of a chunk of three
    return row
"""
    config = make_job(
        tmp_path / "job",
        12,
        handler=handler,
        batch_size=12,
        workers=1,
        extra="checkpoint_every: 3\n",
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert "Traceback" not in run.stderr
    assert run.returncode == 0, run.stderr
    rows = _rows_by_id(_final(root))
    assert {k: r["email"] for k, r in rows.items() if r["email"]} == {
        str(i): f"u{i}@x" for i in range(12) if i % 3 == 2
    }
