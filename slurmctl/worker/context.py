"""The `ctx` a handler receives: params, the rate limiter, metrics and a logger."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from slurmctl.errors import UserError


class Metrics:
    """Counters and timers the handler keeps; summed into the task manifest."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.timers: dict[str, float] = {}

    def incr(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    @contextmanager
    def timer(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timers[name] = self.timers.get(name, 0.0) + time.perf_counter() - t0
            self.incr(f"{name}.calls")

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "timers_s": {k: round(v, 6) for k, v in self.timers.items()},
        }

    def reset(self) -> None:
        self.counters.clear()
        self.timers.clear()


Acquire = Callable[[int, str | None], float]


class Context:
    def __init__(
        self,
        params: Mapping[str, Any],
        acquire: Acquire,
        log: logging.Logger,
        job_id: str = "",
        worker_id: str = "",
    ) -> None:
        self.params = params
        self.metrics = Metrics()
        self.log = log
        self.job_id = job_id
        self.worker_id = worker_id
        self.task_id: str | None = None
        self._acquire = acquire

    def acquire(self, n: int = 1, bucket: str | None = None) -> float:
        """Block until the job-wide rate limiter grants n send slots; returns seconds waited."""
        if n < 1:
            raise UserError(f"ctx.acquire: n must be at least 1, got {n}")
        return self._acquire(n, bucket)


def no_limit(n: int, bucket: str | None) -> float:
    return 0.0
