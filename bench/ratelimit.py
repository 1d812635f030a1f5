"""The shared rate limiter against a strict API (issue 5): 8 workers, 50 requests/s, burst 5.

A loopback API answers 429 above 50 requests/s (a token bucket of 5); a job of the real CLI
(`slurmctl submit`, 8 local worker processes) calls it once per item through `ctx.acquire()`.
Measured at the API, over `--duration` seconds from 1 s after every worker sent its first
request (start-up is not the limiter's business; it is reported apart): accepted requests per
second as a share of 50 (goal >= 0.95, the limit is 1.0) and strict 429s (goal 0); from the job's
counters, the bucket's writes per second and per token and the share of worker time spent
waiting for slots; then `pause` (the same store calls as the CLI, timed from the moment the
bucket write returns) to the API's last request. On the embedded backend and on AWS (a moto
server). Baseline in the same run: the same 8 processes with no shared limiter, each pacing
itself at 50/8 requests/s (a naive per-worker limiter).

    .venv/bin/python bench/ratelimit.py             # 30 s windows, both backends
    .venv/bin/python bench/ratelimit.py --quick     # 10 s windows
    .venv/bin/python bench/ratelimit.py --backends local
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

sys.path.insert(0, str(common.REPO))

from tests.helpers import make_job
from tests.ratelimit.strict_api import HANDLER, OK, STRICT_429, RemoteAPI

JOB_ID = "bench-rate"
WARMUP_S = 1.0
"""The window opens this long after the last of the workers sent its first request."""
GOAL_UTILISATION = 0.95

LATENCY = """
import random, time

def _work(item, ctx):
    # the work after the request (the API's latency, parsing): exponential around latency_ms,
    # the same for an item on either side
    mean = float(ctx.params.get("latency_ms", 0)) / 1000
    if mean:
        time.sleep(random.Random(item["id"]).expovariate(1 / mean))
"""

SHARED_HANDLER = (
    HANDLER.replace("def process(", "def _request(")
    + LATENCY
    + """
def process(item, ctx):
    out = _request(item, ctx)
    _work(item, ctx)
    return out
"""
)

NAIVE_HANDLER = (
    LATENCY
    + """
import json, urllib.request

_next = [0.0]

def process(item, ctx):
    # the naive per-worker limiter: this process alone, at rate / workers, burst 1
    interval = float(ctx.params["interval"])
    now = time.monotonic()
    if _next[0] > now:
        time.sleep(_next[0] - now)
    _next[0] = max(now, _next[0]) + interval
    url = ctx.params["base_url"] + "/item/" + item["id"]
    request = urllib.request.Request(url, headers={"X-Worker": ctx.worker_id})
    with urllib.request.urlopen(request, timeout=10) as r:
        json.loads(r.read())
    _work(item, ctx)
    return {"id": item["id"], "ok": True}
"""
)


@contextlib.contextmanager
def aws_endpoint(folder: Path) -> Iterator[str]:
    from tests.moto_server import fake_aws_env, running_moto

    folder.mkdir(parents=True, exist_ok=True)
    with fake_aws_env(), running_moto(folder) as server:
        yield server.url


def wait_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def run_side(
    folder: Path,
    args: argparse.Namespace,
    *,
    naive: bool,
    aws_section: str = "",
) -> dict[str, Any]:
    """One job against its own strict API; returns the figures."""
    rate, burst, workers, duration = args.rate, args.burst, args.workers, args.duration
    items = int(rate * (WARMUP_S + duration + 10) * 1.5)
    folder.mkdir(parents=True, exist_ok=True)
    with RemoteAPI(rate, burst, folder) as api:
        if naive:
            extra = (
                f"params: {{base_url: '{api.url}', interval: {workers / rate!r}, "
                f"latency_ms: {args.latency_ms}}}\n"
            )
        else:
            extra = (
                f"params: {{base_url: '{api.url}', latency_ms: {args.latency_ms}}}\n"
                f"rate_limit: {{tokens_per_sec: {rate}, burst: {burst}}}\n"
            )
        config = make_job(
            folder / "job",
            items,
            handler=NAIVE_HANDLER if naive else SHARED_HANDLER,
            extra=extra + "retry: {max_attempts: 1}\n" + aws_section,
            batch_size=args.batch_size,
            workers=workers,
            job_id=JOB_ID,
        )
        root = folder / "root"
        cmd = [*common.slurmctl_cmd(), "--root", str(root), "submit", "--no-progress", str(config)]
        with open(folder / "submit.log", "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.time() + 120
            while api.last() is None:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit(f"no request reached the API; see {folder / 'submit.log'}")
                time.sleep(0.02)
            first = api.log()[0][0]
            while len(api.workers_seen()) < workers and time.time() < deadline:
                time.sleep(0.1)  # the window opens once every worker is running
            all_in = max(api.workers_seen().values())
            t0 = all_in + WARMUP_S
            t1 = t0 + duration
            wait_until(t1)
            out: dict[str, Any] = {
                "workers_up_s": round(all_in - first, 3),
                "window_s": duration,
                "accepted": api.count(t0, t1),
                "accepted_per_s": round(api.count(t0, t1) / duration, 3),
                "utilisation": round(api.count(t0, t1) / (rate * duration), 4),
                "status_429_window": api.count(t0, t1, code=STRICT_429),
                "max_accepted_1s": api.max_in_window(1.0),
                "accepted_by_second": [
                    api.count(first + i, first + i + 1) for i in range(int(t1 - first))
                ],
            }
            if not naive:
                out |= pause_latency(root, api)
            out["status_429_total"] = api.count(code=STRICT_429)
            out["status_429_at_s"] = [round(t - first, 3) for t, c in api.log() if c == STRICT_429]
            out["requests_total"] = api.count(code=None)
            active_s = (out.get("paused_at") or time.time()) - first
            tokens = api.count(until=first + active_s, code=OK)
        finally:
            stop_group(proc)
    if not naive:
        out |= bucket_figures(root, active_s, tokens)
    return out


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the submit process and its workers; wait until every one has left (the workers
    move their counters as they stop)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def pause_latency(root: Path, api: RemoteAPI) -> dict[str, Any]:
    """Pause as `slurmctl pause` does; the API's last request after the bucket write returned."""
    from slurmctl.cli import Env

    backend = Env(root=root, job_id=JOB_ID).backend
    backend.state.update_job(JOB_ID, {"paused": True, "updated_at": time.time()})
    backend.state.set_buckets_paused(JOB_ID, True)
    paused_at = time.time()
    wait_until(paused_at + 2.5)
    last = api.last() or paused_at
    return {
        "paused_at": paused_at,
        "pause_to_silence_s": round(max(0.0, last - paused_at), 3),
        "requests_after_pause_1s": api.count(paused_at + 1.0, code=None),
    }


def bucket_figures(root: Path, active_s: float, tokens: int) -> dict[str, Any]:
    """The workers' counters (moved once per task, and when they stop)."""
    from slurmctl.cli import Env

    counters = Env(root=root, job_id=JOB_ID).backend.state.counters(JOB_ID)
    writes = counters.get("ratelimit.default.writes", 0)
    busy = counters.get("worker.busy_ms", 0)
    return {
        "bucket_writes": writes,
        "bucket_writes_per_s": round(writes / active_s, 1) if active_s else 0.0,
        "bucket_writes_per_token": round(writes / tokens, 3) if tokens else 0.0,
        "wait_share": round(counters.get("ratelimit.wait_ms", 0) / busy, 3) if busy else 0.0,
    }


def describe(name: str, r: dict[str, Any], rate: float) -> str:
    line = (
        f"   {name:<28} {r['accepted_per_s']:6.2f}/s of {rate:g} = {r['utilisation']:.3f}, "
        f"429s {r['status_429_window']} in the window ({r['status_429_total']} in all), "
        f"max {r['max_accepted_1s']} accepted in 1 s"
    )
    if "bucket_writes_per_s" in r:
        line += (
            f"\n   {'':<28} bucket writes {r['bucket_writes_per_s']}/s "
            f"({r['bucket_writes_per_token']} per token), pause -> silence "
            f"{r['pause_to_silence_s'] * 1000:.0f} ms, wait share {r['wait_share']}"
        )
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 s windows")
    parser.add_argument("--duration", type=float, default=None, help="window seconds (30)")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=100, help="items per task")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="mean work after each request (exponential): uneven workers",
    )
    parser.add_argument("--backends", default="local,aws")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    args.duration = args.duration or (10.0 if args.quick else 30.0)
    info = common.machine()
    common.header(
        f"rate limiter: {args.workers} workers, strict API {args.rate:g}/s burst {args.burst}, "
        f"{args.duration:g} s windows, batch_size {args.batch_size}, "
        f"work after each request {args.latency_ms:g} ms (mean)",
        info,
    )
    base = common.work_dir(args.tmp, "ratelimit")
    result: dict[str, Any] = {"machine": info, "args": vars(args), "runs": {}}
    try:
        with common.Monitor() as mon:
            for kind in args.backends.split(","):
                folder = base / kind
                if kind == "aws":
                    from tests.aws.jobs import new_place

                    with aws_endpoint(folder / "moto") as endpoint:
                        section = new_place(endpoint).aws_section()
                        r = run_side(folder, args, naive=False, aws_section=section)
                else:
                    r = run_side(folder, args, naive=False)
                result["runs"][f"slurmctl-{kind}"] = r
                print(describe(f"slurmctl ({kind})", r, args.rate), flush=True)
            if not args.no_baseline:
                r = run_side(base / "naive", args, naive=True)
                result["runs"]["naive-per-worker"] = r
                print(describe("naive per-worker limiter", r, args.rate), flush=True)
        result["load"] = mon.summary
        print(f"   meanwhile: {common.Monitor.describe(mon.summary)}")
        goals = [
            r["utilisation"] >= GOAL_UTILISATION and r["status_429_total"] == 0
            for name, r in result["runs"].items()
            if name.startswith("slurmctl")
        ]
        result["goals_met"] = all(goals)
        print(f"   goals (>= {GOAL_UTILISATION} of the rate, no 429): {all(goals)}")
        name = "ratelimit" + (f"-latency{args.latency_ms:g}" if args.latency_ms else "")
        print(f"   saved {common.save(name, result)}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
