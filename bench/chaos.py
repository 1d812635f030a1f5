"""The chaos job of issue 13 against its own undisturbed run: 6,000 items, 4 local workers, a
loopback API whose first call for 1 id in 11 answers 503 (so a retry phase, 1 s backoff), and
in the chaos run a worker SIGKILLed every 3 s. Leases are 120 s: a dead worker's task must be
freed by the executor at once, or the chaos run takes minutes longer than the undisturbed one.

    .venv/bin/python bench/chaos.py             # --items 6000 --workers 4 --kill-every 3
    .venv/bin/python bench/chaos.py --repeat 3  # medians of alternating runs
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

sys.path.insert(0, str(common.REPO))

from tests.faults.chaos import FlakyAPI, chaos_job, run_chaos
from tests.helpers import assert_exactly_once


def one(
    work: Path, name: str, items: int, workers: int, kill_every: float | None
) -> dict[str, Any]:
    with FlakyAPI.running() as api, common.Monitor() as mon:
        config = chaos_job(work / f"{name}-job", api.url, items, workers)
        run = run_chaos(work / f"{name}-root", config, kill_every_s=kill_every, timeout_s=600)
    if run.returncode != 0:
        raise SystemExit(f"{name}: exit {run.returncode}: {run.out}{run.err}")
    assert_exactly_once(work / f"{name}-root", "t1", items)
    return {"wall_s": run.wall_s, "kills": run.kills, "machine_load": mon.summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=6000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--kill-every", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the defaults already take under 60 s")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    info = common.machine()
    common.header(
        f"chaos: {args.items:,} items, {args.workers} workers, a SIGKILL every "
        f"{args.kill_every:g} s, 1 id in 11 answering 503 once",
        info,
    )
    work = common.work_dir(args.tmp, "chaos")
    result: dict[str, Any] = {"args": vars(args), "machine": info, "runs": []}
    try:
        for r in range(args.repeat):
            quiet = one(work, f"quiet-{r}", args.items, args.workers, None)
            chaos = one(work, f"chaos-{r}", args.items, args.workers, args.kill_every)
            result["runs"].append({"undisturbed": quiet, "chaos": chaos})
            print(
                f"   run {r}: undisturbed {quiet['wall_s']:.1f} s, chaos {chaos['wall_s']:.1f} s "
                f"({chaos['kills']} workers killed), ratio {chaos['wall_s'] / quiet['wall_s']:.2f}"
            )
            print(f"     meanwhile: {common.Monitor.describe(chaos['machine_load'])}")
    finally:
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    quiet_s = common.median([r["undisturbed"]["wall_s"] for r in result["runs"]])
    chaos_s = common.median([r["chaos"]["wall_s"] for r in result["runs"]])
    result.update(undisturbed_s=quiet_s, chaos_s=chaos_s, ratio=chaos_s / quiet_s)
    print(f"== undisturbed {quiet_s:.1f} s, chaos {chaos_s:.1f} s, ratio {chaos_s / quiet_s:.2f}")
    print(f"   results: {common.save('chaos', result)}")


if __name__ == "__main__":
    main()
