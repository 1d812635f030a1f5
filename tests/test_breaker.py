"""The circuit breaker, through the CLI against a real loopback API that is down, then up."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job, status
from tests.outage_api import OutageAPI

API_HANDLER = """
import json
import urllib.request


def process(item, ctx):
    ctx.acquire()
    url = ctx.params["base_url"] + "/item/" + item["id"]
    with urllib.request.urlopen(url, timeout=10) as r:
        return {"id": item["id"], "v": json.load(r)["v"]}
"""
REASON = re.compile(
    r"paused by the breaker: (\d+) of the last (\d+) items failed: server: HTTPError 503"
)


ITEMS = 1200
"""Well over the 200 to 400 requests the breaker lets through before it pauses the job (the
3,000 of docs/benchmarks.md's figure are the benchmark's, bench/breaker.py)."""


def _job(folder: Path, url: str, extra: str = "") -> Path:
    return make_job(
        folder,
        ITEMS,
        handler=API_HANDLER,
        batch_size=50,
        workers=4,
        extra=f'params: {{base_url: "{url}"}}\nretry: {{max_attempts: 3, backoff_s: 0}}\n' + extra,
    )


def test_breaker_pauses_a_job_against_a_dead_api_and_resume_completes_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with OutageAPI(tmp_path) as api:
        config = _job(tmp_path / "job", api.url, "rate_limit: {tokens_per_sec: 2000, burst: 20}\n")
        run = cli(root, "submit", str(config), "--no-progress")
        assert run.returncode == 3, run.stderr
        assert "Traceback" not in run.stderr
        requests = api.count()["503"]
        print(f"requests to the dead API before the breaker paused the job: {requests}")
        assert 200 <= requests <= 400, requests
        m = REASON.search(run.stderr)
        assert m is not None, run.stderr
        failed, window = int(m[1]), int(m[2])
        assert window >= 200 and failed == window, "every item failed, one error type"
        assert f"job t1: {m[0]}; `slurmctl resume t1` carries on" in run.stderr

        s = status(root, "t1")  # exit code 3 checked by the helper
        assert s["status"] == "PAUSED" and s["error"] == m[0] and s["eta_s"] is None
        assert [(b["name"], b["paused"]) for b in s["rate_limits"]] == [("default", True)]
        pauses = [h for h in _history(root) if h["action"] == "pause"]
        assert [(h["by"], h["reason"]) for h in pauses] == [("breaker", m[0])]
        alerts = json.loads((root / "objects/jobs/t1/alerts.json").read_text())
        [event] = [e for e in alerts["events"] if e["rule"] == "breaker"]
        assert event["state"] == "firing"
        assert event["text"] == f"[slurmctl] t1: circuit breaker tripped: {m[0]}"
        assert api.count()["503"] == requests, "no request while paused"

        api.set_up()
        resumed = cli(root, "resume", "t1", "--no-progress")
        assert resumed.returncode == 0, resumed.stderr
        assert "Traceback" not in resumed.stderr
        assert f"job t1: breaker closed ({m[0]})" in resumed.stdout
        assert f"job t1: COMPLETED: {ITEMS} succeeded, 0 failed permanently" in resumed.stdout
        got = assert_exactly_once(root, "t1", ITEMS)
        assert len(got["output"]) == ITEMS and not got["failures"]
        assert api.count()["200"] >= ITEMS  # a lease lost on a loaded machine may redo a few
    lifted = [h.get("lifted") for h in _history(root) if h["action"] == "resume"]
    assert "breaker" in lifted


def test_breaker_off_lets_every_attempt_through(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with OutageAPI(tmp_path) as api:
        config = make_job(
            tmp_path / "job",
            300,
            handler=API_HANDLER,
            batch_size=50,
            workers=2,
            extra=f'params: {{base_url: "{api.url}"}}\nretry: {{max_attempts: 1}}\n'
            "breaker: {enabled: false}\n",
        )
        run = cli(root, "submit", str(config), "--no-progress")
        assert run.returncode == 1, run.stderr
        assert api.count()["503"] == 300
        assert "error: all 300 items failed" in run.stderr


def test_breaker_section_is_validated(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 10, extra="breaker: {window: 200, share: 1.5}\n")
    run = cli(tmp_path / "root", "submit", str(config), "--dry-run")
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {config}:")
    assert "breaker.share" in run.stderr and "1.5" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def _history(root: Path) -> list[dict[str, object]]:
    out = cli(root, "history", "t1", "--json")
    return [json.loads(line) for line in out.stdout.splitlines()]
