"""Tests for examples/backfill/handler.py, against the mock API running in-process."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import urllib.error
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "backfill"
if str(ROOT) not in sys.path:  # the handler imports slurmctl, as it does on a worker
    sys.path.insert(0, str(ROOT))

from slurmctl.errors import PermanentError  # noqa: E402


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"backfill_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mock_api = _load("mock_api")
handler = _load("handler")


class FakeMetrics:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.timings: Counter[str] = Counter()

    def incr(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        try:
            yield
        finally:
            self.timings[name] += 1


class FakeCtx:
    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.acquired = 0
        self.metrics = FakeMetrics()
        self.log = logging.getLogger("test_example_handler")

    def acquire(self, n: int = 1) -> None:
        self.acquired += n


TOKEN = "tok"


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Any] = []

    def start(**kwargs: Any) -> tuple[Any, FakeCtx]:
        options = {"rate": 10_000.0, "burst": 1000, "fail_share": 0.0, "token": TOKEN}
        api = mock_api.start_server(**{**options, **kwargs})
        started.append(api)
        ctx = FakeCtx({"base_url": api.url + "/", "api_token": TOKEN})
        handler.setup(ctx)
        return api, ctx

    yield start
    handler.teardown(None)
    for api in started:
        api.stop()


def test_success_row(serve: Any) -> None:
    api, ctx = serve()
    row = handler.process({"user_id": "42", "signup": "2020-02-29"}, ctx)
    expected = mock_api.user_record("42")
    assert row == {
        "user_id": "42",
        "name": "user-42",
        "followers": expected["followers"],
        "country": expected["country"],
        "signup": "2020-02-29",
    }
    assert ctx.acquired == 1
    assert ctx.metrics.counters == {"api_requests": 1}
    assert ctx.metrics.timings == {"api": 1}
    assert api.stats()["ok"] == 1


def test_works_without_setup(serve: Any) -> None:
    _, ctx = serve()
    handler.teardown(ctx)
    assert handler.process({"user_id": "7", "signup": "2021-01-01"}, ctx)["name"] == "user-7"


def test_404_is_permanent(serve: Any) -> None:
    _, ctx = serve(not_found_every=97)
    with pytest.raises(PermanentError, match="user 194 not found"):
        handler.process({"user_id": "194", "signup": "2020-01-01"}, ctx)
    assert ctx.acquired == 1


def test_404_is_classified_not_found(serve: Any) -> None:
    classify = pytest.importorskip("slurmctl.worker.classify")
    _, ctx = serve(not_found_every=97)
    with pytest.raises(PermanentError) as info:
        handler.process({"user_id": "97", "signup": "2020-01-01"}, ctx)
    result = classify.classify(info.value)
    assert result.permanent and "user 97 not found" in str(info.value)
    assert result.type == "not_found"


def test_503_twice_then_success(serve: Any) -> None:
    api, ctx = serve(fail_share=1.0, fail_attempts=2)
    row = handler.process({"user_id": "5", "signup": "2020-01-01"}, ctx)
    assert row["name"] == "user-5"
    assert ctx.acquired == 3
    assert ctx.metrics.counters == {"api_requests": 3, "retries": 2}
    stats = api.stats()
    assert (stats["requests"], stats["status_503"], stats["ok"]) == (3, 2, 1)


def test_503_three_times_propagates(serve: Any) -> None:
    _, ctx = serve(fail_share=1.0, fail_attempts=3)
    with pytest.raises(urllib.error.HTTPError) as info:
        handler.process({"user_id": "5", "signup": "2020-01-01"}, ctx)
    assert info.value.code == 503
    assert ctx.acquired == 3
    assert ctx.metrics.counters == {"api_requests": 3, "retries": 2}


@pytest.mark.parametrize(("token", "code"), [("wrong", 401), (TOKEN, 429)])
def test_other_http_errors_propagate(serve: Any, token: str, code: int) -> None:
    _, ctx = serve(rate=0.2, burst=1)
    ctx.params["api_token"] = token
    if code == 429:
        handler.process({"user_id": "1", "signup": "2020-01-01"}, ctx)  # takes the only token
    with pytest.raises(urllib.error.HTTPError) as info:
        handler.process({"user_id": "2", "signup": "2020-01-01"}, ctx)
    assert info.value.code == code
    assert ctx.metrics.counters["retries"] == 0


def test_item_without_user_id_is_permanent(serve: Any) -> None:
    _, ctx = serve()
    with pytest.raises(PermanentError):
        handler.process({"signup": "2020-01-01"}, ctx)
    assert ctx.acquired == 0
