"""Classify a handler's exception into one of the error types.

The job's own `error_rules` are tried first, then the defaults: our own exception types, HTTP
status codes found on the exception (urllib's `code`, requests' `response.status_code`), and the
standard network and timeout exceptions.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from slurmctl.errors import PermanentError, TransientError

TRANSIENT = frozenset(
    {"network", "timeout", "throttled", "server", "preempted", "crash", "oom", "unknown"}
)
PERMANENT = frozenset({"not_found", "client", "validation", "poison", "schema"})


class Rule(Protocol):
    """What the job definition's `error_rules` entries offer."""

    @property
    def type(self) -> str: ...
    @property
    def exception(self) -> str | None: ...
    @property
    def message(self) -> str | None: ...
    @property
    def status(self) -> int | None: ...


@dataclass(frozen=True)
class Classified:
    type: str
    message: str
    signature: str

    @property
    def permanent(self) -> bool:
        return self.type in PERMANENT


_NUMBERS = re.compile(r"\b0x[0-9a-f]+\b|\d+(\.\d+)?", re.IGNORECASE)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def signature(exc_type: str, message: str) -> str:
    """The message with ids, numbers and quoted values normalised away, to group failures."""
    text = _NUMBERS.sub("N", _QUOTED.sub("'…'", message))
    return f"{exc_type}: {text}"[:200]


def http_status(exc: BaseException) -> int | None:
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    response: Any = getattr(exc, "response", None)
    value = getattr(response, "status_code", None) or getattr(response, "status", None)
    return value if isinstance(value, int) and 100 <= value <= 599 else None


def _by_status(status: int) -> str:
    if status == 429:
        return "throttled"
    if status >= 500:
        return "server"
    if status in (404, 410):
        return "not_found"
    if status == 408:
        return "timeout"
    return "client" if status >= 400 else "unknown"


def _matches(rule: Rule, exc: BaseException, message: str, status: int | None) -> bool:
    if rule.exception is not None:
        names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
        names |= {c.__qualname__ for c in type(exc).__mro__}
        if rule.exception not in names:
            return False
    if rule.message is not None and not re.search(rule.message, message):
        return False
    return not (rule.status is not None and rule.status != status)


def _default_type(exc: BaseException, status: int | None) -> str:
    if isinstance(exc, TransientError):
        return "throttled" if status == 429 else ("server" if status else "unknown")
    if isinstance(exc, PermanentError):
        return _by_status(status) if status else "validation"
    if status is not None:
        return _by_status(status)
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionError | socket.gaierror | ssl.SSLError):
        return "network"
    reason = getattr(exc, "reason", None)  # urllib.error.URLError wraps the socket error
    if isinstance(reason, BaseException):
        return _default_type(reason, None)
    if isinstance(exc, OSError) and exc.errno is not None:
        return "network"
    if isinstance(exc, ValueError | KeyError | TypeError):
        return "validation"
    return "unknown"


def classify(exc: BaseException, rules: Sequence[Rule] = ()) -> Classified:
    message = str(exc) or type(exc).__name__
    status = http_status(exc)
    kind = next((r.type for r in rules if _matches(r, exc, message, status)), None)
    if kind is None:
        kind = _default_type(exc, status)
        if kind == "validation" and not isinstance(exc, PermanentError | TransientError):
            # a plain ValueError in the handler is as likely a bug as a bad item: retry it
            kind = "unknown"
    name = type(exc).__name__
    return Classified(kind, f"{name}: {message}"[:1000], signature(name, message))
