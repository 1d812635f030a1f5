"""`status` latency against the number of tasks (docs/architecture.md invariant 5: O(1), under a
second at 100k tasks): the library call `job_status()` and the CLI `status --json`, at two job
sizes, with `slurmctl --version` as the CLI's start-up baseline.

    .venv/bin/python bench/status_latency.py            # 1,000 and 100,000 tasks
    .venv/bin/python bench/status_latency.py --quick    # 1,000 and 10,000 tasks, < 60 s
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

JOB_ID = "bench-status"
GOAL_RATIO = 2.0
GOAL_ABS_S = 1.0


def build_job(folder: Path, size: int, commit_share: float, running_share: float) -> dict[str, Any]:
    """A job of `size` tasks (batch_size 1), written by the library's submit (nothing runs);
    then a share of its tasks claimed and committed through the state store, and a share left
    RUNNING, so the counters are not trivial."""
    from slurmctl.backends import open_local
    from slurmctl.backends.statestore import TaskCommit
    from slurmctl.config import load_job_definition
    from slurmctl.coordinator.submit import submit

    common.write_items(folder / "input.jsonl", size)
    config = common.write_job(folder, job_id=JOB_ID, batch_size=1, workers=2)
    backend = open_local(folder / "root")
    t0 = time.perf_counter()
    submit(backend, load_job_definition(config))
    t_submit = time.perf_counter() - t0
    commits = int(size * commit_share)
    running = int(size * running_share)
    state = backend.state
    t0 = time.perf_counter()
    task_ids = [t.task_id for t in state.iter_tasks(JOB_ID)][: commits + running]
    for i, tid in enumerate(task_ids):
        token = uuid.uuid4().hex[:16]
        now = time.time()
        claimed = state.claim_task(JOB_ID, tid, "bench", token, 3600.0, now)
        if claimed is None:
            raise SystemExit(f"could not claim {tid}")
        if i >= commits:
            continue
        ok = state.commit_task(
            JOB_ID,
            tid,
            token,
            TaskCommit(
                output_key=f"jobs/{JOB_ID}/results/{tid}/{token}.parquet",
                output_sha256="0" * 64,
                output_rows=1,
                errors_key=f"jobs/{JOB_ID}/results/{tid}/{token}.errors.jsonl",
                errors_sha256="0" * 64,
                succeeded=1,
                failed_permanent=0,
                failed_transient=0,
                end_time=now,
            ),
        )
        if not ok:
            raise SystemExit(f"could not commit {tid}")
    t_commit = time.perf_counter() - t0
    backend.close()
    return {
        "submit_s": round(t_submit, 2),
        "commit_s": round(t_commit, 2),
        "committed": commits,
        "running": running,
    }


def time_library(roots: dict[int, Path], calls: int) -> dict[int, dict[str, Any]]:
    """job_status() on one opened backend per size: the first call (connection opened), then
    `calls` more, alternating between the sizes call by call so that both see the same load."""
    from slurmctl.backends import open_local
    from slurmctl.observe.status import job_status

    backends = {size: open_local(root) for size, root in roots.items()}
    out: dict[int, dict[str, Any]] = {}
    for size, backend in backends.items():
        t0 = time.perf_counter()
        first = job_status(backend, JOB_ID)
        out[size] = {"first_s": time.perf_counter() - t0, "tasks": first["tasks"]}
        out[size]["items"] = first["items"]
    times: dict[int, list[float]] = {size: [] for size in backends}
    for _ in range(calls):
        for size, backend in backends.items():
            t0 = time.perf_counter()
            job_status(backend, JOB_ID)
            times[size].append(time.perf_counter() - t0)
    for size, backend in backends.items():
        backend.close()
        out[size].update(
            median_s=common.median(times[size]),
            p95_s=common.p95(times[size]),
            min_s=min(times[size]),
        )
    return out


def time_cli(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*common.slurmctl_cmd(), *args], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes",
        default="1000,100000",
        help="task counts, comma-separated; the first is the baseline (default 1000,100000)",
    )
    ap.add_argument("--calls", type=int, default=50, help="library calls per size")
    ap.add_argument("--cli-runs", type=int, default=10, help="CLI runs per size")
    ap.add_argument("--commit-share", type=float, default=0.3, help="tasks committed")
    ap.add_argument("--running-share", type=float, default=0.01, help="tasks left RUNNING")
    ap.add_argument("--quick", action="store_true", help="1,000 and 10,000 tasks (< 60 s)")
    ap.add_argument("--tmp", help="folder for the jobs (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.quick:
        args.sizes = "1000,10000"
        args.cli_runs = min(args.cli_runs, 5)
    sizes = [int(s) for s in args.sizes.split(",")]

    info = common.machine()
    common.header(f"status latency at {', '.join(f'{s:,}' for s in sizes)} tasks", info)
    work = common.work_dir(args.tmp, "status")
    result: dict[str, Any] = {"args": vars(args), "machine": info, "sizes": {}}
    try:
        for size in sizes:
            built = build_job(work / f"job-{size}", size, args.commit_share, args.running_share)
            result["sizes"][str(size)] = {"build": built}
            print(
                f"   built {size:,} tasks: submit {built['submit_s']} s, "
                f"{built['committed']:,} committed + {built['running']:,} left RUNNING in "
                f"{built['commit_s']} s"
            )
        with common.Monitor() as mon:
            roots = {size: work / f"job-{size}" / "root" for size in sizes}
            libs = time_library(roots, args.calls)
            status_t: dict[int, list[float]] = {size: [] for size in sizes}
            version_t: list[float] = []
            for _ in range(args.cli_runs):  # interleaved, so every size sees the same machine
                version_t += time_cli(["--version"], 1)
                for size in sizes:
                    args_ = ["--root", str(roots[size]), "status", JOB_ID, "--json"]
                    status_t[size] += time_cli(args_, 1)
        result["machine_load"] = mon.summary
        result["cli_version_median_s"] = version = common.median(version_t)
        for size in sizes:
            row = result["sizes"][str(size)]
            row["library"] = lib = libs[size]
            row["cli_status_median_s"] = common.median(status_t[size])
            row["cli_status_p95_s"] = common.p95(status_t[size])
            tasks = ", ".join(f"{k} {v}" for k, v in lib["tasks"].items() if v)
            print(
                f"   {size:>7,} tasks  library median {common.fmt_ms(lib['median_s'])}, "
                f"p95 {common.fmt_ms(lib['p95_s'])}, first {common.fmt_ms(lib['first_s'])}  "
                f"| CLI status --json median {common.fmt_ms(row['cli_status_median_s'])}, "
                f"p95 {common.fmt_ms(row['cli_status_p95_s'])}  ({tasks})"
            )
        print(
            f"   CLI start-up baseline: slurmctl --version median {common.fmt_ms(version)} "
            f"({args.cli_runs} runs, interleaved with the status runs)"
        )
        print(f"   meanwhile: {common.Monitor.describe(mon.summary)}")
    finally:
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    small, big = result["sizes"][str(sizes[0])], result["sizes"][str(sizes[-1])]
    lib_ratio = big["library"]["median_s"] / small["library"]["median_s"]
    cli_ratio = big["cli_status_median_s"] / small["cli_status_median_s"]
    net_small = small["cli_status_median_s"] - result["cli_version_median_s"]
    net_big = big["cli_status_median_s"] - result["cli_version_median_s"]
    result.update(library_ratio=lib_ratio, cli_ratio=cli_ratio)
    abs_big = big["cli_status_median_s"]
    ok = lib_ratio < GOAL_RATIO and cli_ratio < GOAL_RATIO and abs_big < GOAL_ABS_S
    print(
        f"== {sizes[-1]:,} vs {sizes[0]:,} tasks: library "
        f"{common.fmt_ms(big['library']['median_s'])} vs "
        f"{common.fmt_ms(small['library']['median_s'])} (ratio {lib_ratio:.2f}); "
        f"CLI {common.fmt_ms(abs_big)} vs {common.fmt_ms(small['cli_status_median_s'])} "
        f"(ratio {cli_ratio:.2f}); CLI minus --version start-up {common.fmt_ms(net_big)} vs "
        f"{common.fmt_ms(net_small)}"
    )
    print(
        f"   goals: ratio < {GOAL_RATIO:g}, CLI at {sizes[-1]:,} < {GOAL_ABS_S:g} s: "
        + ("met" if ok else "NOT met")
    )
    print(f"   results: {common.save('status_latency', result)}")


if __name__ == "__main__":
    main()
