"""The types of a job's output columns: the names users write, the widening rule, and the
schema a job records in the state store.

One rule decides a column's type: the first value a committed output stores in it fixes it
(the first non-null value, in commit order and then row order), and a later value may only
**widen** it where no value is lost: a column with nulls only takes any type, int64 becomes
float64, a struct gains fields (recursively), a list's element type widens the same way. Any
other change (a string where an int64 was fixed, a struct where a string was) is a conflict: the
item that produced the value fails as `schema`, naming the column, its type and who fixed it.
`output.schema` in the job definition pins columns instead; a pinned column never widens.

The recorded schema (`JobSchema`) is what makes every task's output mergeable: a task widens it
with a compare-and-swap on its version *before* its commit, so every committed output's types
are contained in the recorded schema, and the aggregator casts every part to it.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

PINNED = "output.schema"
"""Who fixed a pinned column, in messages: `(fixed by output.schema)`."""
ID_RULE = "id_field"
"""Who fixed the id column: ids are text unless output.schema pins the id column to int64."""
TIMESTAMP = pa.timestamp("us", tz="UTC")
SCALARS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": TIMESTAMP,
    "json": pa.string(),
}
TYPE_NAMES = "string, int64, float64, bool, timestamp, json, list<T>, struct<name: T, ...>"


@dataclass(frozen=True)
class Pin:
    """A column of `output.schema`: its type, and whether values are kept as JSON text."""

    type: pa.DataType
    json: bool = False


class Conflict(Exception):
    """A value's type does not fit its column's type at `path` (a column, `col.sub`, `col[]`)."""

    def __init__(self, path: str, column: pa.DataType | None, found: pa.DataType) -> None:
        super().__init__(path)
        self.path, self.column, self.found = path, column, found


# --- names --------------------------------------------------------------------------------------
def type_name(t: pa.DataType) -> str:
    """The name a user reads in messages and writes in `output.schema`."""
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_floating(t):
        return "float64"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_name(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {type_name(f.type)}" for f in t) + ">"
    return str(t)


_NAME_RE = re.compile(r"\s*([^<>,:\s][^<>,:]*?)\s*:")


def parse_type(text: str) -> tuple[pa.DataType, bool]:
    """A type of `output.schema` as (Arrow type, is json); ValueError names what was expected."""
    t, rest, is_json = _parse(text.strip(), top=True)
    if rest.strip():
        raise ValueError(f"expected one of {TYPE_NAMES}; unexpected {rest.strip()!r}")
    return t, is_json


def _parse(text: str, top: bool) -> tuple[pa.DataType, str, bool]:
    word = re.match(r"[a-z0-9]+", text)
    name = word.group(0) if word else ""
    rest = text[len(name) :].lstrip()
    if name in SCALARS:
        if name == "json" and not top:
            raise ValueError("json is a column's type: not allowed inside list<> or struct<>")
        return SCALARS[name], rest, name == "json"
    if name == "list" and rest.startswith("<"):
        inner, rest, _ = _parse(rest[1:].lstrip(), top=False)
        return pa.list_(inner), _close(rest), False
    if name == "struct" and rest.startswith("<"):
        fields: list[pa.Field] = []
        rest = rest[1:]
        while True:
            m = _NAME_RE.match(rest)
            if not m:
                raise ValueError("expected struct<name: type, ...>")
            ftype, rest, _ = _parse(rest[m.end() :].lstrip(), top=False)
            if m.group(1) in {f.name for f in fields}:
                raise ValueError(f"struct field {m.group(1)!r} given twice")
            fields.append(pa.field(m.group(1), ftype))
            rest = rest.lstrip()
            if rest.startswith(","):
                rest = rest[1:]
                continue
            return pa.struct(fields), _close(rest), False
    raise ValueError(f"expected one of {TYPE_NAMES}")


def _close(rest: str) -> str:
    rest = rest.lstrip()
    if not rest.startswith(">"):
        raise ValueError("expected '>' closing list<...> or struct<...>")
    return rest[1:].lstrip()


# --- the widening rule --------------------------------------------------------------------------
def canonical(t: pa.DataType) -> pa.DataType:
    """The column type of what Arrow inferred from Python values: one integer, one float, one
    string and one timestamp type (UTC, microseconds), recursively."""
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_timestamp(t):
        return TIMESTAMP
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(canonical(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, canonical(f.type)) for f in t])
    return t


def has_empty_struct(t: pa.DataType) -> bool:
    """Parquet cannot store `struct<>` (from `{}`): such values are stored as null."""
    if pa.types.is_struct(t):
        return t.num_fields == 0 or any(has_empty_struct(f.type) for f in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return has_empty_struct(t.value_type)
    return False


MAX_EXACT = 2**53
"""Integers up to this magnitude are exact in float64."""


def widen(
    old: pa.DataType, new: pa.DataType, path: str, frozen: bool = False
) -> tuple[pa.DataType, list[str]]:
    """The column type once `new` values join `old` ones, and the paths whose type this changed;
    Conflict when no type holds both without losing values (frozen: `old` may not change)."""
    if new == old or pa.types.is_null(new):
        return old, []
    if pa.types.is_null(old) and not frozen:
        return new, [path]
    if pa.types.is_floating(old) and pa.types.is_integer(new):
        return old, []
    if pa.types.is_integer(old) and pa.types.is_floating(new) and not frozen:
        return new, [path]
    if pa.types.is_list(old) and pa.types.is_list(new):
        inner, below = widen(old.value_type, new.value_type, path + "[]", frozen)
        return pa.list_(inner), below
    if pa.types.is_struct(old) and pa.types.is_struct(new):
        fields = {f.name: f.type for f in old}
        changed: list[str] = []
        for f in new:
            sub = f"{path}.{f.name}"
            if f.name in fields:
                fields[f.name], more = widen(fields[f.name], f.type, sub, frozen)
                changed += more
            elif frozen:
                raise Conflict(sub, None, f.type)
            else:
                fields[f.name] = f.type
                changed += [] if pa.types.is_null(f.type) else [sub]
        return pa.struct(list(fields.items())), changed
    raise Conflict(path, old, new)


# --- the job's schema ---------------------------------------------------------------------------
@dataclass
class JobSchema:
    """The job's output columns in order, who fixed each typed path, and the record's version in
    the state store (0: not recorded yet)."""

    columns: dict[str, pa.DataType] = field(default_factory=dict)
    fixed_by: dict[str, str] = field(default_factory=dict)
    version: int = 0
    exact: set[str] = field(default_factory=set)
    """int64 columns holding integers beyond ±2**53, which float64 cannot hold exactly: such a
    column is never widened to float64 (a float in it fails its item instead)."""

    def copy(self) -> JobSchema:
        return JobSchema(dict(self.columns), dict(self.fixed_by), self.version, set(self.exact))

    def arrow(self) -> pa.Schema:
        return pa.schema([pa.field(n, t) for n, t in self.columns.items()])

    def who(self, path: str) -> str:
        """Who fixed path's type: the path itself, else its nearest typed parent."""
        while path:
            if path in self.fixed_by:
                return self.fixed_by[path]
            cut = max(path.rfind("."), path.rfind("[]"))
            path = path[:cut] if cut > 0 else ""
        return "?"

    def to_bytes(self) -> bytes:
        ipc = self.arrow().serialize().to_pybytes()
        doc = {
            "arrow": base64.b64encode(ipc).decode(),
            "fixed_by": self.fixed_by,
            "exact": sorted(self.exact),
        }
        return zlib.compress(json.dumps(doc, sort_keys=True).encode())  # 5,000 columns fit

    @classmethod
    def from_bytes(cls, data: bytes, version: int) -> JobSchema:
        doc: dict[str, Any] = json.loads(zlib.decompress(data))
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["arrow"])))
        columns = {f.name: f.type for f in schema}
        return cls(columns, dict(doc["fixed_by"]), version, set(doc.get("exact", [])))


def with_rules(schema: JobSchema, pins: dict[str, Pin], id_field: str) -> JobSchema:
    """The schema with what the job definition fixes: the pinned columns, and the id column
    (text: an id's canonical form, unless pinned to int64)."""
    columns, fixed_by = dict(schema.columns), dict(schema.fixed_by)
    if id_field not in pins:
        columns[id_field] = pa.string()
        fixed_by[id_field] = ID_RULE
    for name, pin in pins.items():  # the others join in the order rows bring them
        if name in columns or name == id_field:
            columns[name] = pin.type
            fixed_by[name] = PINNED
    if not schema.columns:  # nothing recorded yet: the id column first
        columns = {id_field: columns.pop(id_field), **columns}
    return JobSchema(columns, fixed_by, schema.version, set(schema.exact))


def describe(value: Any) -> str:
    """A value in a message: its Python type and a short repr (`int 97`, `str 'abc'`)."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
