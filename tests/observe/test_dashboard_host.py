"""The dashboard answers only requests that name it (issue 13, hole 12): a page of another site
whose name was rebound to 127.0.0.1 sends its own name in the Host header and gets 421, not the
jobs. A real dashboard process, real HTTP requests."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers import cli, make_job, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(port: int, host: str | None, path: str = "/api/jobs") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("dash")
    config = make_job(tmp / "job", 10, batch_size=10, workers=1)
    root = tmp / "root"
    assert cli(root, "submit", str(config), "--no-progress").returncode == 0
    port = _free_port()
    args = ["dashboard", "--port", str(port), "--allow-host", "jobs.example.org"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "slurmctl", "--root", str(root), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            return _get(port, f"127.0.0.1:{port}", "/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=30, what="the dashboard")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    "name", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]", "jobs.example.org"]
)
def test_its_own_names_with_its_port_are_answered(dashboard: int, name: str) -> None:
    status, body = _get(dashboard, f"{name}:{dashboard}")
    assert status == 200
    assert [j["job_id"] for j in json.loads(body)] == ["t1"]


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example:{port}",
        "attacker.example",
        "127.0.0.1:1",
        "localhost",
        None,
        "127.0.0.1.evil:{port}",
    ],
)
def test_a_foreign_host_header_is_refused(dashboard: int, host: str | None) -> None:
    status, body = _get(dashboard, None if host is None else host.format(port=dashboard))
    assert status == 421
    assert json.loads(body) == {"error": "this dashboard answers only for its own host names"}
    assert b"t1" not in body
