"""Submit throughput: `submit()` cutting the input into batches and writing tasks, counters and
the queue (the library call, so no worker runs), against `split -l` on the same file.

    .venv/bin/python bench/submit.py            # 1,000,000 items into 10,000 batches of 100
    .venv/bin/python bench/submit.py --quick    # 100,000 items, < 60 s
    .venv/bin/python bench/submit.py --profile  # also a py-spy profile of the submit
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

JOB_ID = "bench-submit"


def run_split(input_path: Path, work: Path, batch_size: int) -> dict[str, Any]:
    out = work / "split"
    out.mkdir(parents=True)
    cpu0 = common.children_cpu_s()
    t0 = time.perf_counter()
    subprocess.run(
        ["split", "-l", str(batch_size), "-a", "6", str(input_path), str(out / "batch-")],
        check=True,
    )
    wall = time.perf_counter() - t0
    files = sum(1 for _ in out.iterdir())
    return {"wall_s": wall, "cpu_s": common.children_cpu_s() - cpu0, "files": files}


def run_submit(folder: Path) -> dict[str, Any]:
    """The library's submit, in this process: load the definition, then time submit()."""
    from slurmctl.backends import open_local
    from slurmctl.config import load_job_definition
    from slurmctl.coordinator.submit import submit

    root = folder / "root"
    t0 = time.perf_counter()
    backend = open_local(root)
    definition = load_job_definition(folder / "job.yaml")
    t1 = time.perf_counter()
    cpu0 = time.process_time()
    result = submit(backend, definition)
    wall = time.perf_counter() - t1
    cpu = time.process_time() - cpu0
    job = backend.state.get_job(result.job_id)
    counters = backend.state.counters(result.job_id)
    batches = sum(1 for _ in (root / "objects" / "jobs" / JOB_ID / "batches").iterdir())
    backend.close()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "setup_s": t1 - t0,
        "task_count": job.task_count if job else None,
        "item_count": job.item_count if job else None,
        "counters": counters,
        "batch_files": batches,
        "state_mb": round(sum(p.stat().st_size for p in root.glob("*.sqlite*")) / 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two sides N times")
    ap.add_argument("--quick", action="store_true", help="100,000 items (< 60 s)")
    ap.add_argument("--profile", action="store_true", help="then one more submit under py-spy")
    ap.add_argument("--profile-items", type=int, help="items of the profiled run (default --items)")
    ap.add_argument("--tmp", help="folder for the inputs and outputs (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--only-submit", metavar="FOLDER", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only_submit:  # the profiled child: one submit, its figures on stdout
        print(json.dumps(run_submit(Path(args.only_submit))))
        return
    if args.quick:
        args.items = min(args.items, 100_000)

    info = common.machine()
    batches = -(-args.items // args.batch_size)
    common.header(
        f"submit: {args.items:,} items into {batches:,} batches of {args.batch_size}", info
    )
    work = common.work_dir(args.tmp, "submit")
    result: dict[str, Any] = {"args": vars(args), "machine": info, "runs": []}
    try:
        input_path = work / "input.jsonl"
        size = common.write_items(input_path, args.items)
        print(f"   input {input_path} ({size / 1e6:.1f} MB)")
        for r in range(args.repeat):
            run: dict[str, Any] = {}
            folder = work / f"job-{r}"
            common.write_job(folder, job_id=JOB_ID, batch_size=args.batch_size, workers=2)
            shutil.copyfile(input_path, folder / "input.jsonl")
            common.warm(folder / "input.jsonl")
            with common.Monitor() as mon:
                run["slurmctl"] = s = run_submit(folder)
            s["machine_load"] = mon.summary
            if s["task_count"] != batches or s["item_count"] != args.items:
                raise SystemExit(f"submit wrote {s['task_count']} tasks, {s['item_count']} items")
            s["items_per_s"] = args.items / s["wall_s"]
            shutil.rmtree(folder, ignore_errors=True)
            common.warm(input_path)
            with common.Monitor() as mon:
                run["baseline"] = b = run_split(input_path, work / f"split-{r}", args.batch_size)
            b["machine_load"] = mon.summary
            if b["files"] != batches:
                raise SystemExit(f"split wrote {b['files']} files, expected {batches}")
            b["items_per_s"] = args.items / b["wall_s"]
            shutil.rmtree(work / f"split-{r}", ignore_errors=True)
            result["runs"].append(run)
            report(run)
        if args.profile:
            result["profile"] = profile(work, args)
    finally:
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    runs = result["runs"]
    s_rate = common.median([r["slurmctl"]["items_per_s"] for r in runs])
    b_rate = common.median([r["baseline"]["items_per_s"] for r in runs])
    result.update(slurmctl_items_per_s=s_rate, baseline_items_per_s=b_rate, ratio=s_rate / b_rate)
    print(
        f"== submit {common.fmt_rate(s_rate)} items/s, split -l {common.fmt_rate(b_rate)} "
        f"items/s, ratio {s_rate / b_rate:.3f}"
    )
    print(f"   results: {common.save('submit', result)}")


def report(run: dict[str, Any]) -> None:
    s, b = run["slurmctl"], run["baseline"]
    print(
        f"   submit()  {s['wall_s']:7.2f} s  {common.fmt_rate(s['items_per_s']):>9} items/s  "
        f"cpu {s['cpu_s']:.1f} s  {s['task_count']:,} tasks, {s['batch_files']:,} batch files, "
        f"state {s['state_mb']} MB (open + load definition {s['setup_s']:.2f} s, not counted)"
    )
    print(f"     meanwhile: {common.Monitor.describe(s['machine_load'])}")
    print(
        f"   split -l  {b['wall_s']:7.2f} s  {common.fmt_rate(b['items_per_s']):>9} items/s  "
        f"cpu {b['cpu_s']:.1f} s  {b['files']:,} files"
    )
    print(f"     meanwhile: {common.Monitor.describe(b['machine_load'])}")
    print(f"   ratio submit/split {s['items_per_s'] / b['items_per_s']:.3f}")


def profile(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    count = args.profile_items or args.items
    folder = work / "profile"
    common.write_job(folder, job_id=JOB_ID, batch_size=args.batch_size, workers=2)
    common.write_items(folder / "input.jsonl", count)
    raw = common.OUT / "submit-profile.txt"
    print(f"== profile: submit of {count:,} items under py-spy (not timed)")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only-submit", str(folder)]
    return common.profile_run(cmd, raw)


if __name__ == "__main__":
    main()
