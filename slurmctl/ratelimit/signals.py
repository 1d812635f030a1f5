"""What a throttled request says about when to try again: the Retry-After of an HTTP 429 or 503
(seconds or an HTTP date), found on the exceptions of urllib, requests, httpx and botocore, or a
`retry_after` attribute a handler's own exception carries."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any


def parse_retry_after(value: Any, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None if unusable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return max(0.0, float(value))
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _header(headers: Any, name: str = "Retry-After") -> Any:
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    value = getter(name)
    if value is None and isinstance(headers, Mapping):  # a plain dict: any case
        lowered = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == lowered), None)
    return value


def retry_after_of(exc: BaseException, now: float | None = None) -> float | None:
    """The Retry-After an exception carries, in seconds from now, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the exception, then its causes
        seen.add(id(current))
        own = getattr(current, "retry_after", None)
        if own is not None:
            return parse_retry_after(own, now)
        value = _header(getattr(current, "headers", None))  # urllib's HTTPError
        response = getattr(current, "response", None)
        if value is None and response is not None:
            if isinstance(response, Mapping):  # botocore's ClientError
                meta = response.get("ResponseMetadata") or {}
                value = _header(meta.get("HTTPHeaders"))
            else:  # requests, httpx
                value = _header(getattr(response, "headers", None))
        if value is not None:
            return parse_retry_after(value, now)
        current = current.__cause__ or current.__context__
    return None
