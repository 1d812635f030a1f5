"""End-to-end throughput: a no-op handler through the real CLI, against a hand-written
multiprocessing + pyarrow pipeline doing the same work, timed in the same run.

    .venv/bin/python bench/throughput.py            # 1,000,000 items, batch_size 1000, 2 workers
    .venv/bin/python bench/throughput.py --quick    # 100,000 items, < 60 s
    .venv/bin/python bench/throughput.py --profile  # also a py-spy profile of the slurmctl run
"""

from __future__ import annotations

import argparse
import calendar
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path
import pyarrow as pa
import pyarrow.parquet as pq

JOB_ID = "bench-throughput"
GOAL = 0.5


# --- the baseline: what a user would write by hand ------------------------------------------


def noop(item: dict[str, Any]) -> dict[str, Any]:
    return item


def _baseline_batch(job: tuple[int, list[bytes], str]) -> tuple[str, int]:
    index, lines, folder = job
    rows = [noop(json.loads(line)) for line in lines]
    path = os.path.join(folder, f"batch-{index:06d}.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path, len(rows)


def _batches(path: Path, size: int, folder: str) -> Any:
    batch: list[bytes] = []
    index = 0
    with open(path, "rb") as f:
        for line in f:
            batch.append(line)
            if len(batch) == size:
                yield index, batch, folder
                batch = []
                index += 1
    if batch:
        yield index, batch, folder


def run_baseline(input_path: Path, work: Path, batch_size: int, workers: int) -> dict[str, Any]:
    parts = work / "baseline-parts"
    parts.mkdir(parents=True)
    final = work / "baseline.parquet"
    cpu0 = common.children_cpu_s()
    self0 = time.process_time()
    t0 = time.perf_counter()
    with multiprocessing.Pool(workers) as pool:
        done = list(pool.imap(_baseline_batch, _batches(input_path, batch_size, str(parts))))
    t_parts = time.perf_counter()
    writer: pq.ParquetWriter | None = None
    try:
        for path, _ in done:
            table = pq.read_table(path)
            if writer is None:
                writer = pq.ParquetWriter(str(final), table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    t1 = time.perf_counter()
    rows = pq.read_metadata(final).num_rows
    return {
        "wall_s": t1 - t0,
        "batches_s": t_parts - t0,
        "concat_s": t1 - t_parts,
        "cpu_s": common.children_cpu_s() - cpu0 + time.process_time() - self0,
        "rows": rows,
        "batches": len(done),
        "output": str(final),
    }


# --- slurmctl through its CLI ---------------------------------------------------------------


class StatusWatcher:
    """Notes when the job record first shows each status (read-only SQLite, every 50 ms)."""

    def __init__(self, root: Path, job_id: str, t0: float) -> None:
        self.db = root / "state.sqlite"
        self.job_id = job_id
        self.t0 = t0
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self.stop.wait(0.05):
            try:
                if conn is None:
                    if not self.db.exists():
                        continue
                    conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
                row = conn.execute(
                    "SELECT status FROM jobs WHERE job_id = ?", (self.job_id,)
                ).fetchone()
            except sqlite3.Error:
                continue
            if row is not None and row[0] not in self.seen:
                self.seen[row[0]] = time.perf_counter() - self.t0
        if conn is not None:
            conn.close()

    def close(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return self.seen


def _iso(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def task_metrics(root: Path, job_id: str) -> dict[str, Any]:
    """Sums over the task manifests (`tasks/`)."""
    wall = cpu = 0.0
    count = 0
    starts: list[float] = []
    ends: list[float] = []
    for doc in common.task_manifests(root / "objects" / "jobs" / job_id):
        wall += doc["metrics"]["wall_s"]
        cpu += doc["metrics"]["cpu_s"]
        starts.append(_iso(doc["start_time"]))
        ends.append(_iso(doc["end_time"]))
        count += 1
    return {
        "tasks": count,
        "task_wall_s_sum": round(wall, 3),
        "task_cpu_s_sum": round(cpu, 3),
        "first_start": min(starts) if starts else None,
        "last_end": max(ends) if ends else None,
    }


def run_slurmctl(folder: Path, count: int) -> dict[str, Any]:
    root = folder / "root"
    cmd = [*common.slurmctl_cmd(), "--root", str(root), "submit", str(folder / "job.yaml")]
    cmd.append("--no-progress")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cpu0 = common.children_cpu_s()
    t0 = time.perf_counter()
    watcher = StatusWatcher(root, JOB_ID, t0)
    err_path = folder / "submit.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        assert proc.stdout is not None
        lines: list[tuple[float, str]] = []
        for raw in proc.stdout:
            lines.append((time.perf_counter() - t0, raw.decode(errors="replace").rstrip()))
        code = proc.wait()
    stderr = err_path.read_text(errors="replace")
    wall = time.perf_counter() - t0
    seen = watcher.close()
    cpu = common.children_cpu_s() - cpu0
    if code != 0:
        raise SystemExit(f"slurmctl submit failed ({code}):\n{stderr[-3000:]}")
    submitted = next((t for t, text in lines if text.endswith(" submitted")), None)
    status = common.cli_json(root, "status", JOB_ID)
    rows = sum(pq.read_metadata(o["path"]).num_rows for o in status["outputs"])
    actions = common.cli_json(root, "history", JOB_ID, lines=True)
    aggregating = seen.get("AGGREGATING")
    completed = seen.get("COMPLETED")
    phases = {
        "submit_s": submitted,
        "running_s": (aggregating - submitted) if aggregating and submitted else None,
        "finalize_s": (completed - aggregating) if completed and aggregating else None,
        "exit_s": (wall - completed) if completed else None,
    }
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rows": rows,
        "status": status["status"],
        "status_items": status["items"],
        "phases": phases,
        "seen": seen,
        "tasks": task_metrics(root, JOB_ID),
        "history": [{"action": a["action"], "at": a["at"]} for a in actions],
        "stdout": [text for _, text in lines],
    }


# --- the benchmark --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two sides N times")
    ap.add_argument("--quick", action="store_true", help="100,000 items (< 60 s)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--profile", action="store_true", help="then one more run under py-spy")
    ap.add_argument("--profile-items", type=int, help="items of the profiled run (default --items)")
    ap.add_argument("--tmp", help="folder for the inputs and outputs (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.quick:
        args.items = min(args.items, 100_000)

    info = common.machine()
    common.header(
        f"throughput: {args.items:,} items, batch_size {args.batch_size}, "
        f"{args.workers} workers, no-op handler",
        info,
    )
    work = common.work_dir(args.tmp, "throughput")
    result: dict[str, Any] = {"args": vars(args), "machine": info, "runs": []}
    try:
        input_path = work / "input.jsonl"
        size = common.write_items(input_path, args.items)
        print(f"   input {input_path} ({size / 1e6:.1f} MB)")
        for r in range(args.repeat):
            run: dict[str, Any] = {}
            folder = work / f"job-{r}"
            folder.mkdir()
            os.link(input_path, folder / "input.jsonl")
            common.write_job(
                folder, job_id=JOB_ID, batch_size=args.batch_size, workers=args.workers
            )
            common.warm(input_path)
            with common.Monitor() as mon:
                run["slurmctl"] = s = run_slurmctl(folder, args.items)
            s["machine_load"] = mon.summary
            if s["rows"] != args.items:
                raise SystemExit(f"slurmctl wrote {s['rows']} rows, expected {args.items}")
            s["items_per_s"] = args.items / s["wall_s"]
            shutil.rmtree(folder / "root", ignore_errors=True)
            if not args.no_baseline:
                common.warm(input_path)
                with common.Monitor() as mon:
                    run["baseline"] = b = run_baseline(
                        input_path, work / f"baseline-{r}", args.batch_size, args.workers
                    )
                b["machine_load"] = mon.summary
                if b["rows"] != args.items:
                    raise SystemExit(f"the baseline wrote {b['rows']} rows, expected {args.items}")
                b["items_per_s"] = args.items / b["wall_s"]
                shutil.rmtree(work / f"baseline-{r}", ignore_errors=True)
            result["runs"].append(run)
            report(run, args.items)
        if args.profile:
            result["profile"] = profile(work, args)
    finally:
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    runs = result["runs"]
    s_rate = common.median([r["slurmctl"]["items_per_s"] for r in runs])
    result["slurmctl_items_per_s"] = s_rate
    if not args.no_baseline:
        b_rate = common.median([r["baseline"]["items_per_s"] for r in runs])
        result["baseline_items_per_s"] = b_rate
        result["ratio"] = s_rate / b_rate
        verdict = "meets" if result["ratio"] >= GOAL else "MISSES"
        print(
            f"== slurmctl {common.fmt_rate(s_rate)} items/s, baseline "
            f"{common.fmt_rate(b_rate)} items/s, ratio {result['ratio']:.2f} "
            f"({verdict} the goal >= {GOAL})"
        )
    print(f"   results: {common.save('throughput', result)}")


def report(run: dict[str, Any], items: int) -> None:
    s = run["slurmctl"]
    ph = s["phases"]
    t = s["tasks"]

    def sec(v: float | None) -> str:
        return f"{v:.2f} s" if v is not None else "?"

    print(
        f"   slurmctl  {s['wall_s']:7.2f} s  {common.fmt_rate(s['items_per_s']):>9} items/s  "
        f"cpu {s['cpu_s']:.1f} s  rows {s['rows']:,}"
    )
    print(f"     meanwhile: {common.Monitor.describe(s['machine_load'])}")
    print(
        f"     split: submit (start-up + batching) {sec(ph['submit_s'])}, running (workers) "
        f"{sec(ph['running_s'])}, finalize (failure manifest + aggregation) "
        f"{sec(ph['finalize_s'])}, exit {sec(ph['exit_s'])}"
    )
    print(
        f"     tasks: {t['tasks']} manifests, sum wall_s {t['task_wall_s_sum']:.2f} s, "
        f"sum cpu_s {t['task_cpu_s_sum']:.2f} s"
    )
    if "baseline" in run:
        b = run["baseline"]
        print(
            f"   baseline  {b['wall_s']:7.2f} s  {common.fmt_rate(b['items_per_s']):>9} items/s  "
            f"cpu {b['cpu_s']:.1f} s  rows {b['rows']:,}  (pool {b['batches_s']:.2f} s, "
            f"concat {b['concat_s']:.2f} s)"
        )
        print(f"     meanwhile: {common.Monitor.describe(b['machine_load'])}")
        print(f"   ratio slurmctl/baseline {s['items_per_s'] / b['items_per_s']:.2f}")


def profile(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    count = args.profile_items or args.items
    folder = work / "profile"
    folder.mkdir()
    common.write_items(folder / "input.jsonl", count)
    config = common.write_job(
        folder, job_id=JOB_ID, batch_size=args.batch_size, workers=args.workers
    )
    raw = common.OUT / "throughput-profile.txt"
    cmd = [*common.slurmctl_cmd(), "--root", str(folder / "root"), "submit", str(config)]
    print(f"== profile: {count:,} items under py-spy (not timed)")
    return common.profile_run([*cmd, "--no-progress"], raw)


if __name__ == "__main__":
    main()
