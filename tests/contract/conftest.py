"""The backend contract suite runs, unchanged, against every implementation.

Add an implementation by adding a name to BACKENDS and a branch to `make_backend`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmctl.backends import Backend, open_local

BACKENDS = ["local"]


def make_backend(kind: str, tmp_path: Path) -> Backend:
    if kind == "local":
        return open_local(tmp_path / "root")
    raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = make_backend(request.param, tmp_path)
    yield b
    b.close()
