"""The CPU one worker spends per task: a job written by the library's `submit()` (nothing runs),
then one `slurmctl worker` process that drains it, its user + sys seconds read from
`getrusage(RUSAGE_CHILDREN)` (exact, not sampled).

On a shared machine wall-clock figures move with the load; a process's own CPU seconds move far
less, so this is the figure to compare two versions by, run alternately (issue 13's regression:
docs/benchmarks.md §13).

    .venv/bin/python bench/worker_cpu.py                                # 100,000 items, batch 100
    .venv/bin/python bench/worker_cpu.py --items 500000 --batch-size 1000 --repeat 3

Results: bench/out/worker_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

JOB_ID = "bench-worker-cpu"


def one_run(work: Path, items: int, batch_size: int) -> dict[str, Any]:
    from slurmctl.backends import open_local
    from slurmctl.config import load_job_definition
    from slurmctl.coordinator.submit import submit

    common.write_items(work / "input.jsonl", items)
    config = common.write_job(work, job_id=JOB_ID, batch_size=batch_size, workers=1)
    submit(open_local(work / "root"), load_job_definition(config))
    cmd = [
        *common.slurmctl_cmd(),
        "--root",
        str(work / "root"),
        "worker",
        "--job-id",
        JOB_ID,
        "--worker-id",
        "w1",
        "--scratch",
        str(work / "scratch"),
        "--poll",
        "0.1",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"worker exited {done.returncode}: {done.stderr[-2000:]}")
    user = after.ru_utime - before.ru_utime
    sys_ = after.ru_stime - before.ru_stime
    files = sum(1 for p in (work / "root" / "objects").rglob("*") if p.is_file())
    tasks = -(-items // batch_size)
    return {
        "wall_s": round(wall, 3),
        "user_s": round(user, 3),
        "sys_s": round(sys_, 3),
        "cpu_s": round(user + sys_, 3),
        "cpu_ms_per_task": round((user + sys_) * 1000 / tasks, 3),
        "object_files": files,
        "load_1min": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10,000 items, one run")
    ap.add_argument("--tmp", help="folder for the runs (default: $TMPDIR)")
    args = ap.parse_args()
    if args.quick:
        args.items, args.repeat = 10_000, 1
    tasks = -(-args.items // args.batch_size)
    m = common.machine()
    print(
        f"   {m['cores']} cores, {m['cpu_model']}, Python {m['python']}, {m['date_utc']}, "
        f"commit {m['git_commit']}"
    )
    runs = []
    for i in range(args.repeat):
        work = common.work_dir(args.tmp, "worker-cpu")
        try:
            r = one_run(work, args.items, args.batch_size)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        runs.append(r)
        print(
            f"   run {i + 1}: cpu {r['cpu_s']:.2f} s (user {r['user_s']:.2f}, "
            f"sys {r['sys_s']:.2f}), {r['cpu_ms_per_task']:.2f} ms per task, "
            f"wall {r['wall_s']:.2f} s, "
            f"{r['object_files']:,} object files, load {r['load_1min']:.1f}"
        )
    cpus = [r["cpu_s"] for r in runs]
    result = {
        "items": args.items,
        "batch_size": args.batch_size,
        "tasks": tasks,
        "runs": runs,
        "cpu_s_min": min(cpus),
        "cpu_s_median": statistics.median(cpus),
        "commit": common.git_commit(),
        "machine": m,
    }
    print(f"== cpu min {min(cpus):.2f} s, median {statistics.median(cpus):.2f} s")
    common.OUT.mkdir(parents=True, exist_ok=True)
    (common.OUT / "worker_cpu.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
