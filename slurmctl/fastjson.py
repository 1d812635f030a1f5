"""JSON decoding on the hot paths (every input line at submit, every item in a worker).

orjson when installed (several times faster), else the standard library. A line orjson refuses is
decoded again by the standard library, which accepts what Python's json always did (NaN, lone
surrogates) and reports the error users expect.

Integers keep every digit: orjson turns an integer beyond 64 bits into a float (so distinct ids
2**64+1 and 2**64+2 would become the same 1.8446744073709552e+19). A line with a run of 19 or
more digits, the only place such an integer can hide, is decoded by the standard library, which
keeps integers exact. The check costs a third of orjson's parse (digits mapped to NUL, which
valid JSON never holds raw, by `bytes.translate`, then a run of 19 searched, both in C), so the
hot paths avoid it: a worker checks its whole batch once (`loads_for`), and the input scan, which
only needs the id, parses unchecked and reads again the rare line whose id came out a float.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_DIGITS_TO_NUL = bytes.maketrans(b"0123456789", b"\0" * 10)
_RUN = b"\0" * 19
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")


def has_long_digits(data: bytes) -> bool:
    """Whether data holds a run of 19 digits (where an integer beyond 64 bits may be)."""
    return data.translate(_DIGITS_TO_NUL).find(_RUN) >= 0


try:
    import orjson

    def loads(data: bytes | str) -> Any:
        if type(data) is bytes:
            if data.translate(_DIGITS_TO_NUL).find(_RUN) >= 0:
                return json.loads(data)
        elif _LONG_DIGITS_TEXT.search(str(data)) is not None:
            return json.loads(data)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)

    def loads_unchecked(data: bytes | str) -> Any:
        """`loads` without the long-integer check: an integer beyond 64 bits becomes a float."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - orjson is a dependency; this keeps a bare install working

    def loads(data: bytes | str) -> Any:
        return json.loads(data)

    loads_unchecked = loads

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


def loads_for(block: bytes) -> Callable[[bytes | str], Any]:
    """`loads` for the lines of block (a batch): one check of the whole block, and when no line
    can hold a long integer, no check per line."""
    return loads if has_long_digits(block) else loads_unchecked
