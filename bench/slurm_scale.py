"""Slurm at scale (issue 8, item 4): 10,000 tasks over 16 array elements on the local Slurm,
every item accounted for exactly once.

One job through the real CLI: N items (100,000 by default) at batch_size 10 (10,000 tasks), the
no-op handler of bench/common.py, `executor: slurm` on partition `debug`, the embedded backend,
16 pilot workers (one array of 16 elements) and a finalize job. `slurmctl submit job.yaml
--follow` is timed from its start to its exit (COMPLETED, aggregation included). Meanwhile a
thread samples every 0.5 s `squeue` (elements RUNNING / PENDING) and, with psutil, the worker
processes (count, RSS) and the finalize process.

Then invariant 1, item by item: the final Parquet output(s) that `slurmctl status JOB --json`
lists (each checked against its sha256), the failure manifests and the quarantine, against the
input: every input id exactly once, none missing, no duplicate, nothing extra; the failure
manifests and the quarantine must be empty. The ids are Arrow arrays (value_counts, is_in), not
Python sets.

Reported: wall time (split: submit, Slurm queueing, running, finalize), tasks, items/s, array
elements used and how many ran at once (squeue samples, and tasks in flight from the state
store's start/end times), tasks per worker, the Slurm jobs submitted (sbatch calls, and jobs as
Slurm counts them: each element one), the pace over each fifth of the tasks (does a task cost
more as tasks accumulate?), peak RSS per worker, the Slurm daemons' CPU, `status --json` time.

    scripts/slurm-up                                       # as root (idempotent)
    .venv/bin/python bench/slurm_scale.py                  # 100,000 items, 10,000 tasks, 16 workers
    .venv/bin/python bench/slurm_scale.py --quick          # 10,000 items, 1,000 tasks
    .venv/bin/python bench/slurm_scale.py --items 50000 --batch-size 10 --workers 8

Results: bench/out/slurm_scale-<tasks>.json (and a dated copy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

MB = 1 << 20
PARTITION = "debug"


# --- the cluster ----------------------------------------------------------------------------


def slurm_up() -> str:
    """scripts/slurm-up (idempotent) when root; otherwise the cluster must already be up."""
    if os.geteuid() == 0:
        out = subprocess.run(
            [str(common.REPO / "scripts" / "slurm-up")], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise SystemExit(f"scripts/slurm-up failed ({out.returncode}):\n{out.stderr[-2000:]}")
        return out.stdout.strip()
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    if "is UP" not in ping.stdout:
        raise SystemExit("Slurm is not up and we are not root: run `sudo scripts/slurm-up`")
    return ping.stdout.strip()


def partition_info(name: str) -> dict[str, Any]:
    """CPUs, oversubscription and nodes of the partition: how many single-CPU elements fit."""
    out = subprocess.run(
        ["sinfo", "-h", "-p", name, "-o", "%c|%h|%D|%N|%t"],
        capture_output=True,
        text=True,
        check=False,
    )
    first = (out.stdout.strip().splitlines() or ["||||"])[0].split("|")
    cpus = int(first[0]) if first[0].isdigit() else None
    over = first[1]
    share = int(over.split(":")[1]) if over.startswith(("FORCE:", "YES:")) else 1
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    max_array = next(
        (ln.split("=", 1)[1].strip() for ln in conf.stdout.splitlines() if "MaxArraySize" in ln),
        None,
    )
    return {
        "partition": name,
        "cpus_per_node": cpus,
        "oversubscribe": over,
        "nodes": first[2],
        "nodelist": first[3],
        "state": first[4],
        "single_cpu_jobs_at_once": cpus * share * int(first[2] or 1) if cpus else None,
        "max_array_size": max_array,
    }


def daemons_cpu_s() -> dict[str, float]:
    """CPU seconds so far of slurmctld and slurmd (summed over processes of that name)."""
    out: dict[str, float] = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        if p.info["name"] in ("slurmctld", "slurmd") and p.info["cpu_times"] is not None:
            t = p.info["cpu_times"]
            out[p.info["name"]] = out.get(p.info["name"], 0.0) + t.user + t.system
    return out


# --- what runs meanwhile --------------------------------------------------------------------


class JobMonitor(common.Monitor):
    """common.Monitor, with the job's Slurm-started processes (workers, finalize: their command
    line has the state root; and their slurmstepd parents) counted as ours, not as others."""

    def __init__(self, marker: str, interval_s: float = 1.0) -> None:
        super().__init__(interval_s)
        self.marker = marker

    def _mine(self, psutil_mod: Any) -> set[int]:
        mine = super()._mine(psutil_mod)
        for p in psutil_mod.process_iter(["pid", "ppid", "cmdline"]):
            if self.marker in " ".join(p.info["cmdline"] or []):
                mine.update((p.info["pid"], p.info["ppid"]))
        return mine


class Sampler:
    """Every interval_s: squeue (the job's elements by state) and psutil (its worker and
    finalize processes, RSS). Times are seconds since t0."""

    def __init__(self, job_id: str, t0: float, interval_s: float = 0.5) -> None:
        self.job_id = job_id
        self.t0 = t0
        self.interval_s = interval_s
        self.names = (f"slurmctl-{job_id}", f"slurmctl-{job_id}-finalize")
        self.series: list[dict[str, Any]] = []
        self.running_seen: set[str] = set()
        self.worker_rss: dict[str, int] = {}
        self.finalize_rss = 0
        self.first_running: float | None = None
        self.all_running: float | None = None
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.procs: dict[int, psutil.Process] = {}

    def start(self, expected: int) -> Sampler:
        self.expected = expected
        self.thread.start()
        return self

    def _squeue(self) -> tuple[list[str], int, int]:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-n", ",".join(self.names), "-o", "%i|%j|%T"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            self.errors[out.stderr.strip()[:80]] += 1
        running: list[str] = []
        pending = finalize = 0
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) != 3:
                continue
            elem, name, state = parts
            if name == self.names[1]:
                finalize += state == "RUNNING"
            elif state == "RUNNING":
                running.append(elem)
            elif state == "PENDING":
                pending += 1
        return running, pending, finalize

    def _processes(self) -> tuple[int, int]:
        workers = 0
        fin = 0
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if self.job_id not in cmd:
                continue
            proc = self.procs.setdefault(p.info["pid"], p)
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            if "worker" in cmd and "--worker-id" in cmd:
                workers += 1
                wid = cmd[cmd.index("--worker-id") + 1]
                self.worker_rss[wid] = max(self.worker_rss.get(wid, 0), rss)
            elif "finalize" in cmd:
                fin += 1
                self.finalize_rss = max(self.finalize_rss, rss)
        return workers, fin

    def _run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic() - self.t0
            running, pending, fin_running = self._squeue()
            workers, fin_procs = self._processes()
            self.running_seen.update(running)
            if running and self.first_running is None:
                self.first_running = now
            if len(running) >= self.expected and self.all_running is None:
                self.all_running = now
            self.series.append(
                {
                    "t": round(now, 2),
                    "running": len(running),
                    "pending": pending,
                    "finalize_running": fin_running,
                    "worker_procs": workers,
                    "finalize_procs": fin_procs,
                }
            )
            self.stop.wait(self.interval_s)

    def close(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        running = [s["running"] for s in self.series]
        procs = [s["worker_procs"] for s in self.series]
        busy = [s for s in self.series if s["running"]]
        with_workers = [s["t"] for s in self.series if s["worker_procs"]]
        fin = [s["t"] for s in self.series if s["finalize_running"] or s["finalize_procs"]]
        return {
            "interval_s": self.interval_s,
            "samples": len(self.series),
            "peak_running_elements": max(running, default=0),
            "peak_worker_processes": max(procs, default=0),
            "elements_seen_running": len(self.running_seen),
            "mean_running_while_any": round(statistics.mean(s["running"] for s in busy), 2)
            if busy
            else 0,
            "first_running_s": _r(self.first_running),
            "all_running_s": _r(self.all_running),
            "last_worker_process_s": with_workers[-1] if with_workers else None,
            "finalize_first_seen_s": fin[0] if fin else None,
            "finalize_last_seen_s": fin[-1] if fin else None,
            "worker_peak_rss_mb": {k: round(v / MB, 1) for k, v in sorted(self.worker_rss.items())},
            "finalize_peak_rss_mb": round(self.finalize_rss / MB, 1),
            "squeue_errors": dict(self.errors),
            "series": self.series,
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# --- the run --------------------------------------------------------------------------------


def write_config(folder: Path, job_id: str, args: argparse.Namespace) -> Path:
    config = common.write_job(
        folder, job_id=job_id, batch_size=args.batch_size, workers=args.workers
    )
    config.write_text(
        config.read_text()
        + "executor: slurm\n"
        + f'slurm: {{partition: {PARTITION}, time: "{args.time}"}}\n'
    )
    return config


def submit_follow(folder: Path, root: Path, config: Path, t0: float) -> dict[str, Any]:
    """`slurmctl --root R submit job.yaml --follow --no-progress`, its stdout lines timed."""
    cmd = [*common.slurmctl_cmd(), "--root", str(root), "submit", str(config), "--follow"]
    cmd.append("--no-progress")
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder
    )
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    err: list[str] = []
    drain = threading.Thread(target=lambda: err.extend(stderr), daemon=True)
    drain.start()
    for line in stdout:
        lines.append((round(time.monotonic() - t0, 3), line.rstrip("\n")))
    code = proc.wait()
    wall = time.monotonic() - t0
    drain.join()
    return {
        "command": " ".join(cmd),
        "exit_code": code,
        "wall_s": round(wall, 3),
        "stdout": lines,
        "stderr_tail": "".join(err)[-3000:],
    }


def when(lines: list[tuple[float, str]], needle: str) -> float | None:
    return next((t for t, text in lines if needle in text), None)


def status_json(folder: Path, root: Path, job_id: str) -> tuple[dict[str, Any], float]:
    t = time.monotonic()
    out = subprocess.run(
        [*common.slurmctl_cmd(), "--root", str(root), "status", job_id, "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
    )
    elapsed = time.monotonic() - t
    if out.returncode != 0:
        raise SystemExit(f"slurmctl status failed:\n{out.stdout}\n{out.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc, elapsed


# --- invariant 1, item by item ------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def exactly_once(input_path: Path, status: dict[str, Any], jobdir: Path) -> dict[str, Any]:
    """Every input id exactly once in the final output(s) or the failure manifests/quarantine."""
    ids_in = pajson.read_json(input_path).column("id").combine_chunks().cast(pa.string())
    in_counts = pc.value_counts(ids_in)
    in_dups = pc.filter(in_counts, pc.greater(in_counts.field(1), 1))

    outputs = []
    parts = []
    for out in status["outputs"]:
        path = Path(out["path"].removeprefix("file://"))
        digest = sha256_file(path)
        meta = pq.ParquetFile(path).metadata
        col = pq.read_table(path, columns=["id"]).column("id").combine_chunks().cast(pa.string())
        parts.append(col)
        outputs.append(
            {
                "path": str(path),
                "rows": meta.num_rows,
                "rows_status": out["rows"],
                "row_groups": meta.num_row_groups,
                "bytes": path.stat().st_size,
                "sha256_ok": digest == out["sha256"],
            }
        )
    ids_out = pa.concat_arrays(parts) if parts else pa.array([], pa.string())

    failed_ids: list[str] = []
    failure_files = sorted((jobdir / "failures").glob("*.json"))
    for f in failure_files:
        doc = json.loads(f.read_text())
        failed_ids.extend(str(e["item_id"]) for e in doc.get("items", []))
    quarantine = jobdir / "quarantine.jsonl"
    quarantined = sum(1 for _ in quarantine.open()) if quarantine.exists() else 0

    accounted = pa.concat_arrays([ids_out, pa.array(failed_ids, pa.string())])
    counts = pc.value_counts(accounted)
    dup_mask = pc.greater(counts.field(1), 1)
    duplicates = pc.filter(counts, dup_mask)
    missing = pc.filter(ids_in, pc.invert(pc.is_in(ids_in, value_set=accounted)))
    extra = pc.filter(accounted, pc.invert(pc.is_in(accounted, value_set=ids_in)))
    input_lines = sum(1 for _ in input_path.open())

    result = {
        "input_lines": input_lines,
        "input_ids": len(ids_in),
        "input_duplicate_ids": len(in_dups),
        "output_rows": len(ids_out),
        "outputs": outputs,
        "failure_manifests": [f.name for f in failure_files],
        "failed_items": len(failed_ids),
        "quarantined_lines": quarantined,
        "duplicates": len(duplicates),
        "duplicate_examples": [str(x["values"]) for x in duplicates.to_pylist()[:5]],
        "missing": len(missing),
        "missing_examples": missing.to_pylist()[:5],
        "extra": len(extra),
        "extra_examples": extra.to_pylist()[:5],
    }
    result["ok"] = (
        input_lines == len(ids_in) + quarantined
        and len(in_dups) == 0
        and len(duplicates) == 0
        and len(missing) == 0
        and len(extra) == 0
        and len(failed_ids) == 0
        and quarantined == 0
        and all(o["sha256_ok"] and o["rows"] == o["rows_status"] for o in outputs)
        and len(ids_out) == len(ids_in)
    )
    return result


# --- what the state store and the manifests say ---------------------------------------------


def tasks_report(root: Path, job_id: str, t_submit_epoch: float) -> dict[str, Any]:
    """From the state store (float times, worker ids, attempts) and the task manifests (RSS)."""
    from slurmctl.backends import open_local

    backend = open_local(root)
    try:
        tasks = list(backend.state.iter_tasks(job_id))
    finally:
        backend.close()
    per_worker: Counter[str] = Counter(t.worker_id or "?" for t in tasks)
    items_per_worker: Counter[str] = Counter()
    for t in tasks:
        items_per_worker[t.worker_id or "?"] += t.items
    attempts = Counter(t.attempts for t in tasks)
    statuses = Counter(str(t.status) for t in tasks)
    done = sorted(
        (t for t in tasks if t.start_time and t.end_time), key=lambda t: t.end_time or 0.0
    )
    # tasks in flight: a sweep over claim (start) and commit (end) times
    events = sorted(
        [(t.start_time or 0.0, 1) for t in done] + [(t.end_time or 0.0, -1) for t in done]
    )
    in_flight = peak_in_flight = 0
    for _, step in events:
        in_flight += step
        peak_in_flight = max(peak_in_flight, in_flight)
    first_start = min((t.start_time or 0.0 for t in done), default=0.0)
    last_end = max((t.end_time or 0.0 for t in done), default=0.0)
    # pace over each fifth of the tasks, in commit order: a slowdown that grows with the tasks
    fifths = []
    n = len(done)
    for k in range(5):
        chunk = done[k * n // 5 : (k + 1) * n // 5]
        if not chunk:
            continue
        prev_end = done[k * n // 5 - 1].end_time if k else first_start
        span = (chunk[-1].end_time or 0.0) - (prev_end or 0.0)
        durations = [(t.end_time or 0.0) - (t.start_time or 0.0) for t in chunk]
        fifths.append(
            {
                "tasks": len(chunk),
                "span_s": round(span, 2),
                "tasks_per_s": round(len(chunk) / span, 1) if span > 0 else None,
                "items_per_s": round(sum(t.items for t in chunk) / span, 1) if span > 0 else None,
                "task_ms_median": round(statistics.median(durations) * 1000, 1),
                "task_ms_p95": round(common.p95(durations) * 1000, 1),
            }
        )
    # per worker: first claim, last commit, busy share
    spans: dict[str, list[float]] = {}
    busy: dict[str, float] = {}
    for t in done:
        w = t.worker_id or "?"
        s = spans.setdefault(w, [t.start_time or 0.0, t.end_time or 0.0])
        s[0] = min(s[0], t.start_time or 0.0)
        s[1] = max(s[1], t.end_time or 0.0)
        busy[w] = busy.get(w, 0.0) + (t.end_time or 0.0) - (t.start_time or 0.0)
    workers = {
        w: {
            "tasks": per_worker[w],
            "items": items_per_worker[w],
            "first_claim_s": round(spans[w][0] - t_submit_epoch, 2) if w in spans else None,
            "last_commit_s": round(spans[w][1] - t_submit_epoch, 2) if w in spans else None,
            "busy_share": round(busy[w] / max(spans[w][1] - spans[w][0], 1e-9), 3)
            if w in spans
            else None,
        }
        for w in sorted(per_worker)
    }
    counts = sorted(per_worker.values())
    return {
        "tasks": len(tasks),
        "statuses": dict(statuses),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "workers_used": len(per_worker),
        "tasks_per_worker": {
            "min": counts[0] if counts else 0,
            "median": statistics.median(counts) if counts else 0,
            "max": counts[-1] if counts else 0,
            "stdev": round(statistics.pstdev(counts), 1) if counts else 0,
        },
        "workers": workers,
        "peak_tasks_in_flight": peak_in_flight,
        "first_claim_s": round(first_start - t_submit_epoch, 2) if done else None,
        "last_commit_s": round(last_end - t_submit_epoch, 2) if done else None,
        "pace_by_fifth": fifths,
    }


def manifests_report(jobdir: Path) -> dict[str, Any]:
    """Worker RSS as the task manifests saw it (ru_maxrss at each commit), the Slurm ids."""
    rss: dict[str, int] = {}
    elements: set[str] = set()
    count = 0
    for doc in common.task_manifests(jobdir):
        count += 1
        w = doc.get("worker_id") or "?"
        rss[w] = max(rss.get(w, 0), int(doc.get("metrics", {}).get("max_rss_kb", 0)))
        slurm = doc.get("slurm") or {}
        if slurm.get("SLURM_ARRAY_TASK_ID") is not None:
            elements.add(f"{slurm.get('SLURM_ARRAY_JOB_ID')}_{slurm['SLURM_ARRAY_TASK_ID']}")
    manifest = json.loads((jobdir / "manifest.json").read_text())
    runs = manifest.get("slurm_runs", [])
    history = [json.loads(x) for x in (jobdir / "history.jsonl").open() if x.strip()]
    alerts = sorted(p.name for p in (jobdir / "alerts").glob("*.firing"))
    return {
        "alerts_fired": alerts,  # a healthy run should fire none
        "task_manifests": count,
        "elements_in_task_manifests": len(elements),
        "worker_max_rss_mb_manifests": {k: round(v / 1024, 1) for k, v in sorted(rss.items())},
        "slurm_array_id": manifest.get("slurm_array_id"),
        "slurm_job_ids": manifest.get("slurm_job_ids", []),
        "slurm_runs": runs,
        "sbatch_calls": sum(len(r.get("arrays", [])) + bool(r.get("finalize")) for r in runs),
        "slurm_jobs": sum(r.get("workers") or 0 for r in runs)
        + sum(1 for r in runs if r.get("finalize")),
        "history": [
            {k: v for k, v in h.items() if k in ("at", "action", "status", "work_left", "arrays")}
            for h in history
        ],
    }


def slurm_elements(ids: list[str]) -> dict[str, Any]:
    """Final state and exit code of every element (squeue keeps them for MinJobAge)."""
    from slurmctl.executors.slurm.sbatch import SlurmClient

    elements = SlurmClient().elements(ids)
    return {
        "count": len(elements),
        "states": dict(Counter(str(e.state) for e in elements)),
        "exit_codes": dict(Counter(str(e.exit_code) for e in elements)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = common.work_dir(args.tmp, "slurm-scale")
    tasks = -(-args.items // args.batch_size)
    job_id = f"bench-slurm-scale-{tasks}-{int(time.time())}"
    root = folder / "root"
    input_path = folder / "input.jsonl"
    size = common.write_items(input_path, args.items)
    config = write_config(folder, job_id, args)
    jobdir = root / "objects" / "jobs" / job_id
    print(f"   job {job_id}: {args.items:,} items, {tasks:,} tasks, {args.workers} workers")
    print(f"   work dir {folder}")

    daemons0 = daemons_cpu_s()
    cpu0 = common.children_cpu_s()
    t0 = time.monotonic()
    t0_epoch = time.time()
    sampler = Sampler(job_id, t0, args.sample_s).start(min(args.workers, tasks))
    with JobMonitor(str(root)) as mon:
        sub = submit_follow(folder, root, config, t0)
    samples = sampler.close()
    daemons1 = daemons_cpu_s()
    cli_cpu = common.children_cpu_s() - cpu0
    if sub["exit_code"] != 0 or not any("COMPLETED" in text for _, text in sub["stdout"]):
        logs = root / "logs" / job_id
        tails = []
        for p in sorted(logs.glob("*.log"))[-3:]:
            tails.append(f"--- {p}\n{p.read_text()[-1500:]}")
        raise SystemExit(
            f"slurmctl run failed (exit {sub['exit_code']}):\n"
            + "\n".join(t for _, t in sub["stdout"])
            + f"\n{sub['stderr_tail']}\n"
            + "\n".join(tails)
        )
    status, status_s = status_json(folder, root, job_id)
    check = exactly_once(input_path, status, jobdir)
    t_report = tasks_report(root, job_id, t0_epoch)
    m_report = manifests_report(jobdir)
    elements = slurm_elements(m_report["slurm_job_ids"])

    lines = sub["stdout"]
    t_submitted = when(lines, "submitted")
    t_queued = when(lines, "workers queued")
    wall = sub["wall_s"]
    split = {
        "submit_s": t_submitted,  # start-up, scan, batches, tasks, queue
        "to_queued_s": t_queued,  # + preflight/sbatch of the array and finalize
        "first_element_running_s": samples["first_running_s"],
        "all_elements_running_s": samples["all_running_s"],
        "first_claim_s": t_report["first_claim_s"],
        "last_commit_s": t_report["last_commit_s"],
        "last_worker_process_s": samples["last_worker_process_s"],
        "finalize_first_seen_s": samples["finalize_first_seen_s"],
        "finalize_last_seen_s": samples["finalize_last_seen_s"],
        "end_s": wall,
    }
    running_s = (t_report["last_commit_s"] or 0) - (t_report["first_claim_s"] or 0)
    result: dict[str, Any] = {
        "job_id": job_id,
        "items": args.items,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "tasks": tasks,
        "input_bytes": size,
        "command": sub["command"],
        "exit_code": sub["exit_code"],
        "wall_s": wall,
        "items_per_s": round(args.items / wall, 1),
        "tasks_per_s": round(tasks / wall, 1),
        "running_s": round(running_s, 2),
        "running_items_per_s": round(args.items / running_s, 1) if running_s > 0 else None,
        "finalize_s": round(wall - (t_report["last_commit_s"] or wall), 2),
        "split": split,
        "stdout": [text for _, text in lines],
        "cli_cpu_s": round(cli_cpu, 2),
        "slurm_daemons_cpu_s": {
            k: round(daemons1.get(k, 0.0) - daemons0.get(k, 0.0), 2) for k in daemons1
        },
        "status_json_s": round(status_s, 3),
        "status": {
            k: status[k] for k in ("status", "tasks", "items", "rows", "slurm") if k in status
        },
        "exactly_once": check,
        "task_stats": t_report,
        "manifests": m_report,
        "slurm_elements": elements,
        "sampler": samples,
        "load": mon.summary,
        "load_text": common.Monitor.describe(mon.summary),
        "folder": str(folder),
    }
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def report(r: dict[str, Any]) -> None:
    s, t, m, c = r["split"], r["task_stats"], r["manifests"], r["exactly_once"]
    smp = r["sampler"]
    print(
        f"   wall {r['wall_s']:.1f} s: {r['items']:,} items, {r['tasks']:,} tasks -> "
        f"{r['items_per_s']:,.0f} items/s, {r['tasks_per_s']:.1f} tasks/s "
        f"(running {r['running_s']:.1f} s at {r['running_items_per_s'] or 0:,.0f} items/s, "
        f"finalize {r['finalize_s']:.1f} s)"
    )
    print(
        f"   timeline (s): submitted {s['submit_s']}, queued {s['to_queued_s']}, first element "
        f"R {s['first_element_running_s']}, all R {s['all_elements_running_s']}, first claim "
        f"{s['first_claim_s']}, last commit {s['last_commit_s']}, last worker process "
        f"{s['last_worker_process_s']}, finalize seen {s['finalize_first_seen_s']}-"
        f"{s['finalize_last_seen_s']}, end {s['end_s']}"
    )
    print(
        f"   array elements: {t['workers_used']} took tasks, {m['elements_in_task_manifests']} in "
        f"task manifests, {smp['elements_seen_running']} seen RUNNING; peak RUNNING at once "
        f"{smp['peak_running_elements']} (worker processes {smp['peak_worker_processes']}), "
        f"peak tasks in flight {t['peak_tasks_in_flight']}"
    )
    tpw = t["tasks_per_worker"]
    print(
        f"   tasks per worker: min {tpw['min']}, median {tpw['median']}, max {tpw['max']}, "
        f"stdev {tpw['stdev']}; attempts {t['attempts']}"
    )
    print(
        f"   Slurm: {m['sbatch_calls']} sbatch calls, {m['slurm_jobs']} Slurm jobs (elements + "
        f"finalize), ids {m['slurm_job_ids']}; elements {r['slurm_elements']['states']} exit "
        f"{r['slurm_elements']['exit_codes']}; daemons CPU {r['slurm_daemons_cpu_s']}"
    )
    if m["alerts_fired"]:
        print(f"   alerts fired during the run: {m['alerts_fired']}")
    rss = list(smp["worker_peak_rss_mb"].values())
    print(
        f"   peak RSS: workers {min(rss, default=0):.0f}-{max(rss, default=0):.0f} MB (psutil), "
        f"finalize {smp['finalize_peak_rss_mb']:.0f} MB; status --json {r['status_json_s']:.2f} s"
    )
    print("   pace by fifth of the tasks (commit order):")
    for f in t["pace_by_fifth"]:
        print(
            f"     {f['tasks']} tasks in {f['span_s']} s: {f['items_per_s']} items/s, task "
            f"median {f['task_ms_median']} ms, p95 {f['task_ms_p95']} ms"
        )
    verdict = "OK" if c["ok"] else "FAILED"
    print(
        f"   exactly once: {verdict}: {c['input_ids']:,} input ids, {c['output_rows']:,} output "
        f"rows in {len(c['outputs'])} file(s), {c['duplicates']} duplicates, {c['missing']} "
        f"missing, {c['extra']} extra, {c['failed_items']} in failure manifests "
        f"{c['failure_manifests']}, {c['quarantined_lines']} quarantined"
    )
    print(f"   meanwhile: {r['load_text']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--time", default="02:00:00", help="slurm.time of the workers")
    parser.add_argument("--quick", action="store_true", help="10,000 items (1,000 tasks)")
    parser.add_argument("--sample-s", type=float, default=0.5, help="squeue/psutil period")
    parser.add_argument("--tmp", default=None, help="Folder for the run (default $TMPDIR).")
    parser.add_argument("--keep", action="store_true", help="Keep the run's folder.")
    args = parser.parse_args()
    if args.quick:
        args.items = 10_000
    info = common.machine()
    common.header("slurm at scale: pilot workers over many tasks", info)
    up = slurm_up()
    part = partition_info(PARTITION)
    print(f"   {up}")
    print(
        f"   partition {PARTITION}: {part['cpus_per_node']} CPUs x {part['nodes']} node(s), "
        f"OverSubscribe={part['oversubscribe']}: up to {part['single_cpu_jobs_at_once']} "
        f"single-CPU jobs at once; MaxArraySize {part['max_array_size']}"
    )
    print(f"   before: {common.load_text(common.load())}")
    result = run(args)
    report(result)
    path = common.save(
        f"slurm_scale-{result['tasks']}",
        {"machine": info, "slurm": part, "slurm_up": up, **result, "load_after": common.load()},
    )
    print(f"   saved {path}")
    if not result["exactly_once"]["ok"]:
        raise SystemExit("exactly-once check FAILED")


if __name__ == "__main__":
    main()
