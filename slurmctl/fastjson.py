"""JSON decoding on the hot paths (every input line at submit, every item in a worker).

orjson when installed (several times faster), else the standard library. A line orjson refuses is
decoded again by the standard library, which accepts what Python's json always did (NaN, integers
beyond 64 bits) and reports the error users expect.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson

    def loads(data: bytes | str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - orjson is a dependency; this keeps a bare install working

    def loads(data: bytes | str) -> Any:
        return json.loads(data)

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()
