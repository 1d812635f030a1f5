"""Observability of a real job run through the CLI: metrics in the task manifests, the job's
sums and time series, shipped logs without secrets, analyze-errors, and the dashboard."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli, make_job, status, task_manifest
from tests.observe.conftest import Recorder

SECRET = "tok-Zq8-very-secret-value"
HANDLER = """
from slurmctl import PermanentError

def process(item, ctx):
    i = int(item["id"])
    if i % 100 == 7:
        raise PermanentError("item %d is broken" % i)
    if 500 <= i < 600:
        raise ConnectionRefusedError("connection refused to 10.0.%d.%d:8080" % (i // 256, i % 256))
    token = ctx.params["api_token"]
    r = ctx.http.get(ctx.params["base_url"] + "/users/" + item["id"],
                     headers={"Authorization": "Bearer " + token})
    if i % 250 == 1:
        ctx.log.warning("user %s is slow (token %s)", i, token)
    r.raise_for_status()
    return {"id": item["id"], "name": r.json()["name"]}
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, http_server: Recorder) -> Iterator[Path]:
    """1000 items in 10 batches, one worker: 10 permanent failures (ids ending in 07), 99
    network failures (batch 5), 9 throttled (ids ending in 42, outside batch 5), the transient
    ones tried twice (retry_1)."""
    folder = tmp_path_factory.mktemp("observe")
    config = make_job(
        folder / "job",
        1000,
        handler=HANDLER,
        workers=1,
        extra=(
            "retry: {max_attempts: 2, backoff_s: 0}\n"
            f'params: {{base_url: "{http_server.url}", api_token: "${{OBS_TOKEN}}"}}\n'
        ),
    )
    root = folder / "root"
    run = cli(root, "submit", str(config), env={"OBS_TOKEN": SECRET})
    assert run.returncode == 0, run.stderr
    yield root


def test_task_manifest_metrics_are_present_and_plausible(job: Path) -> None:
    manifest = task_manifest(job, "t1", "task-000000")
    m = manifest["metrics"]
    assert m["items"] == 100 and m["handler_calls"] == 100
    assert m["succeeded"] == 98 and m["failed_permanent"] == 1 and m["failed_transient"] == 1
    assert m["failures_by_type"] == {"throttled": 1, "validation": 1}
    assert 0 < m["wall_s"] < 60 and 0 <= m["cpu_s"] < 60 and m["items_per_s"] > 0
    assert m["max_rss_kb"] > 10_000
    assert set(m["io"]) == {"read_bytes", "write_bytes", "rchar", "wchar"}
    assert all(isinstance(v, int) and v >= 0 for v in m["io"].values())
    http = m["http"]
    assert http["requests"] == 99 and http["errors"] == 0
    assert http["status"] == {"200": 98, "429": 1}
    assert http["bytes_sent"] == 0 and http["bytes_received"] > 98 * 20
    lat = http["latency_ms"]
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["max"] < 10_000 and lat["avg"] >= 0
    assert m["rate_limit_wait_s"] == 0.0
    assert not any(k.startswith("http.") for k in m["handler"]["counters"])
    assert manifest["node"] == socket.gethostname() and manifest["worker_id"] == "local-1-0"
    assert "slurm" in manifest


def test_job_sums_and_series_come_from_counters(job: Path) -> None:
    s = status(job, "t1")
    assert s["items_per_s"]["now"] == 0.0 and s["items_per_s"]["average"] > 0
    assert s["eta_s"] is None and s["workers_running"] == 0
    counters = _counters(job)
    series = {k: v for k, v in counters.items() if k.startswith("obs.ts.")}
    assert sum(series.values()) == 1108  # 1000 items, then 108 retried
    assert sum(v for k, v in counters.items() if k.startswith("obs.tf.")) == 118 + 108
    assert sum(v for k, v in counters.items() if k.startswith("obs.tt.")) == 18
    assert counters["obs.tasks"] == 12 and counters["obs.handler_calls"] == 1108
    assert counters["obs.http_requests"] == 891 + 9 and counters["obs.http_429"] == 18
    assert counters["obs.fail.network"] == 198 and counters["obs.fail.throttled"] == 18
    assert counters["obs.fail.validation"] == 10


def _counters(root: Path) -> dict[str, int]:
    from slurmctl.backends import open_local

    backend = open_local(root)
    try:
        return backend.state.counters("t1")
    finally:
        backend.close()


def test_logs_command_and_no_secret_anywhere(job: Path) -> None:
    run = cli(job, "logs", "t1", "--level", "WARNING")
    assert run.returncode == 0, run.stderr
    slow = [line for line in run.stdout.splitlines() if "is slow" in line]
    assert len(slow) == 3  # users 1, 251, 751 (501 is in the failing batch)
    assert all("(token ***)" in line and " WARNING local-1-0 task-" in line for line in slow)
    assert "INFO" not in run.stdout
    one = cli(job, "logs", "t1", "task-000002", "--json")
    entries = [json.loads(line) for line in one.stdout.splitlines()]
    assert entries and {e["task_id"] for e in entries} == {"task-000002"}
    assert {e["batch_id"] for e in entries} == {"batch-000002"}
    assert {e["phase"] for e in entries} == {"initial"}
    assert {"ts", "level", "event", "job_id", "worker_id"} <= set(entries[0])
    assert any("task-000002: 100 items (98 succeeded)" in e["event"] for e in entries)
    shipped = list((job / "objects/jobs/t1/logs").glob("*.jsonl"))
    assert {p.name for p in shipped} == {"local-1-0.jsonl", "local-2-0.jsonl"}
    for path in [*job.rglob("*"), *(job.parent / "job").rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_analyze_errors_groups_counts_and_hot_spots(job: Path) -> None:
    run = cli(job, "analyze-errors", "t1", "--json")
    assert run.returncode == 0, run.stderr
    a = json.loads(run.stdout)
    assert (a["failures"], a["items_processed"], a["final_failures"]) == (226, 1108, 118)
    got = [
        (g["error_type"], g["signature"], g["count"], g["final"], g["phases"]) for g in a["groups"]
    ]
    assert got == [
        (
            "network",
            "ConnectionRefusedError: connection refused to <ip>",
            198,
            99,
            {"initial": 99, "retry_1": 99},
        ),
        (
            "throttled",
            "HttpError: HTTP 429 Too Many Requests from <url:<ip>>",
            18,
            9,
            {"initial": 9, "retry_1": 9},
        ),
        ("validation", "PermanentError: item N is broken", 10, 10, {"initial": 10}),
    ]
    groups = {g["error_type"]: g for g in a["groups"]}
    assert groups["validation"]["sample_item_ids"] == ["7", "107", "207", "307", "407"]
    assert groups["network"]["sample_item_ids"] == ["500", "501", "502", "503", "504"]
    assert groups["validation"]["reasons"] == {"permanent error": 10}
    assert groups["network"]["reasons"] == {"retries exhausted": 99}
    assert groups["network"]["first_seen"] <= groups["network"]["last_seen"]
    assert [(h["phase"], h["dimension"], h["key"], h["failures"]) for h in a["hot_spots"]] == [
        ("initial", "batch", "batch-000005", 100)
    ]
    text = cli(job, "analyze-errors", "t1")
    assert "hot spots:\n  initial batch batch-000005: 100 of 100 items failed" in text.stdout
    assert "e.g. items 7, 107, 207, 307, 407" in text.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


@pytest.fixture(scope="module")
def dashboard(job: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slurmctl", "--root", str(job), "dashboard", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(base + "/healthz")
            break
        except OSError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def test_dashboard_pages_and_api(dashboard: str) -> None:
    code, ctype, index = _get(dashboard + "/")
    assert code == 200 and ctype.startswith("text/html")
    assert '<script src="/static/app.js">' in index
    _, ctype, jobs = _get(dashboard + "/api/jobs")
    [row] = json.loads(jobs)
    assert row["job_id"] == "t1" and row["status"] == "COMPLETED"
    assert (row["items"], row["done"], row["failed"]) == (1000, 1000, 118)
    _, ctype, page = _get(dashboard + "/job/t1")
    assert ctype.startswith("text/html") and "<title>slurmctl: t1</title>" in page
    assert '<span id="job-status" class="badge">COMPLETED</span>' in page
    initial = re.search(r'<script type="application/json" id="initial">(.*?)</script>', page)
    assert initial is not None
    embedded = json.loads(initial.group(1))
    assert embedded["status"]["job_id"] == "t1"
    _, ctype, api = _get(dashboard + "/api/jobs/t1")
    d: dict[str, Any] = json.loads(api)
    assert ctype == "application/json"
    assert d["status"]["items"]["succeeded"] == 882
    assert sum(p["items"] for p in d["series"]) == 1108
    assert d["resources"]["failures_by_type"] == {"network": 198, "throttled": 18, "validation": 10}
    assert d["resources"]["http_requests"] == 900
    # the oldest two: the workers start while submit still writes (streaming), either first
    assert {h["action"] for h in d["history"][-2:]} == {"submit", "workers"}
    _, _, errors = _get(dashboard + "/api/jobs/t1/errors")
    assert json.loads(errors)["hot_spots"][0]["key"] == "batch-000005"
    with pytest.raises(urllib.error.HTTPError) as missing:
        _get(dashboard + "/api/jobs/nope")
    assert missing.value.code == 404


def test_dashboard_serves_nothing_external(dashboard: str) -> None:
    """Every served file names only this server: no CDN, no font or script from elsewhere."""
    pages = ["/", "/job/t1", "/static/app.js", "/static/chart.js", "/static/style.css"]
    for path in pages:
        _, _, body = _get(dashboard + path)
        for url in re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", body):
            # the SVG namespace is a name, not a download
            assert url == "http://www.w3.org/2000/svg", (path, url)
        assert "@import" not in body and "cdn" not in body.lower()


def _parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A strict reading of the text format: HELP and TYPE before each family's samples."""
    samples = {}
    typed: set[str] = set()
    line_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+]+|NaN|[+-]Inf)$")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = line_re.match(line)
        assert m, line
        assert m.group(1) in typed, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        samples[(m.group(1), labels)] = float(m.group(4))
    return samples


def test_prometheus_metrics_endpoint(dashboard: str) -> None:
    _, ctype, text = _get(dashboard + "/metrics")
    assert ctype.startswith("text/plain; version=0.0.4")
    s = _parse_prometheus(text)
    job = ("job", "t1")
    assert s[("slurmctl_items", frozenset({job, ("state", "succeeded")}))] == 882
    assert s[("slurmctl_items_processed_total", frozenset({job}))] == 1108
    key = ("slurmctl_item_failures_total", frozenset({job, ("error_type", "network")}))
    assert s[key] == 198
    assert s[("slurmctl_http_requests_total", frozenset({job}))] == 900
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        return
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "slurmctl_items_processed" in names
