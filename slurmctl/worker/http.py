"""`ctx.http`: a small urllib-based HTTP session that counts what it does into ctx.metrics.

No dependency beyond the standard library. Every request adds to the task's metrics:
`http.requests`, `http.errors` (no answer: connection refused, timeout), `http.bytes_sent`,
`http.bytes_received`, `http.status.<code>`, `http.latency_ms` (sum), `http.latency_max_ms` and a
latency histogram `http.latency_ms.le_<bound>`; the task manifest summarises them.

Like `requests`, a response with an error status is returned, not raised: call
`raise_for_status()` to raise `HttpError`, whose `status` attribute lets the framework classify
it (429 throttled, 5xx server, 404 not_found, other 4xx client).
"""

from __future__ import annotations

import json as jsonlib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from email.message import Message
from typing import Any, Protocol

LATENCY_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
DEFAULT_TIMEOUT_S = 30.0


class Counting(Protocol):
    counters: dict[str, int]

    def incr(self, name: str, n: int = 1) -> None: ...


class HttpError(Exception):
    """An HTTP error status; `status` (and `code`) carry it for the error classifier."""

    def __init__(self, status: int, reason: str, url: str) -> None:
        super().__init__(f"HTTP {status} {reason} from {_without_query(url)}")
        self.status = status
        self.code = status


class HttpResponse:
    def __init__(self, url: str, status: int, reason: str, headers: Message, content: bytes):
        self.url = url
        self.status = self.status_code = status
        self.reason = reason
        self.headers = headers
        self.content = content

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def text(self) -> str:
        charset = self.headers.get_content_charset() or "utf-8"
        return self.content.decode(charset, errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def raise_for_status(self) -> None:
        if not self.ok:
            raise HttpError(self.status, self.reason, self.url)


def _without_query(url: str) -> str:
    """Query strings often carry keys: error messages show scheme, host and path only."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class HttpSession:
    """`ctx.http.get(url)`, `.post(url, json=...)`, `.request(method, url, ...)`."""

    def __init__(self, metrics: Counting, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.metrics = metrics
        self.timeout = timeout
        self.headers: dict[str, str] = {}
        """Sent with every request (e.g. an Authorization header set in setup)."""
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener()

    def get(self, url: str, **kwargs: Any) -> HttpResponse:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> HttpResponse:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> HttpResponse:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> HttpResponse:
        return self.request("DELETE", url, **kwargs)

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> HttpResponse:
        if params:
            url += ("&" if urllib.parse.urlsplit(url).query else "?") + urllib.parse.urlencode(
                params
            )
        all_headers = {**self.headers, **(headers or {})}
        body: bytes | None = data.encode() if isinstance(data, str) else data
        if json is not None:
            body = jsonlib.dumps(json).encode()
            all_headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(url, data=body, headers=all_headers, method=method.upper())
        t0 = time.perf_counter()
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                content = resp.read()
                out = HttpResponse(url, resp.status, resp.reason, resp.headers, content)
        except urllib.error.HTTPError as e:
            content = e.read() if e.fp is not None else b""
            out = HttpResponse(url, e.code, str(e.reason), e.headers, content)
        except BaseException:
            self._count(t0, len(body or b""), 0, None)
            raise
        self._count(t0, len(body or b""), len(out.content), out.status)
        return out

    def _count(self, t0: float, sent: int, received: int, status: int | None) -> None:
        ms = int((time.perf_counter() - t0) * 1000)
        bound = next((b for b in LATENCY_BOUNDS_MS if ms <= b), None)
        m = self.metrics
        with self._lock:
            m.incr("http.requests")
            m.incr("http.bytes_sent", sent)
            m.incr("http.bytes_received", received)
            m.incr("http.latency_ms", ms)
            m.incr(f"http.latency_ms.le_{bound}" if bound else "http.latency_ms.le_inf")
            m.counters["http.latency_max_ms"] = max(m.counters.get("http.latency_max_ms", 0), ms)
            if status is None:
                m.incr("http.errors")
            else:
                m.incr(f"http.status.{status}")


def summarise(counters: Mapping[str, int]) -> dict[str, Any] | None:
    """The manifest's `http` section from a task's metric counters (None: no request made)."""
    requests = counters.get("http.requests", 0)
    if not requests:
        return None
    hist = [(b, counters.get(f"http.latency_ms.le_{b}", 0)) for b in LATENCY_BOUNDS_MS]
    hist.append((None, counters.get("http.latency_ms.le_inf", 0)))  # type: ignore[arg-type]
    top = counters.get("http.latency_max_ms", 0)

    def quantile(q: float) -> int:
        """The upper bound of the histogram bucket holding the q-quantile (at most the max)."""
        rank, seen = q * requests, 0
        for bound, n in hist:
            seen += n
            if seen >= rank:
                return min(bound, top) if bound is not None else top
        return top

    prefix = "http.status."
    statuses = {k.removeprefix(prefix): v for k, v in counters.items() if k.startswith(prefix)}
    return {
        "requests": requests,
        "errors": counters.get("http.errors", 0),
        "bytes_sent": counters.get("http.bytes_sent", 0),
        "bytes_received": counters.get("http.bytes_received", 0),
        "status": dict(sorted(statuses.items())),
        "latency_ms": {
            "avg": round(counters.get("http.latency_ms", 0) / requests, 1),
            "p50": quantile(0.5),
            "p95": quantile(0.95),
            "max": top,
        },
    }
