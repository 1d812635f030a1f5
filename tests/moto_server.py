"""A moto server as a real HTTP endpoint on loopback, for the AWS backend's tests.

`MotoServer` starts moto's server as a subprocess on a free port (through `tests/moto_launch.py`,
which serialises DynamoDB requests: moto's conditional writes are not atomic under concurrent
requests), polls until it answers, and stops it.
`freeze()` / `unfreeze()` (SIGSTOP / SIGCONT) simulate an outage without losing moto's state
(stopping moto would lose it). Never the in-process mock decorators: the backend talks HTTP.

Without moto's server extra the AWS tests are skipped with a loud reason, except under `CI=true`,
where they fail instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 30.0
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
"""Credentials for the fake endpoint, through boto3's default chain (the environment)."""


LAUNCHER = Path(__file__).with_name("moto_launch.py")


def moto_command() -> list[str] | None:
    """How to start moto's server: our launcher, on this interpreter's moto with the server extra.

    No fallback to a `moto_server` executable elsewhere: without the launcher's lock, concurrent
    conditional writes are not atomic in moto and multi-worker tests would see double claims.
    """
    if all(importlib.util.find_spec(m) is not None for m in ("moto", "flask", "werkzeug")):
        return [sys.executable, str(LAUNCHER)]
    return None


def _not_run(what: str, module_level: bool = False) -> None:
    """Skip loudly; under CI=true fail instead: CI must never skip the AWS tests."""
    reason = (
        f"AWS BACKEND TESTS NOT RUN: {what} is not installed (pip install 'slurmctl[dev]'); "
        "the AWS backend is untested on this machine"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require_boto3(module_level: bool = False) -> None:
    if importlib.util.find_spec("boto3") is None:
        _not_run("boto3", module_level)


def require_moto() -> list[str]:
    """The command to start moto's server, or a loud skip (a failure under CI=true)."""
    require_boto3()
    cmd = moto_command()
    if cmd is None:
        _not_run("moto's server (moto[server])")
    assert cmd is not None
    return cmd


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        """env: extra environment of the server (e.g. INITIAL_NO_AUTH_ACTION_COUNT)."""
        self.cmd = cmd
        self.log_dir = log_dir
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.frozen = False

    def start(self) -> str:
        last = ""
        for attempt in range(3):  # a free port may be taken between probe and bind: try another
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            log = self.log_dir / f"moto-{port}.log"
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(
                    [*self.cmd, "-H", "127.0.0.1", "-p", str(port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env={**os.environ, **self.env},
                )
            if self._wait_ready():
                return self.url
            self.stop()
            last = log.read_text(errors="replace")[-2000:]
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"moto server did not start ({' '.join(self.cmd)}):\n{last}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True  # it answered, even if with an error status
            except OSError:
                time.sleep(0.05)
        return False

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def unfreeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            self.frozen = False
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def fake_aws_env() -> Iterator[None]:
    """Fake credentials and region in the environment; AWS_PROFILE and endpoints cleared."""
    saved = dict(os.environ)
    os.environ.update(FAKE_ENV)
    for name in list(os.environ):
        if name == "AWS_PROFILE" or name.startswith("AWS_ENDPOINT_URL"):
            del os.environ[name]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def running_moto(log_dir: Path, env: dict[str, str] | None = None) -> Iterator[MotoServer]:
    server = MotoServer(require_moto(), log_dir, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server for the session; tests keep apart by table, bucket and queue names."""
    with fake_aws_env(), running_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def moto_endpoint(moto_server: MotoServer) -> str:
    return moto_server.url
