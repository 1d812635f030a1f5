"""The dashboard in headless Chromium (Debian's `chromium`, driven from the command line: no
browser download): the page of a running job renders its figures, the progress changes, and a
screenshot is saved (to $SLURMCTL_TEST_ARTIFACTS, else the test's temporary folder)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_job, popen, status, wait_for
from tests.observe.test_alerts_job import _succeeded
from tests.observe.test_observe_job import _free_port, _get

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
if CHROMIUM is None and os.environ.get("CI") == "true":
    pytest.fail("no chromium: .ci/run installs it; CI must run the browser test", pytrace=False)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="BROWSER TEST NOT RUN: no chromium (apt-get install chromium)"
)

SLOW = """
import time

def process(item, ctx):
    time.sleep(0.02)
    return {"id": item["id"]}
"""


def _chromium(*args: str) -> str:
    assert CHROMIUM is not None
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,1900",
            "--virtual-time-budget=3000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _rate(root: Path) -> float:
    """The job's average items/s from its series (what the chart draws); 0 before any."""
    if not _succeeded(root):
        return 0.0
    return float(status(root, "t1")["items_per_s"]["average"])


def _progress(dom: str) -> str:
    m = re.search(r'<div class="v">([^<]*)</div><div class="k">progress</div>', dom)
    assert m, dom[:3000]
    return m.group(1)


def test_the_job_page_renders_and_follows_a_running_job(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 900, handler=SLOW, batch_size=20, workers=2)
    root = tmp_path / "root"
    submit = popen(root, "submit", "--no-progress", str(config))
    port = _free_port()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "slurmctl", "--root", str(root), "dashboard", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/job/t1"
    try:
        # the chart's series are metrics, which each worker writes every 5 s (or 50 tasks)
        wait_for(lambda: _rate(root) > 0, timeout=60, what="the first commits' series")
        wait_for(lambda: _up(port), timeout=30, what="the dashboard")
        first = _chromium("--dump-dom", url)
        early = _progress(first)
        assert "/900" in early and early != "900/900 (100%)"
        assert "<svg" in first and 'class="rate"' in first  # the chart drew bars
        assert "<th>phase</th>" in first and "initial" in first
        submit.communicate(timeout=120)
        assert submit.returncode == 0
        later = _chromium("--dump-dom", url)
        assert _progress(later) == "900/900 (100%)" != early
        assert 'class="badge COMPLETED"' in later
        artifacts = Path(os.environ.get("SLURMCTL_TEST_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = artifacts / "dashboard-job.png"
        _chromium(f"--screenshot={shot}", url)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    finally:
        for proc in (submit, dashboard):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _up(port: int) -> bool:
    try:
        _get(f"http://127.0.0.1:{port}/healthz")
        return True
    except OSError:
        time.sleep(0.1)
        return False


def test_the_job_page_shows_the_items_in_flight_and_their_latency(tmp_path: Path) -> None:
    from tests.helpers import cli, status

    config = make_job(
        tmp_path / "job", 120, handler=SLOW, batch_size=40, workers=1, extra="concurrency: 4\n"
    )
    root = tmp_path / "root"
    run = cli(root, "submit", "--no-progress", str(config), timeout=120)
    assert run.returncode == 0, run.stderr
    flight = status(root, "t1")["in_flight"]
    port = _free_port()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "slurmctl", "--root", str(root), "dashboard", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _up(port), timeout=30, what="the dashboard")
        dom = _chromium("--dump-dom", f"http://127.0.0.1:{port}/job/t1")
    finally:
        dashboard.kill()
        dashboard.wait()
    figures = dict(
        (k, v)
        for v, k in re.findall(r'<div class="v">([^<]*)</div><div class="k">([^<]*)</div>', dom)
    )
    shown = float(figures["items in flight / worker"])  # one decimal at most
    assert abs(shown - flight["items_per_worker"]) <= 0.051, (shown, flight)
    latency = figures["item latency (avg)"]
    assert latency.endswith(" ms") and float(latency[:-3]) == flight["item_latency_ms"], latency
    assert 20 <= flight["item_latency_ms"] < 1000 and 1 < flight["items_per_worker"] <= 4
