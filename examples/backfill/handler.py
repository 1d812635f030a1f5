"""The backfill example's handler: fetch one user from the API and return a flat row.

Contract (see the README, "The handler contract"): `process(item, ctx)` with `ctx.params`,
`ctx.acquire(n=1)`, `ctx.metrics.incr(name, n=1)`, `ctx.metrics.timer(name)` and `ctx.log`.
`ctx.acquire()` is called immediately before every HTTP request, retries included, so the
job-wide rate limit holds however many workers run.

Failures: 503 is retried here up to MAX_503_RETRIES more times, then the HTTPError propagates
(the framework classifies it as `server`, transient); 404 raises UserNotFound, a PermanentError
with `status = 404` (the user does not exist: trying again cannot help); any other HTTPError
(429, 401, ...), connection errors and timeouts propagate for the framework to classify.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# slurmctl/__init__.py does not re-export these yet; slurmctl.errors is where they live.
from slurmctl.errors import PermanentError, TransientError

TIMEOUT_S = 10.0
MAX_503_RETRIES = 2

_opener: urllib.request.OpenerDirector | None = None


class UserNotFound(PermanentError):
    """The API answered 404; `status` makes the framework file it as `not_found`."""

    status = 404


def setup(ctx: Any) -> None:
    """Build the opener once per worker process."""
    global _opener
    _opener = urllib.request.build_opener()


def teardown(ctx: Any) -> None:
    global _opener
    _opener = None


def _request(item: dict[str, Any], ctx: Any) -> urllib.request.Request:
    try:
        user_id = str(item["user_id"])
    except (KeyError, TypeError) as e:
        raise PermanentError(f"item has no user_id: {item!r}") from e
    base_url = str(ctx.params["base_url"]).rstrip("/")
    url = f"{base_url}/users/{urllib.parse.quote(user_id, safe='')}"
    headers = {"Accept": "application/json"}
    token = ctx.params.get("api_token")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers, method="GET")


def process(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    request = _request(item, ctx)
    user_id = str(item["user_id"])
    opener = _opener or urllib.request.build_opener()
    retries = 0
    while True:
        ctx.acquire()
        ctx.metrics.incr("api_requests")
        try:
            with ctx.metrics.timer("api"), opener.open(request, timeout=TIMEOUT_S) as response:
                body = response.read()
            break
        except urllib.error.HTTPError as e:
            if e.code == 503 and retries < MAX_503_RETRIES:
                e.close()
                retries += 1
                ctx.metrics.incr("retries")
                ctx.log.debug("user %s: 503, retry %d of %d", user_id, retries, MAX_503_RETRIES)
                continue
            if e.code == 404:
                e.close()
                raise UserNotFound(f"user {user_id} not found") from e
            raise
    try:
        user = json.loads(body)
        return {
            "user_id": user_id,
            "name": str(user["name"]),
            "followers": int(user["followers"]),
            "country": str(user["country"]),
            "signup": item.get("signup"),
        }
    except (ValueError, KeyError, TypeError) as e:
        raise TransientError(f"user {user_id}: malformed answer {body[:200]!r}") from e
