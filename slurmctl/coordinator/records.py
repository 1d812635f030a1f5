"""What makes a record an item: its id, in canonical form, and why a record cannot be one.

Shared by the scan of JSON Lines (`scan.py`) and of CSV and Parquet rows (`tabular.py`), so every
format refuses the same ids with the same words.
"""

from __future__ import annotations


def id_text(value: object) -> str:
    """An id's canonical form, its text: ids are strings or integers (of any size, exact), so
    `1` and `"1"` are the same id. "" when the value cannot be an id: absent, empty, a float, a
    boolean, an object, a list, or text with a lone surrogate from a "\\ud800" escape (no
    store accepts it)."""
    if type(value) is int:
        return str(value)
    if type(value) is not str:
        return ""
    try:
        value.encode()
    except UnicodeEncodeError:
        return ""
    return value


def bad_id(value: object, id_field: str) -> str:
    if value is None or value == "":
        return f"missing id: no usable {id_field!r} field"
    if isinstance(value, str):
        what = "text that is not valid Unicode (a lone surrogate)"
    elif isinstance(value, bool):
        what = "true" if value else "false"
    elif isinstance(value, float):
        what = f"a float ({value!r})"
    elif isinstance(value, dict):
        what = "an object"
    elif isinstance(value, list):
        what = "a list"
    else:
        what = type(value).__name__
    return f"bad id: {id_field!r} is {what}; ids are strings or integers"
