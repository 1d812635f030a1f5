"""The output encoder and the widening rule, value by value (the CLI tests cover the job)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from slurmctl.output_schema import (
    Conflict,
    JobSchema,
    Pin,
    parse_type,
    type_name,
    widen,
    with_rules,
)
from slurmctl.worker.output import ContractViolation, Encoded, encode, rows_of, signature

BASE = with_rules(JobSchema(), {}, "id")


def _encode(
    rows: list[dict[str, object]], schema: JobSchema = BASE, pins: dict[str, Pin] | None = None
) -> Encoded:
    return encode(rows, list(range(len(rows))), schema, pins or {}, "id", "task-000001")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (pa.null(), pa.string(), pa.string()),
        (pa.int64(), pa.float64(), pa.float64()),
        (pa.float64(), pa.int64(), pa.float64()),
        (pa.string(), pa.null(), pa.string()),
        (pa.list_(pa.int64()), pa.list_(pa.float64()), pa.list_(pa.float64())),
        (pa.list_(pa.null()), pa.list_(pa.string()), pa.list_(pa.string())),
        (
            pa.struct([("a", pa.int64())]),
            pa.struct([("b", pa.string()), ("a", pa.float64())]),
            pa.struct([("a", pa.float64()), ("b", pa.string())]),
        ),
    ],
)
def test_widening_keeps_every_value(
    old: pa.DataType, new: pa.DataType, expected: pa.DataType
) -> None:
    assert widen(old, new, "c")[0] == expected


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        (pa.string(), pa.int64(), "c"),
        (pa.int64(), pa.bool_(), "c"),
        (pa.struct([("a", pa.int64())]), pa.string(), "c"),
        (pa.struct([("a", pa.int64())]), pa.struct([("a", pa.string())]), "c.a"),
        (pa.list_(pa.int64()), pa.list_(pa.string()), "c[]"),
    ],
)
def test_conflicts_name_the_path(old: pa.DataType, new: pa.DataType, path: str) -> None:
    with pytest.raises(Conflict) as info:
        widen(old, new, "c")
    assert info.value.path == path


def test_a_pinned_type_never_widens() -> None:
    assert widen(pa.float64(), pa.int64(), "c", frozen=True)[0] == pa.float64()
    for old, new in (
        (pa.int64(), pa.float64()),
        (pa.struct([("a", pa.int64())]), pa.struct([("b", pa.int64())])),
    ):
        with pytest.raises(Conflict):
            widen(old, new, "c", frozen=True)


@pytest.mark.parametrize(
    "text",
    [
        "string",
        "int64",
        "float64",
        "bool",
        "timestamp",
        "list<string>",
        "struct<a: int64, b: list<float64>>",
    ],
)
def test_type_names_round_trip(text: str) -> None:
    t, is_json = parse_type(text)
    assert type_name(t) == text and not is_json


def test_the_first_kept_value_fixes_the_type_in_row_order() -> None:
    rows: list[dict[str, object]] = [
        {"id": "1", "v": 1},
        {"id": "2", "v": "x", "s": {"a": 1}},  # fails on v: its s.a fixes nothing
        {"id": "3", "s": {"a": "q"}},
        {"id": "4", "v": 2.5},
    ]
    out = _encode(rows)
    assert out.failed == {
        1: "output field 'v': column is int64 (fixed by task-000001), got str 'x'"
    }
    assert out.table.schema == pa.schema(
        [("id", pa.string()), ("v", pa.float64()), ("s", pa.struct([("a", pa.string())]))]
    )
    assert out.table.column("id").to_pylist() == ["1", "3", "4"]


def test_an_item_with_one_bad_row_loses_all_its_rows() -> None:
    rows: list[dict[str, object]] = [
        {"id": "1", "v": 1},
        {"id": "1", "v": 2},
        {"id": "2", "v": "x"},
        {"id": "3", "v": 3},
    ]
    out = encode(rows, [0, 0, 1, 2], BASE, {}, "id", "task-000007")
    assert out.failed == {
        1: "output field 'v': column is int64 (fixed by task-000007), got str 'x'"
    }
    assert out.table.column("v").to_pylist() == [1, 2, 3]


def test_the_recorded_schema_decides_and_names_who_fixed_it() -> None:
    recorded = JobSchema(
        {"id": pa.string(), "tag": pa.string()}, {"id": "id_field", "tag": "task-000003"}, 4
    )
    out = _encode([{"id": "1", "tag": 97}, {"id": "2", "tag": "ok", "n": None}], recorded)
    assert out.failed == {
        0: "output field 'tag': column is string (fixed by task-000003), got int 97"
    }
    assert out.changed and out.schema.columns["n"] == pa.null()  # a null-only column is recorded


def test_ids_are_canonical_text_and_bad_ones_fail() -> None:
    out = _encode([{"id": 1}, {"id": "b"}, {"id": 1.5}, {"id": 2**70}])
    assert out.table.column("id").to_pylist() == ["1", "b", str(2**70)]
    assert out.failed == {2: "output field 'id': ids are text or integers, got float 1.5"}
    pins = {"id": Pin(pa.int64())}
    pinned = with_rules(JobSchema(), pins, "id")
    out = _encode([{"id": "7"}, {"id": 8}, {"id": "x"}, {"id": "007"}], pinned, pins)
    assert out.table.column("id").to_pylist() == [7, 8]
    assert out.failed == {
        2: "output field 'id': ids are integers (output.schema pins it to int64), got str 'x'",
        3: "output field 'id': ids are integers (output.schema pins it to int64), got str '007'",
    }


def test_pinned_json_timestamp_and_struct_columns() -> None:
    pins = {
        "raw": Pin(pa.string(), json=True),
        "at": Pin(pa.timestamp("us", tz="UTC")),
        "s": Pin(pa.struct([("a", pa.int64())])),
    }
    schema = with_rules(JobSchema(), pins, "id")
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    rows: list[dict[str, object]] = [
        {"id": "1", "raw": {"k": [1, None]}, "at": when, "s": {"a": 1}},
        {"id": "2", "raw": float("nan")},
        {"id": "3", "s": {"a": 1, "b": 2}},
        {"id": "4", "at": "2026-01-02T03:04:05Z"},
        {"id": "5", "at": "yesterday"},
    ]
    out = _encode(rows, schema, pins)
    assert out.table.to_pylist()[0]["raw"] == '{"k":[1,null]}'
    assert out.table.to_pylist()[0]["at"] == when.replace(tzinfo=dt.UTC)
    assert out.table.to_pylist()[1]["at"] == when.replace(tzinfo=dt.UTC)
    assert out.failed[4] == (
        "output field 'at': column is timestamp (fixed by output.schema), got str 'yesterday'"
    )
    assert out.failed[1].startswith(
        "output field 'raw': column is json (fixed by output.schema), got float nan"
    )
    assert out.failed[2] == (
        "output field 's.b': not a field of the column's struct<a: int64> "
        "(fixed by output.schema), got int64 in dict {'a': 1, 'b': 2}"
    )


def test_keys_that_are_not_text_fail_their_row() -> None:
    out = _encode([{"id": "1", 5: "x"}, {"id": "2", "\ud800": 1}, {"id": "3"}])  # type: ignore[dict-item]
    assert out.failed == {
        0: "output row key 5 (int): column names are text",
        1: "output row key '\\ud800' (str): column names are text",
    }
    assert out.table.column("id").to_pylist() == ["3"]


def test_handler_returns_outside_the_contract() -> None:
    assert rows_of({"a": 1}, "id", "7") == [{"id": "7", "a": 1}]
    assert rows_of(None, "id", "7") == []
    assert rows_of(({"id": "x"}, {"b": 2}), "id", "7") == [{"id": "x"}, {"id": "7", "b": 2}]
    for bad in ("text", 5, [{"a": 1}, "x"], {1, 2}):
        with pytest.raises(ContractViolation):
            rows_of(bad, "id", "7")

    async def later() -> None:
        return None

    with pytest.raises(ContractViolation, match="coroutine"):
        rows_of(later(), "id", "7")


def test_schema_record_round_trips() -> None:
    schema = JobSchema(
        {"id": pa.string(), "s": pa.struct([("a", pa.list_(pa.float64()))])},
        {"id": "id_field", "s": "task-000002"},
    )
    back = JobSchema.from_bytes(schema.to_bytes(), 3)
    assert (back.columns, back.fixed_by, back.version) == (schema.columns, schema.fixed_by, 3)
    wide = JobSchema(
        {f"c{i}": pa.int64() for i in range(5000)}, {f"c{i}": "task-000000" for i in range(5000)}
    )
    assert len(wide.to_bytes()) < 100_000  # a DynamoDB item holds 400 KB, base64 included


def test_integers_float64_cannot_hold_are_never_rounded() -> None:
    big = 2**60 + 1
    # a column of big integers stays int64, and a float then fails instead of widening it
    first = _encode([{"id": "1", "v": big}, {"id": "2", "v": 3}])
    assert first.failed == {} and first.schema.exact == {"v"}
    recorded = first.schema
    later = _encode([{"id": "3", "v": 2.5}, {"id": "4", "v": 7}], recorded)
    assert later.failed == {
        0: "output field 'v': column is int64 (fixed by task-000001), got float 2.5"
    }
    assert later.table.column("v").to_pylist() == [7]
    # a float64 column: a big integer in it fails, a small one is a float
    floats = _encode([{"id": "1", "f": 0.5}, {"id": "2", "f": big}, {"id": "3", "f": 4}])
    assert floats.failed == {
        1: f"output field 'f': column is float64 (fixed by task-000001), got int {big}, which "
        "float64 cannot hold exactly"
    }
    assert floats.table.column("f").to_pylist() == [0.5, 4.0]
    recorded_float = JobSchema(
        {"id": pa.string(), "f": pa.float64()}, {"id": "id_field", "f": "task-000009"}, 2
    )
    again = _encode([{"id": "5", "f": big}, {"id": "6", "f": 1}], recorded_float)
    assert set(again.failed) == {0} and "(fixed by task-000009)" in again.failed[0]
    assert JobSchema.from_bytes(recorded.to_bytes(), 1).exact == {"v"}


def test_schema_signatures_group_by_field_and_types() -> None:
    assert (
        signature("output field 'tag': column is string (fixed by task-000001), got int 97")
        == "schema: output field 'tag': column is string, got int"
    )
    assert (
        signature("output field 'n': got int 1180591620717411303424, which does not fit in int64")
        == "schema: output field 'n': got int"
    )


def test_outputs_of_a_job_without_a_record_are_widened_or_named() -> None:
    from slurmctl.finalize.aggregate import OutputConflict, _widened

    keys = [f"jobs/j/results/task-00000{i}/tok.parquet" for i in range(3)]
    schemas = [
        pa.schema([("id", pa.string()), ("v", pa.null())]),
        pa.schema([("id", pa.string()), ("v", pa.int64())]),
        pa.schema([("v", pa.float64()), ("w", pa.bool_())]),
    ]
    got = _widened(schemas, keys)
    assert got.columns == {"id": pa.string(), "v": pa.float64(), "w": pa.bool_()}
    schemas[2] = pa.schema([("v", pa.string())])
    with pytest.raises(OutputConflict) as info:
        _widened(schemas, keys)
    assert str(info.value) == (
        "output field 'v': cannot merge task-000002 (string) with task-000001 (int64)"
    )


def test_naive_and_aware_datetimes_share_one_utc_column() -> None:
    rows: list[dict[str, object]] = [
        {"id": "1", "t": dt.datetime(2026, 1, 1), "e": {}},
        {"id": "2", "t": dt.datetime(2026, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))},
    ]
    out = _encode(rows)
    assert out.failed == {}
    assert out.table.schema.field("t").type == pa.timestamp("us", tz="UTC")
    assert out.table.column("t").to_pylist() == [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * 2
    assert out.table.schema.field("e").type == pa.null()  # only `{}`: Parquet has no empty struct
