"""No resolved secret reaches the disk (issue 13, hole 11): not through a number written
literally in the definition, not through an exception in `setup()` or in a thread of the handler,
whose messages and tracebacks the worker logs. Through the real CLI."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import cli, make_job, status

TOKEN = "sk-live-7c1d9e55aa0f42"

SETUP_FAILS = """
def setup(ctx):
    raise RuntimeError("login refused for token " + ctx.params["api_token"])

def process(item, ctx):
    return {"id": item["id"]}
"""

THREAD_FAILS = """
import threading

def process(item, ctx):
    if item["id"] == "3":
        t = threading.Thread(target=_boom, args=(ctx.params["api_token"],))
        t.start()
        t.join()
    return {"id": item["id"]}

def _boom(token):
    raise ValueError("upstream rejected " + token)
"""

PARAMS = "params:\n  api_token: ${API_TOKEN}\n"


def _on_disk(folder: Path, needle: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_an_exception_in_setup_is_logged_and_reported_without_the_secret(tmp_path: Path) -> None:
    config = make_job(
        tmp_path / "job", 20, handler=SETUP_FAILS, batch_size=10, workers=1, extra=PARAMS
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", env={"API_TOKEN": TOKEN})
    assert run.returncode == 1, run.stderr
    reason = "handler setup() failed: RuntimeError: login refused for token ***"
    assert status(root, "t1")["error"] == reason
    assert run.stderr.strip().splitlines()[-1] == f"error: {reason}"
    logs = "".join(p.read_text() for p in (root / "logs").rglob("*.log"))
    assert "Traceback (most recent call last)" in logs and reason in logs
    assert TOKEN not in run.stdout + run.stderr
    assert _on_disk(tmp_path, TOKEN) == []


def test_an_uncaught_exception_in_a_handler_thread_is_printed_without_the_secret(
    tmp_path: Path,
) -> None:
    config = make_job(
        tmp_path / "job", 20, handler=THREAD_FAILS, batch_size=10, workers=1, extra=PARAMS
    )
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress", env={"API_TOKEN": TOKEN})
    assert run.returncode == 0, run.stderr
    logs = "".join(p.read_text() for p in (root / "logs").rglob("*.log"))
    assert "ValueError: upstream rejected ***" in logs
    assert _on_disk(tmp_path, TOKEN) == []


def test_a_secret_written_as_a_number_is_refused(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 20, batch_size=10, workers=1)
    config.write_text(config.read_text() + "params:\n  api_key: 8412763395561230\n")
    root = tmp_path / "root"
    run = cli(root, "submit", str(config), "--no-progress")
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        f"error: {config}:11: params.api_key: looks like a secret written literally (a number); "
        'write "${API_KEY}" and export API_KEY in the workers\' environment (or "${file:/path}")'
    )
    assert "8412763395561230" not in run.stderr
