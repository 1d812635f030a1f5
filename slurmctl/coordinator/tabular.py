"""CSV and Parquet files as rows for the scan: each row's number, its id, and the JSON line the
batches store (workers read JSON Lines batches whatever the input's format), or why the row is
quarantined.

Streamed: a CSV is parsed by pyarrow block by block (256 KiB), a Parquet file read row group by
row group in record batches, never whole. CSV cells are read as text and converted here to the
types `input_columns` declares (a whole column at once where pyarrow can, value by value when a
cell is bad or the type needs it), so a bad cell quarantines its row (naming the field, what was
expected and what was found) instead of failing the file. Integers stay exact
(Python ints; JSON text of any size), timestamps become RFC 3339 text in UTC.

Numbers: a CSV row's `line` counts the header as line 1 (its line in the file, unless values
hold newlines); a Parquet row's `row` counts from 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from slurmctl import fastjson
from slurmctl.coordinator.records import bad_id, id_text
from slurmctl.coordinator.streams import ChunkReader
from slurmctl.errors import InputError

Row = tuple[int, str, bytes, str | None]
"""(line or row number, the id's text, the JSON line, None) for an item; (number, "", the text
kept in the quarantine, the reason) for a bad row."""

CSV_BLOCK = 256 << 10
PARQUET_BATCH = 16_384
PARQUET_BUFFER = 1 << 20
"""Column chunks are read through a buffer of this size, not whole (nor a row group ahead):
memory stays flat whatever the row groups' size."""
MAX_COLUMNS = 10_000
INT64 = (-(2**63), 2**63 - 1)
TRUE = frozenset({"true", "t", "yes", "y", "1"})
FALSE = frozenset({"false", "f", "no", "n", "0"})
TEXT_KEEP = 200


def _why(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


# --- CSV cells to declared types ----------------------------------------------------------------
def _int(text: str) -> int:
    body = text.strip()
    digits = body[1:] if body[:1] in "+-" else body
    if not digits.isdigit() or not digits.isascii():
        raise ValueError
    value = int(body)
    if not INT64[0] <= value <= INT64[1]:
        raise ValueError
    return value


def _float(text: str) -> float:
    if "_" in text:
        raise ValueError
    return float(text)


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise ValueError


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


CONVERT: dict[str, Callable[[str], Any]] = {
    "int64": _int,
    "float64": _float,
    "bool": _bool,
    "timestamp": _timestamp,
    "json": fastjson.loads,
}


def _converters(
    columns: dict[str, str], header: list[str], name: str
) -> list[tuple[str, str, Callable[[str], Any]]]:
    out = []
    for column, type_name in columns.items():
        if column not in header:
            raise InputError(
                f"{name}: input_columns: no column {column!r} in the header ({', '.join(header)})"
            )
        kind = type_name.strip()
        if kind != "string":
            out.append((column, kind, CONVERT[kind]))
    return out


VECTOR = {"int64": pa.int64(), "float64": pa.float64()}
"""Types pyarrow converts a whole column to at once; a column it refuses goes value by value."""


def _cast(
    batch: pa.RecordBatch, converters: list[tuple[str, str, Callable[[str], Any]]]
) -> tuple[pa.RecordBatch, list[tuple[str, str, Callable[[str], Any]]]]:
    """The batch with the columns pyarrow can convert at once converted, and the converters
    left to apply value by value (a column with a bad cell, a type pyarrow does not parse
    as these rules say)."""
    import pyarrow.compute as pc

    rest = []
    for converter in converters:
        column, kind, _ = converter
        target = VECTOR.get(kind)
        if target is not None:
            at = batch.schema.get_field_index(column)
            cells = batch.column(at)
            try:
                empty = pc.equal(pc.utf8_trim_whitespace(cells), "")
                typed = pc.cast(pc.if_else(empty, pa.scalar(None, pa.string()), cells), target)
            except pa.ArrowException:
                rest.append(converter)  # some cell is bad: value by value, naming it
                continue
            batch = batch.set_column(at, column, typed)
            continue
        rest.append(converter)
    return batch, rest


def _convert(
    record: dict[str, Any], converters: list[tuple[str, str, Callable[[str], Any]]]
) -> str | None:
    """Convert the record's typed cells in place; the reason when one cannot be."""
    for column, kind, convert in converters:
        text = record[column]
        if text is None or text == "":
            record[column] = None
            continue
        try:
            record[column] = convert(text)
        except ValueError:
            return f"bad value: {column!r} expected {kind}, found {text[:60]!r}"
    return None


# --- rows to JSON lines -------------------------------------------------------------------------
def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()  # not UTF-8: a ValueError, the row is quarantined
    if isinstance(value, Decimal):
        return str(value)  # exact, as text
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def _dump(record: dict[str, Any]) -> bytes:
    """The record as one JSON line; integers beyond 64 bits through the standard library."""
    try:
        return orjson.dumps(record, default=_default)
    except TypeError:
        text = json.dumps(record, default=_default, ensure_ascii=False, separators=(",", ":"))
        return text.encode()


def _item(number: int, record: dict[str, Any], id_field: str, reason: str | None = None) -> Row:
    if reason is None:
        value = record.get(id_field)
        if type(value) is bytes:
            try:
                value = record[id_field] = value.decode()
            except UnicodeDecodeError:
                value = None
        key = id_text(value)
        if not key:
            reason = bad_id(value, id_field)
        else:
            try:
                return number, key, _dump(record), None
            except (TypeError, ValueError) as e:
                reason = f"bad value: cannot be written as JSON ({_why(e)})"
    return number, "", _text(record), reason


def _text(record: dict[str, Any]) -> bytes:
    """A bad record as the quarantine keeps it: JSON, whatever its values."""
    try:
        return orjson.dumps(record, default=repr)[:TEXT_KEEP]
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(record, default=repr, ensure_ascii=False).encode()[:TEXT_KEEP]


def _emit(
    records: list[dict[str, Any]],
    numbers: Iterable[int],
    id_field: str,
    reasons: list[str | None] | None = None,
) -> Iterator[Row]:
    """The hot loop: a text id and a record orjson writes as it is take no other call."""
    dumps, default = orjson.dumps, _default
    for at, (number, record) in enumerate(zip(numbers, records, strict=True)):
        if reasons is not None and reasons[at] is not None:
            yield _item(number, record, id_field, reasons[at])
            continue
        key = record.get(id_field)
        if type(key) is str and key and key.isascii():
            try:
                yield number, key, dumps(record, default=default), None
                continue
            except (TypeError, ValueError):
                pass
        yield _item(number, record, id_field)


# --- a whole batch at once ----------------------------------------------------------------------
_ESCAPED = r'["\\\x00-\x1f]'
"""What orjson escapes in a string: a string without any is written between quotes as it is."""


def _string_piece(cells: pa.Array) -> pa.Array | None:
    import pyarrow.compute as pc

    if pc.any(pc.match_substring_regex(cells, _ESCAPED)).as_py():
        return None
    piece: pa.Array = pc.binary_join_element_wise('"', cells, '"', "")
    return piece


def _piece(cells: pa.Array) -> pa.Array | None:
    """A column's values as JSON text (null where null), or None when not of a simple type."""
    import pyarrow.compute as pc

    kind = cells.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _string_piece(cells)
    if pa.types.is_integer(kind):
        return pc.cast(cells, pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(cells, "true", "false")
    if pa.types.is_null(kind):
        return pa.nulls(len(cells), pa.string())
    return None


def _keys(cells: pa.Array) -> list[str] | None:
    """The ids' text when every one is a non-empty ASCII string or an integer."""
    import pyarrow.compute as pc

    if cells.null_count:
        return None
    if pa.types.is_integer(cells.type):
        cells = pc.cast(cells, pa.string())
    elif not (pa.types.is_string(cells.type) or pa.types.is_large_string(cells.type)):
        return None
    if len(cells) and not pc.all(pc.string_is_ascii(cells)).as_py():
        return None
    if len(cells) and pc.min(pc.binary_length(cells)).as_py() == 0:
        return None
    keys: list[str] = cells.to_pylist()
    return keys


def _whole(batch: pa.RecordBatch, id_field: str) -> tuple[list[str], list[bytes]] | None:
    """The batch's ids and JSON lines built by pyarrow's kernels, byte for byte what the row by
    row path (orjson) writes; None (go row by row) unless every column holds strings orjson
    writes as they are, integers, booleans or nulls, and every id is usable as it is."""
    import pyarrow.compute as pc

    names = batch.schema.names
    if len(set(names)) != len(names):
        return None
    keys = _keys(batch.column(names.index(id_field)))
    if keys is None:
        return None
    pieces: list[Any] = []
    for at, name in enumerate(names):
        piece = _piece(batch.column(at))
        if piece is None:
            return None
        pieces += [("," if at else "{") + orjson.dumps(name).decode() + ":"]
        pieces += [pc.fill_null(piece, "null")]
    joined = pc.binary_join_element_wise(*pieces, "}", "")
    lines: list[bytes] = pc.cast(joined, pa.binary()).to_pylist()
    return keys, lines


# --- CSV ----------------------------------------------------------------------------------------
class _Invalid:
    """Rows with the wrong number of fields, which pyarrow skips and reports here."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[int, int, str]] = {}

    def __call__(self, row: Any) -> str:
        self.rows[int(row.number)] = (row.expected_columns, row.actual_columns, str(row.text))
        return "skip"

    def pop(self, line: int) -> Row:
        expected, actual, text = self.rows.pop(line)
        reason = f"bad row: expected {expected} fields, found {actual}"
        return line, "", text.encode()[:TEXT_KEEP], reason


def _open_csv(raw: Iterator[bytes], name: str, invalid: _Invalid) -> Any:
    import pyarrow.csv as pacsv

    try:
        return pacsv.open_csv(
            pa.PythonFile(ChunkReader(raw), mode="r"),
            # one thread: a skipped row's number is known only then
            read_options=pacsv.ReadOptions(
                use_threads=False, block_size=CSV_BLOCK, autogenerate_column_names=True
            ),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={f"f{i}": pa.string() for i in range(MAX_COLUMNS)}
            ),
        )
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            return None
        raise InputError(f"{name}: cannot read input: {_why(e)}") from None


def _csv_batches(reader: Any, name: str) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{name}: cannot read input: {_why(e)}") from None
        yield batch


def _header(values: list[Any], name: str, id_field: str) -> list[str]:
    header = [str(v) for v in values]
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise InputError(f"{name}: line 1: the header names column {column!r} twice")
        seen.add(column)
    if id_field not in seen:
        raise InputError(
            f"{name}: line 1: no column {id_field!r} (the id_field) in the header "
            f"({', '.join(header)})"
        )
    return header


def csv_rows(
    raw: Iterator[bytes], name: str, id_field: str, columns: dict[str, str]
) -> Iterator[Row]:
    """The rows of a CSV file (raw: its decompressed bytes), the header on its first line."""
    invalid = _Invalid()
    reader = _open_csv(raw, name, invalid)
    if reader is None:
        return
    header: list[str] | None = None
    converters: list[tuple[str, str, Callable[[str], Any]]] = []
    line = 0
    for batch in _csv_batches(reader, name):
        if header is None:
            header = _header([c[0].as_py() for c in batch.columns], name, id_field)
            converters = _converters(columns, header, name)
            line, batch = 1, batch.slice(1)
        typed, rest = _cast(batch.rename_columns(header), converters)
        clean = not invalid.rows or min(invalid.rows) > line + typed.num_rows
        whole = None if rest or not clean else _whole(typed, id_field)
        if whole is not None:
            for n, (key, text) in enumerate(zip(*whole, strict=True), line + 1):
                yield n, key, text, None
            line += typed.num_rows
            continue
        records = typed.to_pylist()
        reasons = [_convert(record, rest) for record in records] if rest else None
        if clean:
            yield from _emit(records, range(line + 1, line + len(records) + 1), id_field, reasons)
            line += len(records)
            continue
        for at, record in enumerate(records):  # a row with the wrong field count among them
            line += 1
            while line in invalid.rows:
                yield invalid.pop(line)
                line += 1
            yield from _emit([record], [line], id_field, None if reasons is None else [reasons[at]])
    for left in sorted(invalid.rows):
        yield invalid.pop(left)


# --- Parquet ------------------------------------------------------------------------------------
def parquet_rows(path: Path, name: str, id_field: str) -> Iterator[Row]:
    """The rows of a Parquet file, row group by row group."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_BUFFER)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{name}: not a Parquet file ({_why(e)})") from None
    names = parquet.schema_arrow.names
    if id_field not in names:
        raise InputError(
            f"{name}: no column {id_field!r} (the id_field) in the Parquet schema "
            f"({', '.join(names)})"
        )
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, use_threads=False):
            whole = _whole(batch, id_field)
            if whole is not None:
                for n, (key, text) in enumerate(zip(*whole, strict=True), number + 1):
                    yield n, key, text, None
            else:
                numbers = range(number + 1, number + batch.num_rows + 1)
                yield from _emit(batch.to_pylist(), numbers, id_field)
            number += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{name}: row {number + 1}: cannot read input: {_why(e)}") from None
    finally:
        parquet.close()
