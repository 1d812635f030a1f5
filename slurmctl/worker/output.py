"""Encoding a task's output rows into one Arrow table under the job's output schema.

Every key of every row is a column (null where a row lacks it), whatever the first row holds.
Arrow infers each column's type from all its values at once (one call per column, in C); the
type is then checked against the job's schema (output_schema.py: fixed by the first committed
value, widened where no value is lost, or pinned by `output.schema`). Only a column that does not
encode, or does not fit, is walked value by value, to fail exactly the items whose values cannot
be stored, as `schema` errors naming the field, and to keep every other row.

The rows are plain Python values (dicts, lists, str, int, float, bool, None, datetime): whatever
the checkpoint's format, nothing here depends on how they were stored in between.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

import pyarrow as pa

from slurmctl.errors import PermanentError
from slurmctl.output_schema import (
    MAX_EXACT,
    PINNED,
    Conflict,
    JobSchema,
    Pin,
    canonical,
    describe,
    has_empty_struct,
    type_name,
    widen,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ARROW_ERRORS = (pa.ArrowException, OverflowError, UnicodeError, TypeError, ValueError)


class ContractViolation(PermanentError):
    """The handler broke its contract (a return that is not a dict, a list of dicts or None, a
    coroutine from a sync `process`): a permanent `validation` failure of the item."""


@dataclass
class Encoded:
    table: pa.Table
    schema: JobSchema
    """The job's schema widened by this task's values (the input one when `changed` is False)."""
    changed: bool
    failed: dict[int, str] = field(default_factory=dict)
    """Item (line index) -> the `schema` message of the value that could not be stored."""


def signature(message: str) -> str:
    """A `schema` failure's group for `analyze-errors`: the field, the column's type and the
    value's type, without who fixed it or the value (`schema: output field 'tag': column is
    string, got int`)."""
    text = re.sub(r" \(fixed by [^)]*\)", "", message)
    found = re.match(r"(.*?[,:] got \S+)", text)
    return f"schema: {found.group(1) if found else text}"[:200]


def rows_of(out: Any, id_field: str, item_id: str) -> list[dict[str, Any]]:
    """A handler's return as output rows, the id added where a row lacks it."""
    if type(out) is dict:  # the common case, kept fast: one dict with its id
        return [out] if id_field in out else [{id_field: item_id, **out}]
    if out is None:
        return []
    if isinstance(out, dict):
        out = [out]
    elif not isinstance(out, list | tuple):
        if hasattr(out, "__await__"):  # an `async def process`, or a sync one returning one
            close = getattr(out, "close", None)
            if callable(close):
                close()  # no "coroutine was never awaited" warning in the worker log
            raise ContractViolation(
                f"handler returned a coroutine ({type(out).__name__}): process must be a plain "
                "function returning a dict, a list of dicts or None, not async"
            )
        raise ContractViolation(
            f"handler returned {describe(out)}, expected a dict, a list of dicts or None"
        )
    rows = list(out)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ContractViolation(
                f"handler returned a list holding {describe(r)}, expected dicts only"
            )
        if id_field not in r:
            rows[i] = {id_field: item_id, **r}
    return rows


def table_of(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Every key of every row as a column, each typed by Arrow from all its values (what the
    checkpoint stores); raises what Arrow raises for a value it cannot store."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    return pa.table(dict(zip(names, map(pa.array, _columns(rows, names)), strict=True)))


def why_unstorable(rows: Sequence[dict[str, Any]]) -> str | None:
    """The first value of rows Arrow cannot store on its own, named as a `schema` failure."""
    for r in rows:
        for k, v in r.items():
            if type(k) is not str or not _text_ok(k):
                return f"output row key {k!r} ({type(k).__name__}): column names are text"
            if v is not None and _infer([v]) is None:
                return f"output field {k!r}: {_unstorable(v)}"
    return None


def encode(
    rows: Sequence[dict[str, Any]],
    owners: Sequence[int],
    schema: JobSchema,
    pins: Mapping[str, Pin],
    id_field: str,
    who: str,
) -> Encoded:
    """The table of the rows whose items can be stored (owners[i]: the item of rows[i]); an item
    with one value that cannot be stored loses all its rows.

    The first pass is whole columns at once. When a column does not fit, the rows are walked in
    order over those columns only, so a value fails exactly when the values of the rows kept
    before it (and the recorded schema) fixed another type; the kept rows are encoded again."""
    failed: dict[int, str] = {}
    problems: dict[str, list[Any]] = {}
    out = _attempt(rows, owners, schema, pins, id_field, who, failed, problems)
    if not problems and not failed:
        return out
    if problems:
        _row_by_row(rows, owners, problems, schema, pins, id_field, who, failed)
    while True:  # the kept rows; a column that still does not fit fails value by value
        keep = [i for i, o in enumerate(owners) if o not in failed]
        before = len(failed)
        out = _attempt(
            [rows[i] for i in keep], [owners[i] for i in keep], schema, pins, id_field, who, failed
        )
        if len(failed) == before:
            out.failed = failed
            return out


def _row_by_row(
    rows: Sequence[dict[str, Any]],
    owners: Sequence[int],
    columns: dict[str, list[Any]],
    base: JobSchema,
    pins: Mapping[str, Pin],
    id_field: str,
    who: str,
    failed: dict[int, str],
) -> None:
    """Fail the items whose values in `columns` do not fit the types fixed before them."""
    schema = base.copy()
    for name in columns:
        if name in pins and name not in schema.columns:
            schema.columns[name] = pins[name].type
            schema.fixed_by[name] = PINNED
    for i, o in enumerate(owners):
        if o in failed:
            continue
        pending: list[tuple[str, pa.DataType, list[str], Any]] = []
        problem = None
        for name, values in columns.items():
            v = values[i]
            if v is None:
                continue
            one = _infer([v])
            if one is None:
                problem = f"output field {name!r}: {_unstorable(v)}"
                break
            frozen = name in pins or name == id_field
            try:
                new, paths = _fit(schema, name, canonical(one.type), frozen)
            except Conflict as c:
                problem = _conflict_message(c, v, name, schema)
                break
            problem = _inexact(v, name, new, schema)
            if problem is not None:
                break
            pending.append((name, new, paths, v))
        if problem is not None:
            failed[o] = problem
            continue
        for name, new, paths, v in pending:
            schema.columns[name] = new
            schema.fixed_by.update(dict.fromkeys(paths, who))
            if type(v) is int and abs(v) > MAX_EXACT:
                schema.exact.add(name)


def _attempt(
    rows: Sequence[dict[str, Any]],
    owners: Sequence[int],
    base: JobSchema,
    pins: Mapping[str, Pin],
    id_field: str,
    who: str,
    failed: dict[int, str],
    problems: dict[str, list[Any]] | None = None,
) -> Encoded:
    """One pass over the columns. With `problems`, a column that does not fit is named there
    (and left out) instead of failing its values one by one."""
    schema = base.copy()
    changed = False
    arrays: dict[str, pa.Array] = {}
    names = _names(rows, owners, failed)
    for name, values in zip(names, _columns(rows, names), strict=True):
        pin = pins.get(name)
        if name == id_field:
            values = _ids(values, name, owners, failed, pin)
        elif pin is not None and pin.json:
            values = _as_json(values, name, owners, failed)
        elif pin is not None and pa.types.is_timestamp(pin.type):
            values = _as_timestamps(values)
        if pin is not None and name not in schema.columns:
            schema.columns[name] = pin.type
            schema.fixed_by[name] = PINNED
            changed = True
        col = _Column(name, schema, pin is not None or name == id_field, who)
        arr = col.encode(values, owners, failed, problems is None)
        if arr is None:
            assert problems is not None
            problems[name] = values
            continue
        arrays[name] = arr
        changed = changed or col.changed
    if id_field not in arrays:
        arrays[id_field] = pa.array([], schema.columns[id_field])
    fields = [pa.field(n, schema.columns[n]) for n in arrays]
    table = pa.Table.from_arrays(
        [
            a if a.type == f.type else a.cast(f.type, safe=False)
            for a, f in zip(arrays.values(), fields, strict=True)
        ],
        schema=pa.schema(fields),
    )
    return Encoded(table, schema, changed)


def _names(
    rows: Sequence[dict[str, Any]], owners: Sequence[int], failed: dict[int, str]
) -> list[str]:
    """Every key of every row, in order of first appearance."""
    if not rows:
        return []
    first = rows[0]
    every = set().union(*rows)
    names = (
        list(first) if len(every) == len(first) else list(dict.fromkeys(k for r in rows for k in r))
    )
    bad = [k for k in names if type(k) is not str or not _text_ok(k)]
    if bad:
        for r, o in zip(rows, owners, strict=True):
            key = next((k for k in bad if k in r), None)
            if key is not None and o not in failed:
                failed[o] = f"output row key {key!r} ({type(key).__name__}): column names are text"
        names = [k for k in names if k not in bad]
    return names


def _columns(rows: Sequence[dict[str, Any]], names: list[str]) -> list[list[Any]]:
    """The rows as columns, None where a row lacks the key (`dict.get` mapped in C)."""
    return [list(map(dict.get, rows, repeat(name))) for name in names]


def _text_ok(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _ids(
    values: list[Any], name: str, owners: Sequence[int], failed: dict[int, str], pin: Pin | None
) -> list[Any]:
    """The id column holds an id's canonical text (ids are strings or integers: `1` is "1"), or
    integers when `output.schema` pins it to int64."""
    as_int = pin is not None and pa.types.is_integer(pin.type)
    kind = int if as_int else str
    if not values or set(map(type, values)) == {kind}:  # in C: the common case
        return values
    out: list[Any] = []
    for given, o in zip(values, owners, strict=True):
        v = given
        try:
            if type(v) is str and as_int:
                v = int(v) if v.lstrip("-").isdigit() and str(int(v)) == v else None
            elif type(v) is int and not as_int:
                v = str(v)
            if type(v) is not kind or (type(v) is int and not INT64_MIN <= v <= INT64_MAX):
                raise ValueError
        except ValueError:
            expected = "integers (output.schema pins it to int64)" if as_int else "text or integers"
            failed.setdefault(
                o, f"output field {name!r}: ids are {expected}, got {describe(given)}"
            )
            v = None
        out.append(v)
    return out


def _as_json(
    values: list[Any], name: str, owners: Sequence[int], failed: dict[int, str]
) -> list[Any]:
    """A `json` column: each value as its JSON text."""
    out: list[Any] = []
    for v, o in zip(values, owners, strict=True):
        if v is None:
            out.append(None)
            continue
        try:
            text = json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            text.encode()
        except (TypeError, ValueError, UnicodeEncodeError) as e:
            failed.setdefault(
                o,
                f"output field {name!r}: column is json (fixed by {PINNED}), got {describe(v)}"
                f" that is not JSON ({e})",
            )
            text = None
        out.append(text)
    return out


def _as_timestamps(values: list[Any]) -> list[Any]:
    """A `timestamp` column also takes ISO 8601 text (`2026-01-02T03:04:05Z`); text that is not
    one stays text, and fails its item as not fitting the column."""
    out: list[Any] = []
    for v in values:
        if type(v) is str:
            with contextlib.suppress(ValueError):
                v = datetime.fromisoformat(v)
        if isinstance(v, datetime):  # naive ones are UTC: one kind for Arrow
            v = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
        out.append(v)
    return out


class _Column:
    """One column's values against its type in the schema (widening it unless fixed)."""

    def __init__(self, name: str, schema: JobSchema, frozen: bool, who: str) -> None:
        self.name, self.schema, self.frozen, self.who = name, schema, frozen, who
        self.changed = False

    def encode(
        self, values: list[Any], owners: Sequence[int], failed: dict[int, str], settle: bool
    ) -> pa.Array | None:
        """The column's array; None, when it does not fit and not `settle`, for the caller to
        walk the rows; with `settle`, values that do not fit fail their items."""
        arr = _infer(values)
        if arr is not None:
            found = canonical(arr.type)
            try:
                new, _ = _fit(self.schema, self.name, found, self.frozen)
            except Conflict:
                new = None
            big = new is not None and _big_ints(arr, values)
            if new is not None and not (big and pa.types.is_floating(new)):
                self._widen(found)
                if big:
                    self._mark_exact()
                return arr
        return self._value_by_value(values, owners, failed) if settle else None

    def _mark_exact(self) -> None:
        if self.name not in self.schema.exact:
            self.schema.exact.add(self.name)
            self.changed = True

    def _widen(self, found: pa.DataType) -> None:
        old = self.schema.columns.get(self.name, pa.null())
        new, paths = _fit(self.schema, self.name, found, self.frozen)
        if new != old or self.name not in self.schema.columns:
            self.schema.columns[self.name] = new
            self.changed = True
        for p in paths:
            self.schema.fixed_by[p] = self.who
            self.changed = True

    def _value_by_value(
        self, values: list[Any], owners: Sequence[int], failed: dict[int, str]
    ) -> pa.Array:
        self._widen(pa.null())  # the column exists even when none of its values can be stored
        kept: list[Any] = []
        for v, o in zip(values, owners, strict=True):
            if v is not None:
                one = _infer([v])
                if one is None:
                    failed.setdefault(o, f"output field {self.name!r}: {_unstorable(v)}")
                    v = None
                else:
                    try:
                        self._widen(canonical(one.type))
                    except Conflict as c:
                        failed.setdefault(o, self._message(c, v))
                        v = None
                    else:
                        column = self.schema.columns[self.name]
                        problem = _inexact(v, self.name, column, self.schema)
                        if problem is not None:
                            failed.setdefault(o, problem)
                            v = None
                        elif type(v) is int and abs(v) > MAX_EXACT:
                            self._mark_exact()
                        if has_empty_struct(one.type):
                            v = _no_empty(v)
            kept.append(v)
        arr = _infer(kept)
        if arr is None:  # Arrow cannot infer them together (mixed timestamps): one by one
            target = self.schema.columns[self.name]
            parts = [_one(v, target) for v in kept]
            arr = pa.concat_arrays(parts) if parts else pa.array([], target)
        return arr

    def _message(self, c: Conflict, value: Any) -> str:
        return _conflict_message(c, value, self.name, self.schema)


def _one(v: Any, target: pa.DataType) -> pa.Array:
    arr = None if v is None else _infer([v])
    return pa.nulls(1, target) if arr is None else arr.cast(target, safe=False)


def _fit(
    schema: JobSchema, name: str, found: pa.DataType, frozen: bool
) -> tuple[pa.DataType, list[str]]:
    """`widen` for a column of the schema: an int64 column holding integers beyond ±2**53 is
    not widened to float64 (those integers would lose digits)."""
    old = schema.columns.get(name, pa.null())
    if name in schema.exact and pa.types.is_integer(old) and pa.types.is_floating(found):
        raise Conflict(name, old, found)
    return widen(old, found, name, frozen)


def _big_ints(arr: pa.Array, values: list[Any]) -> bool:
    """Whether the column's integers go beyond ±2**53 (min/max in C; the values are looked at
    only when a float column holds that large a magnitude, to find integers among them)."""
    import pyarrow.compute as pc  # here: ~14 MB and ~20 ms that `submit` and `status` never need

    if pa.types.is_integer(arr.type):
        low, high = pc.min_max(arr).values()
        return bool(high.is_valid and (high.as_py() > MAX_EXACT or low.as_py() < -MAX_EXACT))
    if pa.types.is_floating(arr.type):
        top = pc.max(pc.abs(arr))
        if top.is_valid and top.as_py() >= MAX_EXACT:
            return any(type(v) is int and abs(v) > MAX_EXACT for v in values)
    return False


def _inexact(v: Any, name: str, column: pa.DataType, schema: JobSchema) -> str | None:
    """An integer that a float64 column would round."""
    if type(v) is int and abs(v) > MAX_EXACT and pa.types.is_floating(column):
        return (
            f"output field {name!r}: column is float64 (fixed by {schema.who(name)}), got int "
            f"{v}, which float64 cannot hold exactly"
        )
    return None


def _conflict_message(c: Conflict, value: Any, name: str, schema: JobSchema) -> str:
    where = f"output field {c.path!r}"
    fixed = f"(fixed by {schema.who(c.path)})"
    got = describe(value) if c.path == name else f"{type_name(c.found)} in {describe(value)}"
    if c.column is None:
        parent = schema.columns[name]
        return f"{where}: not a field of the column's {type_name(parent)} {fixed}, got {got}"
    return f"{where}: column is {type_name(c.column)} {fixed}, got {got}"


def _infer(values: list[Any]) -> pa.Array | None:
    """Arrow's array of the values (every key of every nested dict kept), None if it cannot."""
    try:
        arr = pa.array(values)
    except ARROW_ERRORS:
        return None
    if has_empty_struct(arr.type):  # `{}`: Parquet cannot store an empty struct, null can
        try:
            arr = pa.array([_no_empty(v) for v in values])
        except ARROW_ERRORS:
            return None
    return arr


def _no_empty(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _no_empty(x) for k, x in v.items()} if v else None
    if isinstance(v, list | tuple):
        return [_no_empty(x) for x in v]
    return v


def _unstorable(v: Any) -> str:
    """Why Arrow cannot store the value, naming the part that is the reason."""
    bad = _bad_part(v)
    if isinstance(bad, int):
        return f"got int {bad}, which does not fit in int64"
    if isinstance(bad, str):
        return f"got str {_short(bad)}, which is not valid Unicode text (a lone surrogate)"
    return (
        f"got {describe(v)}, which cannot be stored (expected str, int, float, bool, datetime, "
        "dict, list or None)"
    )


def _bad_part(v: Any) -> Any:
    if type(v) is int and not INT64_MIN <= v <= INT64_MAX:
        return v
    if isinstance(v, str):
        return None if _text_ok(v) else v
    if isinstance(v, dict):
        for k, x in v.items():
            for part in (k, x):
                found = _bad_part(part)
                if found is not None:
                    return found
    if isinstance(v, list | tuple):
        for x in v:
            found = _bad_part(x)
            if found is not None:
                return found
    return None


def _short(text: str) -> str:
    r = repr(text)
    return r if len(r) <= 60 else r[:57] + "..."
