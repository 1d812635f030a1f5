"""YAML reading and error wording for the job definition (split from config.py to stay short).

Turns pydantic's errors into one line a user can act on: `<file>:<line>: <field.path>: expected
<what>, found <value>` (invariant 7), using yaml.compose to find the line of each field.
"""

from __future__ import annotations

import difflib
import re
import types
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from slurmctl.errors import ConfigError

Loc = tuple[str | int, ...]
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class FieldProblem(ValueError):
    """Raised inside validators: a message for `path` below the validator's own location."""

    def __init__(
        self, message: str, path: Loc = (), *, show_found: bool = True, line_loc: Loc = ()
    ) -> None:
        super().__init__(message)
        self.message, self.path, self.show_found = message, path, show_found
        self.line_loc = line_loc  # where to point when path itself is absent from the file


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: `time: 01:00:00` stays text (not base-60 3600), dates
    stay text (JSON-ready), and `1e3` is a number."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in (_INT_TAG, _FLOAT_TAG, "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT_TAG,
    re.compile(r"^[-+]?(?:0b[01_]+|0[0-7_]+|0|[1-9][0-9_]*|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9][0-9_]*
                   (?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml_mapping(content: bytes, name: str) -> tuple[dict[Any, Any], Any]:
    """The top-level mapping and its node tree (for line numbers), or a one-line ConfigError."""
    try:
        text = content.decode("utf-8")
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except UnicodeDecodeError as exc:
        msg = f"{name}: cannot read job definition: not UTF-8 text (byte {exc.start})"
        raise ConfigError(msg) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if exc.problem and "flow" in (exc.context or "") and exc.context_mark:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        elif "<block" in problem:
            problem += " (check the indentation)"
        raise ConfigError(
            f"{_at(name, mark.line + 1 if mark else None)}: invalid YAML: {problem}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from None
    if data is None:
        raise ConfigError(
            f"{name}: the job definition is empty; expected a mapping with "
            "job_type, handler, input and id_field"
        )
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else None
        raise ConfigError(
            f"{_at(name, line)}: expected a mapping at the "
            "top level (job_type: ..., "
            f"handler: ...), found {_kind(data)}"
        )
    duplicate = _duplicate_key(root, (), set())
    if duplicate:
        loc, line = duplicate
        raise ConfigError(f"{_at(name, line)}: duplicate key {str(loc[-1])!r} {_in(loc[:-1])}")
    return data, root


def _at(name: str, line: int | None) -> str:
    return f"{name}:{line}" if line else name


def _in(section: Loc) -> str:
    return f"in {_path(section)}" if section else "at top level"


def _path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a mapping key that is not a string
            out += " (a key)"
        else:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _kind(value: Any) -> str:
    kinds = {
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        dict: "a mapping",
    }
    return kinds.get(type(value), type(value).__name__)


def _duplicate_key(node: Any, loc: Loc, seen: set[int]) -> tuple[Loc, int] | None:
    """YAML keeps the last of two equal keys silently; a definition must not."""
    if id(node) in seen:
        return None
    seen.add(id(node))
    children: list[tuple[str | int, Any]] = []
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                if key.value in keys:
                    return (*loc, key.value), key.start_mark.line + 1
                keys.add(key.value)
                children.append((key.value, value))
    elif isinstance(node, yaml.SequenceNode):
        children = list(enumerate(node.value))
    for part, child in children:
        found = _duplicate_key(child, (*loc, part), seen)
        if found:
            return found
    return None


def _line_of(root: Any, loc: Loc) -> int | None:
    """The line of the deepest part of loc present in the YAML (a key's line for a mapping)."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not match:
                return line
            line, node = match[-1][0].start_mark.line + 1, match[-1][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _unwrap(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _schema_at(model: type[BaseModel], loc: Loc) -> tuple[Any, FieldInfo | None]:
    """The type (and FieldInfo when loc ends at a model field) that loc points at."""
    tp: Any = model
    info: FieldInfo | None = None
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = tp.model_fields.get(str(part)) or next(
                (f for f in tp.model_fields.values() if f.alias == str(part)), None
            )
            if info is None:
                return None, None
            tp = info.annotation
        elif get_origin(tp) in (dict, list):
            tp, info = get_args(tp)[-1], None
        else:
            return None, None
    return _unwrap(tp), info


def _lookup(data: Any, loc: Loc) -> tuple[bool, Any]:
    for part in loc:
        in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (in_list or (isinstance(data, dict) and part in data)):
            return False, None
        data = data[part]
    return True, data


def _found(loc: Loc, value: Any) -> str:
    if loc[:1] == ("params",):  # never echo a params value: it may be a secret
        return _kind(value)
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "string_too_short": "a non-empty string",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "none_required": "nothing",
}


def _expected(model: type[BaseModel], err: Any, loc: Loc) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "literal_error":
        return str(ctx["expected"])
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        tp, info = _schema_at(model, loc)
        noun = "an integer" if tp is int else "a number"
        bounds = dict(ctx)  # the violated bound, completed by the field's other bounds
        for meta in info.metadata if info else []:
            bounds.update({k: getattr(meta, k) for k in _OPS if hasattr(meta, k)})
        if "ge" in bounds and "le" in bounds:
            return f"{noun} from {_num(bounds['ge'])} to {_num(bounds['le'])}"
        return noun + " " + " and ".join(f"{_OPS[k]} {_num(v)}" for k, v in bounds.items())
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    return str(err["msg"]).removeprefix("Input should be ")


def _describe(model: type[BaseModel], err: Any, root: Any, data: Any) -> tuple[int | None, str]:
    """One pydantic error as (line, 'field.path: expected ..., found ...')."""
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        section, _ = _schema_at(model, loc[:-1])
        is_model = isinstance(section, type) and issubclass(section, BaseModel)
        valid = [f.alias or n for n, f in section.model_fields.items()] if is_model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        text = f"unknown key {str(loc[-1])!r} {_in(loc[:-1])}{hint}; valid keys: {', '.join(valid)}"
        return _line_of(root, loc), text
    if kind == "missing":
        return _line_of(root, loc), f"{_path(loc)}: required field missing"
    problem = err.get("ctx", {}).get("error")
    if isinstance(problem, FieldProblem):
        loc = loc + problem.path
        line = _line_of(root, loc) or _line_of(root, problem.line_loc)
        present, value = _lookup(data, loc)
        found = f", found {_found(loc, value)}" if problem.show_found and present else ""
        return line, f"{_path(loc)}: {problem.message}{found}"
    if kind in ("value_error", "assertion_error") and problem is not None:
        expected = str(problem)
    else:
        expected = "expected " + _expected(model, err, loc)
    return _line_of(root, loc), f"{_path(loc)}: {expected}, found {_found(loc, err.get('input'))}"


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], name: str, root: Any, data: Any
) -> str:
    """The first error by position in the file (those without a line last), plus a count."""
    described = [_describe(model, err, root, data) for err in exc.errors()]
    order = sorted(
        range(len(described)), key=lambda i: (described[i][0] is None, described[i][0] or 0, i)
    )
    line, text = described[order[0]]
    more = f" (and {len(described) - 1} more)" if len(described) > 1 else ""
    return f"{_at(name, line)}: {text}{more}"
