"""Real jobs (the CLI, 4 worker processes) against a strict API that answers 429 above its
limit, on the embedded backend and on AWS (moto server): zero strict 429s; a throttling episode
(injected 429s with Retry-After) cuts the rate job-wide, holds it, and it recovers; `set-rate`
takes effect within a second; `pause` silences the API within a second and `resume` restarts it.
Everything is measured at the server, from its request log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slurmctl.cli import Env
from tests.helpers import cli, make_job, popen, status, task_manifests, wait_for
from tests.ratelimit.strict_api import HANDLER, INJECTED_429, OK, STRICT_429, RemoteAPI

RATE, BURST, WORKERS = 40.0, 5, 4


@dataclass
class Run:
    root: Path
    job_id: str
    api: RemoteAPI
    proc: subprocess.Popen[str]
    kind: str

    def cli(self, *args: str) -> str:
        out = cli(self.root, *args)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def bucket(self) -> dict[str, Any]:
        """The bucket as `status --json` shows it (the CLI)."""
        buckets: list[dict[str, Any]] = status(self.root, self.job_id)["rate_limits"]
        assert len(buckets) == 1
        return buckets[0]

    def effective(self) -> float:
        """The bucket's effective rate now, read in-process (quicker than the CLI, to poll)."""
        b = Env(root=self.root, job_id=self.job_id).backend.state.get_bucket(self.job_id, "default")
        assert b is not None
        return b.effective_rate(time.time())

    def rate(self, since: float, until: float) -> float:
        return self.api.count(since, until) / (until - since)


def _sleep_until(t: float) -> None:
    """Waiting for a measuring window to pass (not synchronisation)."""
    time.sleep(max(0.0, t - time.time()))


@pytest.fixture(params=["local", "aws"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Run]:
    extra = f"rate_limit: {{tokens_per_sec: {RATE}, burst: {BURST}}}\n"
    with RemoteAPI(RATE, BURST, tmp_path) as api:
        extra += f"params: {{base_url: '{api.url}'}}\nretry: {{max_attempts: 1}}\n"
        if request.param == "aws":
            from tests.aws.jobs import new_place

            place = new_place(request.getfixturevalue("moto_endpoint"))
            extra += place.aws_section()
        config = make_job(
            tmp_path / "job", 4000, handler=HANDLER, extra=extra, batch_size=40, workers=WORKERS
        )
        env = {"SLURMCTL_MANIFEST_FLUSH_S": "1"}  # task manifests readable while it runs
        proc = popen(tmp_path / "root", "submit", "--no-progress", str(config), env=env)
        try:
            yield Run(tmp_path / "root", "t1", api, proc, request.param)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)
            assert "Traceback" not in err, err


def test_one_job_pause_set_rate_and_throttling(run: Run) -> None:
    api = run.api
    wait_for(
        lambda: run.rate(time.time() - 1.0, time.time()) >= 0.75 * RATE,
        timeout=60,
        what="the workers near the full rate",
    )
    # steady state: the configured rate, no more (utilisation is the benchmark's business)
    t0 = time.time()
    _sleep_until(t0 + 2.0)
    steady = run.rate(t0, t0 + 2.0)
    by_second = [api.count(t0 - 3 + i, t0 - 2 + i) for i in range(5)]
    assert 0.5 * RATE <= steady <= RATE + BURST / 2.0, (steady, by_second)

    # a throttling episode: every request answers 429 (Retry-After: 1) for 0.3 s
    t_inj = api.inject_429(0.3, retry_after=1.0)
    wait_for(lambda: api.count(t_inj, code=INJECTED_429) > 0, timeout=5, what="a 429")
    wait_for(
        lambda: run.effective() < 0.6 * RATE,
        timeout=5,
        what="the job-wide cut",
    )
    first_429 = api.log(t_inj)[0][0]
    # Retry-After: the whole job holds (a lease in flight may still go out right after)
    assert api.count(first_429 + 0.45, first_429 + 0.95, code=None) == 0
    wait_for(lambda: api.first_after(first_429 + 0.95) is not None, timeout=5, what="the end")
    restart = api.first_after(first_429 + 0.95)
    assert restart is not None
    # after the hold: the cut rate (half, recovering by 5% of the rate a second), job-wide
    _sleep_until(restart + 2.5)
    cut = run.rate(restart + 0.5, restart + 2.5)
    assert cut <= 0.5 * RATE + 0.05 * RATE * 3 + BURST / 2.0, cut
    e1 = run.effective()
    _sleep_until(time.time() + 1.0)
    e2 = run.effective()
    assert 0.5 * RATE <= e1 < e2 <= RATE  # recovering additively

    # set-rate: within a second the API sees the new rate (the backoff is cleared)
    run.cli("set-rate", run.job_id, "--rate", str(RATE / 4))
    t_set = time.time()
    _sleep_until(t_set + 3.0)
    after_set = run.rate(t_set + 1.0, t_set + 3.0)
    assert 0.6 * RATE / 4 <= after_set <= RATE / 4 + BURST / 2.0
    b = run.bucket()
    assert b["tokens_per_sec"] == RATE / 4 == b["effective_tokens_per_sec"]
    run.cli("set-rate", run.job_id, "--rate", str(RATE))

    # pause: silence within a second; resume: requests within a second
    wait_for(lambda: api.count(time.time() - 0.5) > 0, timeout=5, what="requests")
    run.cli("pause", run.job_id)
    t_pause = time.time()
    _sleep_until(t_pause + 2.5)
    last = api.last()
    assert last is not None
    assert last < t_pause + 1.0, last - t_pause
    assert api.count(t_pause + 1.0, code=None) == 0
    run.cli("resume", run.job_id)
    t_resume = time.time()
    wait_for(lambda: api.first_after(t_resume) is not None, timeout=5, what="requests again")
    first = api.first_after(t_resume)
    assert first is not None and first - t_resume < 1.0

    # never above the API's limit: no strict 429 in the whole run
    stats = api.stats()
    assert stats["status_429"] == 0, stats
    assert api.max_in_window(1.0) <= RATE + BURST
    assert api.count(code=STRICT_429) == 0 and api.count(code=OK) > 0

    # the exhaustion signal: the share of task time spent waiting for slots
    wait_for(lambda: run.bucket()["busy_ms"] > 0, timeout=30, what="a task's metrics")
    b = run.bucket()
    assert 0 < b["wait_share"] <= 1.0 and b["wait_ms"] > 0 and b["writes"] > 0
    if run.kind == "local":  # per task, in the task manifests
        wait_for(lambda: bool(task_manifests(run.root, "t1")), timeout=30, what="manifests")
        manifests = task_manifests(run.root, "t1")
        rl = manifests[0]["metrics"]["handler"]["ratelimit"]
        assert 0 < rl["wait_share"] <= 1 and rl["wait_s_by_bucket"]["default"] == rl["wait_s"]
    print(
        f"{run.kind}: steady {steady:.1f}/s, after the 429s {cut:.1f}/s (effective {e1:.1f} then "
        f"{e2:.1f}), after set-rate {after_set:.1f}/s, pause->silence {last - t_pause:.3f} s, "
        f"resume->request {first - t_resume:.3f} s, wait share {b['wait_share']}, {stats}"
    )
    history = [
        json.loads(x)["action"] for x in run.cli("history", run.job_id, "--json").splitlines()
    ]
    assert "set-rate" in history and "pause" in history
