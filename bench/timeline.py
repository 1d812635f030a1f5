"""Where a throughput run's wall time goes: `throughput.py`'s job (no-op handler, embedded
backend, 2 local workers) through the real CLI, with the moments that split it and every
process's CPU, for comparing two checkouts run alternately (docs/benchmarks.md §13).

    .venv/bin/python bench/timeline.py                       # this checkout, 1,000,000 items
    .venv/bin/python bench/timeline.py --checkout /tmp/old   # another checkout's slurmctl
    .venv/bin/python bench/timeline.py --repeat 3 --checkout /tmp/old --checkout .   # alternated

The moments, from the command's start: the first task claimed and the first committed, every
task counted (the cut done), the "submit done" marker, the last commit, AGGREGATING, COMPLETED,
the exit; read from the state store (read-only SQLite, every 10 ms). CPU: user + sys seconds of
the submit process, its id index and each worker (psutil, every 20 ms: a process that ends
loses at most its last 20 ms). Nothing of the checkout is imported: any commit can be measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path
import psutil

JOB_ID = "bench-timeline"


class Moments:
    """The first time each moment is seen in the state store."""

    def __init__(self, root: Path, tasks: int, t0: float) -> None:
        self.db, self.tasks, self.t0 = root / "state.sqlite", tasks, t0
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def mark(self, name: str) -> None:
        self.seen.setdefault(name, round(time.perf_counter() - self.t0, 3))

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self.stop.wait(0.01):
            try:
                if conn is None:
                    if not self.db.exists():
                        continue
                    conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
                self._look(conn)
            except sqlite3.Error:
                continue
        if conn is not None:
            conn.close()

    def _look(self, conn: sqlite3.Connection) -> None:
        row = conn.execute(
            "SELECT status, submitted, task_count FROM jobs WHERE job_id = ?", (JOB_ID,)
        ).fetchone()
        if row is None:
            return
        status, submitted, task_count = row
        self.mark(f"status {status}")
        if submitted:
            self.mark("submit done marker")
        if task_count and task_count >= self.tasks:
            self.mark("every task counted")
        rows = conn.execute("SELECT name, value FROM counters WHERE job_id = ?", (JOB_ID,))
        counters = dict(rows.fetchall())
        done = counters.get("initial.tasks.SUCCESS", 0)
        if done or counters.get("initial.tasks.RUNNING", 0):
            self.mark("first claim")
        if done:
            self.mark("first commit")
        if done >= self.tasks:
            self.mark("last commit")

    def close(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return dict(sorted(self.seen.items(), key=lambda kv: kv[1]))


class ProcessCPU:
    """user + sys seconds of every descendant of a process, by role."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _role(p: psutil.Process) -> str:
        cmdline = " ".join(p.cmdline())
        if " worker " in cmdline:
            return "worker"
        if "idindex" in cmdline:
            return "id index"
        return "submit" if " submit " in cmdline else "other"

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                top = psutil.Process(self.pid)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    t = p.cpu_times()
                    role = self._role(p)
                except psutil.Error:
                    continue
                known = self.cpu.get(p.pid)
                if known is not None and known[0] != role and role == "other":
                    role = known[0]  # a forked child seen before its exec keeps its later role
                self.cpu[p.pid] = (role, t.user + t.system)

    def close(self) -> dict[str, list[float]]:
        self.stop.set()
        self.thread.join()
        out: dict[str, list[float]] = {}
        for role, seconds in self.cpu.values():
            out.setdefault(role, []).append(round(seconds, 2))
        return out


def run_once(checkout: Path, work: Path, items: int, batch_size: int) -> dict[str, Any]:
    folder = work / f"job-{time.monotonic_ns()}"
    folder.mkdir()
    os.link(work / "input.jsonl", folder / "input.jsonl")
    config = common.write_job(folder, job_id=JOB_ID, batch_size=batch_size, workers=2)
    common.warm(folder / "input.jsonl")
    root = folder / "root"
    cmd = [str(checkout / ".venv" / "bin" / "slurmctl"), "--root", str(root), "submit"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    moments = Moments(root, -(-items // batch_size), t0)
    proc = subprocess.Popen(
        [*cmd, str(config), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=folder,  # not a checkout: the workers' `python -m slurmctl` must find their own
    )
    cpu = ProcessCPU(proc.pid)
    _, err = proc.communicate()
    moments.mark("exit")
    seen, by_role = moments.close(), cpu.close()
    shutil.rmtree(folder, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: submit failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    total = sum(sum(v) for v in by_role.values())
    return {
        "checkout": str(checkout),
        "load": load,
        "moments": seen,
        "cpu": by_role,
        "cpu_s": total,
    }


def show(run: dict[str, Any]) -> None:
    m = run["moments"]

    def at(name: str) -> str:
        return f"{m[name]:6.2f}" if name in m else "     ?"

    print(
        f"   {Path(run['checkout']).name:<12} load {run['load']:5.2f}  first commit "
        f"{at('first commit')}  cut done {at('every task counted')}  last commit "
        f"{at('last commit')}  COMPLETED {at('status COMPLETED')}  exit {at('exit')}  "
        f"cpu {run['cpu_s']:5.2f} s {run['cpu']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkout", action="append", type=Path, help="default: this one")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the checkouts N times")
    ap.add_argument("--tmp", help="folder for the input and the runs (default: $TMPDIR)")
    args = ap.parse_args()
    checkouts = [c.resolve() for c in args.checkout or [common.REPO]]
    info = common.machine()
    common.header(f"timeline: {args.items:,} items, batch_size {args.batch_size}", info)
    work = common.work_dir(args.tmp, "timeline")
    runs: list[dict[str, Any]] = []
    try:
        common.write_items(work / "input.jsonl", args.items)
        for _ in range(args.repeat):
            for checkout in checkouts:
                runs.append(run_once(checkout, work, args.items, args.batch_size))
                show(runs[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"   results: {common.save('timeline', {'machine': info, 'runs': runs})}")


if __name__ == "__main__":
    main()
