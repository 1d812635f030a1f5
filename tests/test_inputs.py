"""Input formats (README "Input formats"): JSON Lines, CSV and Parquet, plain, gzip or zstd, one
file or a folder, with the same quarantine and unique-id check; typed CSV columns; the user's
mistakes as one line with exit code 2. The scanner's matrix runs in-process (fast); jobs run
through the real CLI."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmctl.coordinator.fingerprint import HashingSource, full_digest
from slurmctl.coordinator.inputs import Input, local_files
from slurmctl.coordinator.scan import InputScanner
from slurmctl.errors import InputError
from tests.helpers import cli, make_job, status, stored_batches
from tests.inputs_data import COUNT, SUFFIX, encode, expected_quarantine, records

EXT = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
HANDLER = """
def process(item, ctx):
    return {"id": item["id"], "double": int(item["n"]) * 2, "kind": type(item["n"]).__name__}
"""


def scan(
    source: Input, tmp_path: Path, id_field: str = "id"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], InputScanner]:
    quarantine = io.BytesIO()
    scanner = InputScanner(source, id_field, tmp_path / "work", quarantine, child_index=False)
    items = [json.loads(line) for line in scanner.items()]
    return items, [json.loads(x) for x in quarantine.getvalue().splitlines()], scanner


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_format_and_compression_scans_alike(tmp_path: Path, fmt: str, codec: str) -> None:
    path = tmp_path / f"in{EXT[fmt]}{SUFFIX[codec]}"
    path.write_bytes(encode(fmt, records(), codec))
    source = Input(str(path), local_files(path))
    hashing = HashingSource(source)
    items, quarantined, scanner = scan(hashing, tmp_path)  # type: ignore[arg-type]
    assert [i["id"] for i in items] == [str(i) for i in range(COUNT)]
    assert [str(i["n"]) for i in items] == [str(i) for i in range(COUNT)]
    unit = "row" if fmt == "parquet" else "line"
    assert [(q[unit], q["reason"]) for q in quarantined] == expected_quarantine(fmt)
    assert scanner.stats.lines == COUNT + 2 and scanner.stats.quarantined == 2
    # the digest the scan computed is the one a resume recomputes, over the raw (compressed) bytes
    assert hashing.digest.hexdigest() == full_digest(source)
    assert source.size() == path.stat().st_size


def test_parquet_of_several_row_groups_keeps_row_numbers_and_types(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"id": i, "big": 2**63 - 1 - i, "x": i / 4, "tags": ["a", str(i)], "at": None}
        for i in range(1000)
    ]
    rows[250]["id"] = None  # row 251, in the third group of 100
    rows[777]["id"] = 5  # row 778: a duplicate of row 6
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)
    assert pq.ParquetFile(path).num_row_groups == 10
    items, quarantined, _ = scan(Input(str(path), local_files(path)), tmp_path)
    assert len(items) == 998 and items[0] == {
        "id": 0,
        "big": 2**63 - 1,
        "x": 0.0,
        "tags": ["a", "0"],
        "at": None,
    }
    assert [i["id"] for i in items] == [i for i in range(1000) if i not in (250, 777)]
    assert [(q["row"], q["reason"]) for q in quarantined] == [
        (251, "missing id: no usable 'id' field"),
        (778, "duplicate id: '5' first seen on row 6"),
    ]


def test_typed_csv_columns_convert_and_quarantine_bad_cells(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        "id,n,x,ok,at,meta,note\n"
        '123456789012345678901234567890,1,1.5,true,2024-01-02T03:04:05Z,"{""k"": [1]}",hi\n'
        "b,,,no,2024-01-02,null,\n"
        "c,x,1,yes,,,\n"  # line 4: n not an integer
        "d,1,1,maybe,,,\n"  # line 5: ok not a boolean
        "e,1,1,1,yesterday,,\n"  # line 6: at not a timestamp
        "f,1,1,1,,{oops,\n"  # line 7: meta not JSON
        "g,99999999999999999999,1,1,,,\n"  # line 8: beyond int64
        'h,1,1,1,,,"two\nlines"\n'  # lines 9-10: a value with a newline
        "i,1\n"  # row 10: too few fields
        "j,1,1,1,,123456789012345678901234567890,\n"  # row 11: a JSON integer beyond 64 bits
        ",1,1,1,,123456789012345678901234567890,\n"  # row 12: no id
    )
    columns = {"n": "int64", "x": "float64", "ok": "bool", "at": "timestamp", "meta": "json"}
    items, quarantined, _ = scan(Input(str(path), local_files(path), columns=columns), tmp_path)
    assert items == [
        {
            "id": "123456789012345678901234567890",
            "n": 1,
            "x": 1.5,
            "ok": True,
            "at": "2024-01-02T03:04:05+00:00",
            "meta": {"k": [1]},
            "note": "hi",
        },
        {
            "id": "b",
            "n": None,
            "x": None,
            "ok": False,
            "at": "2024-01-02T00:00:00+00:00",
            "meta": None,
            "note": "",
        },
        {"id": "h", "n": 1, "x": 1.0, "ok": True, "at": None, "meta": None, "note": "two\nlines"},
        {
            "id": "j",
            "n": 1,
            "x": 1.0,
            "ok": True,
            "at": None,
            "note": "",
            "meta": 123456789012345678901234567890,
        },
    ]
    assert [(q["line"], q["reason"]) for q in quarantined] == [
        (4, "bad value: 'n' expected int64, found 'x'"),
        (5, "bad value: 'ok' expected bool, found 'maybe'"),
        (6, "bad value: 'at' expected timestamp, found 'yesterday'"),
        (7, "bad value: 'meta' expected json, found '{oops'"),
        (8, "bad value: 'n' expected int64, found '99999999999999999999'"),
        (10, "bad row: expected 7 fields, found 2"),
        (12, "missing id: no usable 'id' field"),
    ]
    assert quarantined[-2]["text"] == "i,1"
    assert "123456789012345678901234567890" in quarantined[-1]["text"]


def test_a_folder_is_read_in_sorted_order_with_files_named(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "2025" / "b").mkdir(parents=True)
    (folder / "a.jsonl.gz").write_bytes(
        encode("jsonl", [{"id": "a1", "n": 1}, {"id": "a2", "n": 2}], "gzip")
    )
    (folder / "2025" / "b" / "c.csv.zst").write_bytes(
        encode("csv", [{"id": "c1", "n": 3}, {"id": "a2", "n": 4}], "zstd")
    )
    (folder / "2025" / "a.parquet").write_bytes(encode("parquet", [{"id": "p1", "n": 5}]))
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.crc").write_text("x")
    source = Input(str(folder), local_files(folder))
    assert [Path(f.name).name for f in source.files] == ["a.parquet", "c.csv.zst", "a.jsonl.gz"]
    items, quarantined, scanner = scan(source, tmp_path)
    assert [i["id"] for i in items] == ["p1", "c1", "a2", "a1"]
    assert quarantined == [
        {
            "file": str(folder / "a.jsonl.gz"),
            "line": 2,
            "reason": f"duplicate id: 'a2' first seen on line 3 of {folder}/2025/b/c.csv.zst",
            "text": '{"id": "a2", "n": 2}',
        }
    ]
    assert scanner.stats.lines == 5
    assert source.stamp() is not None and source.stamp().startswith("files:3:")  # type: ignore[union-attr]


def test_unknown_extensions_and_columns_only_for_csv_are_refused(tmp_path: Path) -> None:
    odd = tmp_path / "ids.txt"
    odd.write_text("id\n1\n")
    with pytest.raises(InputError) as e:
        Input(str(odd), local_files(odd))
    assert str(e.value) == (
        f"{odd}: cannot tell the input format from the file's name: expected .jsonl, .ndjson, "
        ".json, .csv or .parquet (optionally + .gz or .zst), or set input_format (jsonl, csv or "
        "parquet)"
    )
    items, _, _ = scan(Input(str(odd), local_files(odd), "csv"), tmp_path)
    assert items == [{"id": "1"}]
    pq_path = tmp_path / "in.parquet"
    pq_path.write_bytes(encode("parquet", [{"id": "1", "n": 1}]))
    with pytest.raises(
        InputError, match="input_columns: only for CSV input, this input is parquet"
    ):
        Input(str(pq_path), local_files(pq_path), columns={"n": "int64"})


def _job(tmp_path: Path, name: str, data: bytes, extra: str = "", job_id: str = "in1") -> Path:
    config = make_job(
        tmp_path / "job", 0, handler=HANDLER, job_id=job_id, workers=2, batch_size=40, extra=extra
    )
    (config.parent / name).write_bytes(data)
    config.write_text(config.read_text().replace("input: input.jsonl", f"input: {name}"))
    return config


def _output(root: Path, job_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for o in status(root, job_id)["outputs"]:
        rows += pq.read_table(o["path"]).to_pylist()
    return rows


def _quarantine(root: Path, job_id: str) -> list[dict[str, Any]]:
    text = (root / "objects" / "jobs" / job_id / "quarantine.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    ("fmt", "codec", "extra"),
    [
        ("csv", "gzip", "input_columns: {n: int64}\n"),
        ("parquet", "none", ""),
        ("jsonl", "zstd", ""),
    ],
)
def test_a_job_runs_from_each_format(tmp_path: Path, fmt: str, codec: str, extra: str) -> None:
    name = f"in{EXT[fmt]}{SUFFIX[codec]}"
    config = _job(
        tmp_path, name, encode(fmt, records(), codec), extra + "max_quarantine_share: 0.1\n"
    )
    root = tmp_path / "root"
    run = cli(root, "submit", "--no-progress", str(config))
    assert run.returncode == 0, run.stderr
    assert (
        "COMPLETED: 300 succeeded, 0 failed permanently, 0 failed transiently, 2 quar" in run.stdout
    )
    rows = sorted(_output(root, "in1"), key=lambda r: int(r["id"]))
    assert [r["id"] for r in rows] == [str(i) for i in range(COUNT)]
    assert [r["double"] for r in rows] == [2 * i for i in range(COUNT)]
    assert {r["kind"] for r in rows} == {"int"}  # n arrives typed: declared, Parquet or JSON
    unit = "row" if fmt == "parquet" else "line"
    got = [(q[unit], q["reason"]) for q in _quarantine(root, "in1")]
    assert got == expected_quarantine(fmt)
    again = cli(root, "submit", "--no-progress", str(config))
    assert again.returncode == 0, again.stderr
    assert (
        "COMPLETED" in again.stdout
        and json.loads(cli(root, "list", "--json").stdout)[0]["job_id"] == "in1"
    )


def test_a_changed_csv_of_the_same_size_is_refused_on_resubmit(tmp_path: Path) -> None:
    config = _job(tmp_path, "in.csv", b"id,n\n1,10\n2,20\n")
    root = tmp_path / "root"
    assert cli(root, "submit", "--no-progress", str(config)).returncode == 0
    path = config.parent / "in.csv"
    path.write_bytes(b"id,n\n1,10\n2,21\n")  # the same size, another value
    os.utime(path, ns=(1, 1))
    again = cli(root, "submit", "--no-progress", str(config))
    assert again.returncode == 2, again.stdout
    assert again.stderr.startswith(f"error: job in1 exists with input {path} of sha256 ")
    assert again.stderr.endswith("(same size); use another job_id\n")


def test_a_folder_that_gains_a_file_is_refused_on_resubmit(tmp_path: Path) -> None:
    config = _job(tmp_path, "x.csv", b"id,n\n1,1\n")
    folder = config.parent / "in"
    folder.mkdir()
    (config.parent / "x.csv").rename(folder / "a.csv")
    config.write_text(config.read_text().replace("input: x.csv", "input: in"))
    root = tmp_path / "root"
    run = cli(root, "submit", "--no-progress", str(config))
    assert run.returncode == 0, run.stderr
    (folder / "b.parquet").write_bytes(encode("parquet", [{"id": "2", "n": 2}]))
    again = cli(root, "submit", "--no-progress", str(config))
    assert again.returncode == 2
    size = (folder / "a.csv").stat().st_size
    total = size + (folder / "b.parquet").stat().st_size
    assert again.stderr == (
        f"error: job in1 exists with input {folder} of {size} bytes, it now has {total} bytes; "
        "use another job_id\n"
    )


@pytest.mark.parametrize(
    ("name", "data", "extra", "message"),
    [
        (
            "in.csv",
            b"id,n\n\xff\xfe,1\n",
            "",
            "{path}: cannot read input: In CSV column #0: Row #2: CSV conversion error to string: "
            "invalid UTF8 data",
        ),
        (
            "in.csv",
            b"id,n\n,1\n,2\n",
            "",
            "{path}: no valid item in 2 lines (2 missing id); see the id_field 'id' and the input "
            "format (a header line, then one row per line)",
        ),
        (
            "in.parquet",
            encode("parquet", [{"id": None, "n": 1}, {"id": "2", "n": 2}]),
            "",
            "{path}: 1 bad rows of 2 (50.0%, 1 missing id) exceed max_quarantine_share 0.01; fix "
            "the input or raise it",
        ),
        (
            "in.csv",
            b"user,n\n1,2\n",
            "",
            "{path}: line 1: no column 'id' (the id_field) in the header (user, n)",
        ),
        (
            "in.parquet",
            b"",
            "",
            "{path}: no column 'id' (the id_field) in the Parquet schema (ix, n)",
        ),
        (
            "in.csv",
            b"id,n\n1,2\n",
            "input_columns: {score: float64}\n",
            "{path}: input_columns: no column 'score' in the header (id, n)",
        ),
        ("in.csv", b"id,n,n\n1,2,3\n", "", "{path}: line 1: the header names column 'n' twice"),
        (
            "in.jsonl.gz",
            b"\x1f\x8b\x08\x00garbage-garbage",
            "",
            "{path}: cannot read input: corrupt gzip data",
        ),
        ("in.data", b"id\n1\n", "", "{path}: cannot tell the input format from the file's name"),
        ("in.parquet", b"not parquet at all", "", "{path}: not a Parquet file ("),
    ],
    ids=[
        "csv-not-utf8",
        "csv-all-bad",
        "parquet-too-many-bad",
        "csv-no-id",
        "parquet-no-id",
        "columns-absent",
        "header-twice",
        "corrupt-gzip",
        "unknown-format",
        "not-parquet",
    ],
)
def test_input_mistakes_are_one_line_exit_2_and_write_nothing(
    tmp_path: Path, name: str, data: bytes, extra: str, message: str
) -> None:
    config = _job(tmp_path, name, data, extra)
    if "(ix, n)" in message:
        table = pa.table({"ix": ["1"], "n": [1]})
        pq.write_table(table, config.parent / name)
    root = tmp_path / "root"
    run = cli(root, "submit", "--no-progress", str(config))
    assert run.returncode == 2, run.stdout + run.stderr
    path = config.parent / name
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + message.format(path=path)), lines
    assert json.loads(cli(root, "list", "--json").stdout) == []


def test_input_columns_mistakes_are_definition_errors(tmp_path: Path) -> None:
    config = _job(tmp_path, "in.csv", b"id,n\n1,2\n", "input_columns: {n: int32}\n")
    run = cli(tmp_path / "root", "submit", str(config))
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {config}:")
    assert "input_columns.n: expected one of string, int64, float64, bool, timestamp, json" in (
        run.stderr
    )
    config.write_text(config.read_text().replace("{n: int32}", "{id: float64}"))
    run = cli(tmp_path / "root", "submit", str(config))
    assert run.returncode == 2
    assert "input_columns.id: expected string or int64: the id column holds ids" in run.stderr


def test_try_and_dry_run_read_a_csv(tmp_path: Path) -> None:
    config = _job(
        tmp_path,
        "in.txt",
        encode("csv", records()),
        "input_format: csv\nmax_quarantine_share: 0.1\n",
    )
    root = tmp_path / "root"
    dry = cli(root, "submit", "--dry-run", str(config))
    assert dry.returncode == 0, dry.stderr
    assert "items         300" in dry.stdout and "quarantined   2" in dry.stdout
    tried = cli(root, "try", str(config), "--items", "2")
    assert tried.returncode == 0, tried.stderr
    assert tried.stdout.splitlines()[:2] == [
        '0\tok\t{"id": "0", "double": 0, "kind": "str"}',
        '1\tok\t{"id": "1", "double": 2, "kind": "str"}',
    ]


@pytest.mark.parametrize(("fmt", "codec"), [("parquet", "none"), ("csv", "gzip")])
def test_a_killed_submit_resumes_from_the_same_rows(tmp_path: Path, fmt: str, codec: str) -> None:
    rows = [{"id": str(i), "n": i} for i in range(1000)]
    name = f"in{EXT[fmt]}{SUFFIX[codec]}"
    data = (
        encode(fmt, rows, codec, row_group_size=100)
        if fmt == "parquet"
        else encode(fmt, rows, codec)
    )
    config = _job(tmp_path, name, data)
    config.write_text(config.read_text().replace("batch_size: 40", "batch_size: 10"))
    root = tmp_path / "root"
    kill = {"SLURMCTL_KILL_AT": "submit.after_batch@30"}
    killed = cli(root, "submit", "--no-progress", str(config), env=kill)
    assert killed.returncode == -signal.SIGKILL
    batches = root / "objects/jobs/in1/batches"
    assert len(stored_batches(batches)) == 31  # the pack holding the 30th: batches 15 to 30
    path = config.parent / name
    changed = encode(fmt, rows[:-1], codec)
    path.write_bytes(changed)
    refused = cli(root, "resume", "in1", "--no-progress")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: job in1 exists with input {path} of {len(data)} bytes, it now has "
        f"{len(changed)} bytes; use another job_id\n"
    )
    path.write_bytes(data)  # restored (another mtime): the batches cut again are compared
    resumed = cli(root, "resume", "in1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "COMPLETED: 1000 succeeded" in resumed.stdout
    assert sorted(int(r["id"]) for r in _output(root, "in1")) == list(range(1000))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(max_size=6)),
            st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            st.one_of(st.none(), st.booleans()),
            st.integers(0, 2**64 - 1),
        ),
        max_size=20,
    )
)
def test_a_batch_written_at_once_is_byte_for_byte_the_rows_written_one_by_one(
    rows: list[tuple[str | None, int | None, bool | None, int]],
) -> None:
    """The fast path (pyarrow kernels, tabular._whole) writes exactly what orjson writes row by
    row, so a resume that took the other path still finds the very same batches."""
    from slurmctl.coordinator import tabular

    schema = pa.schema(
        [("id", pa.string()), ('n "x"', pa.int64()), ("ok", pa.bool_()), ("u", pa.uint64())]
    )
    batch = pa.RecordBatch.from_pylist(
        [dict(zip(schema.names, r, strict=True)) for r in rows], schema=schema
    )
    by_row = list(tabular._emit(batch.to_pylist(), range(1, len(rows) + 1), "id"))
    whole = tabular._whole(batch, "id")
    usable = all(r[0] and r[0].isascii() for r in rows)
    escaped = any(c in '"\\' or ord(c) < 32 for r in rows for c in r[0] or "")
    assert (whole is None) == (not usable or escaped)
    if whole is None:
        return
    assert [(key, line) for _, key, line, _ in by_row] == list(zip(*whole, strict=True))
    assert all(reason is None for *_, reason in by_row)


def test_try_reads_the_first_rows_of_a_parquet_folder(tmp_path: Path) -> None:
    config = _job(tmp_path, "x.csv", b"")
    folder = config.parent / "parts"
    folder.mkdir()
    (config.parent / "x.csv").unlink()
    (folder / "a.parquet").write_bytes(encode("parquet", [{"id": "a", "n": 1}]))
    (folder / "b.parquet").write_bytes(
        encode("parquet", [{"id": f"b{i}", "n": i} for i in range(50_000)], row_group_size=1000)
    )
    config.write_text(config.read_text().replace("input: x.csv", "input: parts"))
    tried = cli(tmp_path / "root", "try", str(config), "--items", "3")
    assert tried.returncode == 0, tried.stderr
    assert tried.stdout.splitlines()[:3] == [
        'a\tok\t{"id": "a", "double": 2, "kind": "int"}',
        'b0\tok\t{"id": "b0", "double": 0, "kind": "int"}',
        'b1\tok\t{"id": "b1", "double": 2, "kind": "int"}',
    ]
    assert tried.stdout.splitlines()[3].startswith("3 ok, 0 failed")
