"""The circuit breaker against a dead API (issue 12): 3,000 items, 4 local workers, every request
answered 503. Measured at the API: the requests the job made before it stopped, and the seconds
from `submit` to its exit (3, paused by the breaker). Baseline in the same run: the same job with
`breaker: {enabled: false}`, which tries every item `retry.max_attempts` (3) times.

    .venv/bin/python bench/breaker.py             # 5 runs with the breaker, 1 without
    .venv/bin/python bench/breaker.py --quick     # 2 runs with the breaker, 1 without
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

sys.path.insert(0, str(common.REPO))

from tests.helpers import cli, make_job
from tests.outage_api import OutageAPI
from tests.test_breaker import API_HANDLER

ITEMS = 3000
GOAL_REQUESTS = 400


def run_once(base: Path, breaker: bool) -> dict[str, Any]:
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    with OutageAPI(base) as api:
        extra = f'params: {{base_url: "{api.url}"}}\nretry: {{max_attempts: 3, backoff_s: 0}}\n'
        if not breaker:
            extra += "breaker: {enabled: false}\n"
        config = make_job(
            base / "job", ITEMS, handler=API_HANDLER, batch_size=50, workers=4, extra=extra
        )
        t0 = time.monotonic()
        out = cli(base / "root", "submit", str(config), "--no-progress", timeout=900)
        seconds = time.monotonic() - t0
        return {"rc": out.returncode, "requests": api.count()["503"], "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--tmp", default=None)
    args = parser.parse_args()
    repeat = args.repeat or (2 if args.quick else 5)
    base = common.work_dir(args.tmp, "breaker")
    info = common.machine()
    common.header("circuit breaker: 3,000 items, 4 workers, a dead API (503)", info)
    before = common.load()
    runs = [run_once(base / f"on-{i}", True) for i in range(repeat)]
    off = run_once(base / "off", False)
    requests = [r["requests"] for r in runs]
    print(
        f"   breaker on : requests {requests} (median {common.median(requests):.0f}), exit "
        f"codes {sorted({r['rc'] for r in runs})}, seconds {[r['seconds'] for r in runs]}"
    )
    print(
        f"   breaker off: requests {off['requests']}, exit code {off['rc']}, "
        f"seconds {off['seconds']}"
    )
    print(
        f"   goal: at most {GOAL_REQUESTS} requests with the breaker: "
        + ("met" if max(requests) <= GOAL_REQUESTS else "NOT met")
    )
    print(f"   load: {common.load_text(before)}")
    path = common.save(
        "breaker", {"machine": info, "load": before, "on": runs, "off": off, "goal": GOAL_REQUESTS}
    )
    print(f"   saved {path}")


if __name__ == "__main__":
    main()
