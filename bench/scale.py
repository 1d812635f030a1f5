"""Scale: N items (5,000,000 by default) at batch_size 100 (50,000 tasks) through the real CLI,
no-op handler, 2 local workers, against the hand-written multiprocessing baseline of
bench/throughput.py (same batches, one Parquet per batch, concatenated) in the same run.

What it reports, beside the baseline: submit items/s, end-to-end items/s and the ratio; the peak
RSS of the coordinator (the `submit` process until its workers are done), of each worker and of the
aggregator (the `submit` process during finalize), sampled with psutil every 0.2 s; the state
store's size on disk (`state.sqlite*`, `queue.sqlite*`, largest seen and final) and the object
store's; `status` latency sampled throughout (the library's `job_status()` every second in a
thread, `slurmctl status --json` every few seconds); the aggregation time; the final row check.

    .venv/bin/python bench/scale.py                      # 5,000,000 items (about 10 minutes)
    .venv/bin/python bench/scale.py --items 500000       # 500,000 items
    .venv/bin/python bench/scale.py --quick              # 100,000 items, < 60 s
    .venv/bin/python bench/scale.py --items 500000 --profile   # then a py-spy run (not timed)

Results: bench/out/scale-<N>.json (and a dated copy).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path
import psutil
import pyarrow.parquet as pq
import throughput  # the baseline: run_baseline (same batches, one Parquet each, concatenated)

JOB_ID = "bench-scale"
GOALS = {
    "ratio_min": 0.25,  # end-to-end slurmctl/baseline at 5M
    "rss_max_mb": 500,  # every process
    "status_max_s": 1.0,  # throughout
    "ratio_drift_max": 0.20,  # ratio at 5M within 20% of the ratio at 500k
}
MB = 1 << 20


# --- what the processes hold --------------------------------------------------------------


class RssSampler:
    """Every `interval_s`, the RSS of the submit process and of each of its descendants,
    attributed by command line: `worker ... --worker-id W` is worker W; the submit process is
    the coordinator until the workers it started have all exited, then the aggregator (finalize:
    failure manifest, merge levels, final manifest). Also the state files' size on disk."""

    def __init__(self, pid: int, root: Path, interval_s: float, t0: float) -> None:
        self.pid = pid
        self.root = root
        self.interval_s = interval_s
        self.t0 = t0
        self.peaks: dict[str, int] = {}
        self.series: list[tuple[float, str, int]] = []  # (t, role, rss): kept sparse, see below
        self.workers_seen = False
        self.workers_gone_at: float | None = None
        self.first_worker_at: float | None = None
        self.finalize_start_rss: int | None = None
        self.state_max: dict[str, int] = {}
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            top = psutil.Process(self.pid)
        except psutil.Error:
            return
        procs: dict[int, psutil.Process] = {}
        last_state = 0.0
        while not self.stop.is_set():
            now = time.perf_counter() - self.t0
            try:
                kids = top.children(recursive=True)
            except psutil.Error:
                break
            workers = 0
            rows: list[tuple[str, int]] = []
            for p in kids:
                p = procs.setdefault(p.pid, p)
                try:
                    cmd = p.cmdline()
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                if "worker" in cmd and "--worker-id" in cmd:
                    workers += 1
                    rows.append((f"worker {cmd[cmd.index('--worker-id') + 1]}", rss))
                else:
                    rows.append((f"other {' '.join(Path(c).name for c in cmd[:3])}", rss))
            if workers:
                self.workers_seen = True
                if self.first_worker_at is None:
                    self.first_worker_at = now
            elif self.workers_seen and self.workers_gone_at is None:
                self.workers_gone_at = now
            try:
                rss = top.memory_info().rss
            except psutil.Error:
                break
            role = "aggregator" if self.workers_gone_at is not None else "coordinator"
            if role == "aggregator" and self.finalize_start_rss is None:
                self.finalize_start_rss = rss
            rows.append((role, rss))
            for name, value in rows:
                if value > self.peaks.get(name, 0):
                    self.peaks[name] = value
            if self.samples % 5 == 0:  # one point a second for the JSON's RSS series
                self.series.extend((round(now, 1), name, value // MB) for name, value in rows)
            self.samples += 1
            if now - last_state >= 1.0:
                last_state = now
                for name, size in state_sizes(self.root).items():
                    self.state_max[name] = max(self.state_max.get(name, 0), size)
            self.stop.wait(self.interval_s)

    def close(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        workers = {k: v for k, v in self.peaks.items() if k.startswith("worker ")}
        return {
            "interval_s": self.interval_s,
            "samples": self.samples,
            "peak_rss_mb": {k: round(v / MB, 1) for k, v in sorted(self.peaks.items())},
            "coordinator_mb": round(self.peaks.get("coordinator", 0) / MB, 1),
            "aggregator_mb": round(self.peaks.get("aggregator", 0) / MB, 1),
            "aggregator_start_mb": round((self.finalize_start_rss or 0) / MB, 1),
            "worker_max_mb": round(max(workers.values(), default=0) / MB, 1),
            "workers": len(workers),
            "first_worker_s": self.first_worker_at,
            "workers_gone_s": self.workers_gone_at,
            "state_max_bytes": self.state_max,
            "series": self.series,
        }


def state_sizes(root: Path) -> dict[str, int]:
    """Apparent bytes of the state store (state.sqlite*) and the queue (queue.sqlite*)."""
    out = {"state": 0, "queue": 0}
    for kind in out:
        for path in root.glob(f"{kind}.sqlite*"):
            with contextlib.suppress(OSError):  # a WAL file may go away meanwhile
                out[kind] += path.stat().st_size
    return out


def tree_size(folder: Path) -> dict[str, int]:
    """Apparent bytes, bytes on disk (allocated blocks) and the file count of a folder."""
    apparent = disk = files = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
            else:
                st = e.stat(follow_symlinks=False)
                apparent += st.st_size
                disk += st.st_blocks * 512
                files += 1
    return {"apparent_bytes": apparent, "disk_bytes": disk, "files": files}


# --- status while it runs -------------------------------------------------------------------


class StatusSampler:
    """`job_status()` (the library, what `status` runs after its start-up) every `lib_every_s`
    in this thread, and `slurmctl status --json` (the CLI) every `cli_every_s` beside it.
    Both start once the job record exists; each sample notes the job's status at that time."""

    def __init__(self, root: Path, job_id: str, t0: float, lib_every_s: float, cli_every_s: float):
        self.root = root
        self.job_id = job_id
        self.t0 = t0
        self.lib_every_s = lib_every_s
        self.cli_every_s = cli_every_s
        self.lib: list[tuple[float, float, str]] = []  # (t, seconds, job status)
        self.cli: list[tuple[float, float, str]] = []
        self.startup: list[tuple[float, float, str]] = []  # `slurmctl --version` beside the CLI
        self.progress: list[tuple[float, int]] = []  # (t, items succeeded): the workers' pace
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._lib, daemon=True),
            threading.Thread(target=self._cli, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _job_exists(self) -> bool:
        db = self.root / "state.sqlite"
        if not db.exists():
            return False
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            try:
                row = conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (self.job_id,))
                return row.fetchone() is not None
            finally:
                conn.close()
        except sqlite3.Error:
            return False

    def _wait_for_job(self) -> bool:
        while not self.stop.wait(0.1):
            if self._job_exists():
                return True
        return False

    def _lib(self) -> None:
        from slurmctl.backends import open_local
        from slurmctl.observe.status import job_status

        if not self._wait_for_job():
            return
        backend = open_local(self.root)
        try:
            while True:
                t = time.perf_counter()
                try:
                    doc = job_status(backend, self.job_id)
                    self.lib.append((round(t - self.t0, 2), time.perf_counter() - t, doc["status"]))
                    self.progress.append((round(t - self.t0, 2), doc["items"]["succeeded"]))
                except Exception as e:  # noqa: BLE001 - a failed sample is reported, not fatal
                    self.errors.append(f"library at {t - self.t0:.1f} s: {e!r}"[:300])
                if self.stop.wait(self.lib_every_s):
                    return
        finally:
            backend.close()

    def _cli(self) -> None:
        if not self._wait_for_job():
            return
        cmd = [*common.slurmctl_cmd(), "--root", str(self.root), "status", self.job_id, "--json"]
        version = [*common.slurmctl_cmd(), "--version"]
        while True:
            t = time.perf_counter()  # the start-up alone, under the same load: `--version`
            subprocess.run(version, capture_output=True, check=False)
            self.startup.append((round(t - self.t0, 2), time.perf_counter() - t, "-"))
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            took = time.perf_counter() - t
            if proc.returncode == 0:
                try:
                    status = json.loads(proc.stdout)["status"]
                except (ValueError, KeyError):
                    status = "?"
                self.cli.append((round(t - self.t0, 2), took, status))
            else:
                self.errors.append(f"cli at {t - self.t0:.1f} s: {proc.stderr.strip()[-300:]}")
            if self.stop.wait(self.cli_every_s):
                return

    def close(self) -> dict[str, Any]:
        self.stop.set()
        for t in self.threads:
            t.join()

        def figures(samples: list[tuple[float, float, str]]) -> dict[str, Any]:
            took = [s for _, s, _ in samples]
            if not took:
                return {"samples": 0}
            worst = max(samples, key=lambda s: s[1])
            by_status: dict[str, list[float]] = {}
            for _, s, st in samples:
                by_status.setdefault(st, []).append(s)
            return {
                "samples": len(took),
                "median_s": statistics.median(took),
                "p95_s": common.p95(took),
                "max_s": worst[1],
                "max_at_s": worst[0],
                "max_during": worst[2],
                "by_status": {
                    k: {"samples": len(v), "median_s": statistics.median(v), "max_s": max(v)}
                    for k, v in by_status.items()
                },
            }

        return {
            "library": figures(self.lib),
            "cli": figures(self.cli),
            "cli_startup": figures(self.startup),
            "lib_every_s": self.lib_every_s,
            "cli_every_s": self.cli_every_s,
            "progress": self.progress,
            "pace": pace(self.progress),
            "errors": self.errors[:20],
            "error_count": len(self.errors),
        }


def pace(progress: list[tuple[float, int]]) -> list[dict[str, float]]:
    """Items/s in each fifth of the running phase (first item done to last): a pace that
    falls from the first fifth to the last, at the same machine load, grows with the tasks done."""
    moving = [(t, n) for t, n in progress if n > 0]
    if len(moving) < 6:
        return []
    total = moving[-1][1]
    moving = moving[: next(i for i, (_, n) in enumerate(moving) if n == total) + 1]
    out = []
    for k in range(5):
        lo, hi = total * k / 5, total * (k + 1) / 5
        inside = [(t, n) for t, n in moving if lo <= n <= hi]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            (t0, n0), (t1, n1) = inside[0], inside[-1]
            out.append({"fifth": k + 1, "from_s": t0, "items_per_s": round((n1 - n0) / (t1 - t0))})
    return out


# --- slurmctl through its CLI ---------------------------------------------------------------


def run_slurmctl(folder: Path, count: int, args: argparse.Namespace) -> dict[str, Any]:
    root = folder / "root"
    cmd = [*common.slurmctl_cmd(), "--root", str(root), "submit", str(folder / "job.yaml")]
    cmd.append("--no-progress")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cpu0 = common.children_cpu_s()
    t0 = time.perf_counter()
    watcher = throughput.StatusWatcher(root, JOB_ID, t0)
    err_path = folder / "submit.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        rss = RssSampler(proc.pid, root, args.sample_s, t0)
        status = StatusSampler(root, JOB_ID, t0, args.status_every, args.cli_status_every)
        assert proc.stdout is not None
        lines: list[tuple[float, str]] = []
        for raw in proc.stdout:
            lines.append((time.perf_counter() - t0, raw.decode(errors="replace").rstrip()))
        code = proc.wait()
    wall = time.perf_counter() - t0
    cpu = common.children_cpu_s() - cpu0
    memory = rss.close()
    latency = status.close()
    seen = watcher.close()
    stderr = err_path.read_text(errors="replace")
    if code != 0:
        raise SystemExit(f"slurmctl submit failed ({code}):\n{stderr[-3000:]}")
    submitted = next((t for t, text in lines if text.endswith(" submitted")), None)
    final = common.cli_json(root, "status", JOB_ID)
    rows = sum(pq.read_metadata(o["path"]).num_rows for o in final["outputs"])
    final_bytes = sum(Path(o["path"]).stat().st_size for o in final["outputs"])
    row_groups = sum(pq.read_metadata(o["path"]).num_row_groups for o in final["outputs"])
    manifest = json.loads(
        (root / "objects" / "jobs" / JOB_ID / "final" / "manifest.json").read_text()
    )
    aggregating = seen.get("AGGREGATING")
    completed = seen.get("COMPLETED")
    gone = memory["workers_gone_s"]
    phases = {
        "submit_s": submitted,
        "running_s": (gone - submitted) if gone and submitted else None,
        "finalize_s": (wall - gone) if gone else None,
        "failure_manifest_s": (aggregating - gone) if aggregating and gone else None,
        "aggregation_s": (completed - aggregating) if completed and aggregating else None,
        "exit_s": (wall - completed) if completed else None,
    }
    sizes = state_sizes(root)
    objects = tree_size(root / "objects")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rows": rows,
        "final_row_groups": row_groups,
        "final_bytes": final_bytes,
        "aggregation_levels": manifest.get("levels"),
        "aggregation_inputs": manifest.get("inputs"),
        "status": final["status"],
        "status_items": final["items"],
        "tasks": final["tasks"],
        "phases": phases,
        "seen": seen,
        "memory": memory,
        "status_latency": latency,
        "state_bytes": {"final": sizes, "max_seen": memory["state_max_bytes"]},
        "objects": objects,
        "scratch": tree_size(folder / "scratch"),
        "stdout": [text for _, text in lines],
        "stderr_tail": stderr[-2000:],
    }


def run_baseline(input_path: Path, work: Path, batch_size: int, workers: int) -> dict[str, Any]:
    """bench/throughput.py's baseline, with the peak RSS of its processes sampled too."""
    me = psutil.Process()
    peaks: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            try:
                kids = me.children(recursive=True)
                rows = [("parent", me.memory_info().rss)]
                rows += [("pool worker", p.memory_info().rss) for p in kids]
            except psutil.Error:
                continue
            for name, value in rows:
                peaks[name] = max(peaks.get(name, 0), value)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = throughput.run_baseline(input_path, work, batch_size, workers)
    finally:
        stop.set()
        thread.join()
    result["peak_rss_mb"] = {k: round(v / MB, 1) for k, v in peaks.items()}
    return result


# --- the benchmark --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=5_000_000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="100,000 items (< 60 s)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--sample-s", type=float, default=0.2, help="RSS sampling period")
    ap.add_argument("--status-every", type=float, default=1.0, help="job_status() period (s)")
    ap.add_argument(
        "--cli-status-every", type=float, default=5.0, help="`status --json` period (s)"
    )
    ap.add_argument("--profile", action="store_true", help="then one more run under py-spy")
    ap.add_argument("--profile-items", type=int, help="items of the profiled run (default --items)")
    ap.add_argument("--tmp", help="folder for the inputs and outputs (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.quick:
        args.items = min(args.items, 100_000)

    info = common.machine()
    tasks = -(-args.items // args.batch_size)
    common.header(
        f"scale: {args.items:,} items, batch_size {args.batch_size} ({tasks:,} tasks), "
        f"{args.workers} workers, no-op handler",
        info,
    )
    work = common.work_dir(args.tmp, "scale")
    free = shutil.disk_usage(work).free
    print(f"   work dir {work} ({free / 1e9:.0f} GB free)")
    result: dict[str, Any] = {"args": vars(args), "machine": info, "goals": GOALS}
    try:
        input_path = work / "input.jsonl"
        size = common.write_items(input_path, args.items)
        result["input_bytes"] = size
        print(f"   input {input_path} ({size / 1e6:.1f} MB)")
        folder = work / "job"
        folder.mkdir()
        os.link(input_path, folder / "input.jsonl")
        common.write_job(folder, job_id=JOB_ID, batch_size=args.batch_size, workers=args.workers)
        common.warm(input_path)
        with common.Monitor() as mon:
            result["slurmctl"] = s = run_slurmctl(folder, args.items, args)
        s["machine_load"] = mon.summary
        s["items_per_s"] = args.items / s["wall_s"]
        s["submit_items_per_s"] = args.items / s["phases"]["submit_s"]
        shutil.rmtree(folder, ignore_errors=True)
        if not args.no_baseline:
            common.warm(input_path)
            with common.Monitor() as mon:
                result["baseline"] = b = run_baseline(
                    input_path, work / "baseline", args.batch_size, args.workers
                )
            b["machine_load"] = mon.summary
            b["items_per_s"] = args.items / b["wall_s"]
            shutil.rmtree(work / "baseline", ignore_errors=True)
            result["ratio"] = s["items_per_s"] / b["items_per_s"]
        result["checks"] = checks(result, args.items)
        report(result, args.items)
        if args.profile:
            result["profile"] = profile(work, args)
    finally:
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"   results: {common.save(f'scale-{args.items}', result)}")
    if not result["checks"]["rows_ok"]:
        raise SystemExit(1)


def checks(result: dict[str, Any], items: int) -> dict[str, Any]:
    s = result["slurmctl"]
    mem = s["memory"]
    lat = s["status_latency"]
    worst_rss = max(mem["coordinator_mb"], mem["aggregator_mb"], mem["worker_max_mb"])
    worst_status = max(lat["library"].get("max_s", 0), lat["cli"].get("max_s", 0))
    out: dict[str, Any] = {
        "rows_ok": s["rows"] == items and s["status"] == "COMPLETED",
        "rss_ok": worst_rss < GOALS["rss_max_mb"],
        "worst_rss_mb": worst_rss,
        "status_ok": worst_status < GOALS["status_max_s"],
        "worst_status_s": worst_status,
    }
    if "ratio" in result:
        out["ratio_ok"] = result["ratio"] >= GOALS["ratio_min"]
    return out


def report(result: dict[str, Any], items: int) -> None:
    s = result["slurmctl"]
    ph = s["phases"]
    mem = s["memory"]
    lat = s["status_latency"]

    def sec(v: float | None) -> str:
        return f"{v:.2f} s" if v is not None else "?"

    print(
        f"   slurmctl  {s['wall_s']:8.2f} s  {common.fmt_rate(s['items_per_s']):>9} items/s  "
        f"cpu {s['cpu_s']:.1f} s  rows {s['rows']:,} ({s['status']})"
    )
    print(f"     meanwhile: {common.Monitor.describe(s['machine_load'])}")
    print(
        f"     submit {sec(ph['submit_s'])} ({common.fmt_rate(s['submit_items_per_s'])} items/s), "
        f"running {sec(ph['running_s'])}, finalize {sec(ph['finalize_s'])} (failure manifest "
        f"{sec(ph['failure_manifest_s'])}, aggregation {sec(ph['aggregation_s'])}, "
        f"{s['aggregation_levels']} levels over {s['aggregation_inputs']} outputs, final file "
        f"{s['final_row_groups']} row groups, {s['final_bytes'] / 1e6:.1f} MB)"
    )
    workers = ", ".join(
        f"{k.removeprefix('worker ')} {v:.0f}"
        for k, v in mem["peak_rss_mb"].items()
        if k.startswith("worker ")
    )
    print(
        f"     peak RSS (MB): coordinator {mem['coordinator_mb']:.0f}, workers [{workers}], "
        f"aggregator {mem['aggregator_mb']:.0f} (at finalize start "
        f"{mem['aggregator_start_mb']:.0f})"
    )
    lib, cli = lat["library"], lat["cli"]
    if lib.get("samples"):
        print(
            f"     status: job_status() median {common.fmt_ms(lib['median_s'])}, max "
            f"{common.fmt_ms(lib['max_s'])} ({lib['samples']} samples, max during "
            f"{lib['max_during']})"
        )
    if cli.get("samples"):
        print(
            f"             status --json  median {common.fmt_ms(cli['median_s'])}, max "
            f"{common.fmt_ms(cli['max_s'])} ({cli['samples']} samples, max during "
            f"{cli['max_during']}); `slurmctl --version` beside it median "
            f"{common.fmt_ms(lat['cli_startup']['median_s'])}, max "
            f"{common.fmt_ms(lat['cli_startup']['max_s'])}"
        )
    if lat.get("pace"):
        shown = ", ".join(f"{p['items_per_s']:,}" for p in lat["pace"])
        print(f"     workers' pace by fifth of the items (items/s): {shown}")
    if lat["error_count"]:
        print(f"             {lat['error_count']} failed samples, e.g. {lat['errors'][0]}")
    st = s["state_bytes"]
    print(
        f"     state: state.sqlite* {st['final']['state'] / 1e6:.1f} MB (max seen "
        f"{st['max_seen'].get('state', 0) / 1e6:.1f}), queue.sqlite* "
        f"{st['final']['queue'] / 1e6:.1f} MB "
        f"(max seen {st['max_seen'].get('queue', 0) / 1e6:.1f});"
        f" objects {s['objects']['apparent_bytes'] / 1e6:.0f} MB in {s['objects']['files']:,} "
        f"files ({s['objects']['disk_bytes'] / 1e6:.0f} MB on disk)"
    )
    if "baseline" in result:
        b = result["baseline"]
        print(
            f"   baseline  {b['wall_s']:8.2f} s  {common.fmt_rate(b['items_per_s']):>9} items/s  "
            f"cpu {b['cpu_s']:.1f} s  rows {b['rows']:,}  (pool {b['batches_s']:.2f} s, "
            f"concat {b['concat_s']:.2f} s), peak RSS (MB) {b['peak_rss_mb']}"
        )
        print(f"     meanwhile: {common.Monitor.describe(b['machine_load'])}")
        print(f"   ratio slurmctl/baseline {result['ratio']:.3f} (goal >= {GOALS['ratio_min']})")
    c = result["checks"]
    print(
        f"   checks: rows {'ok' if c['rows_ok'] else 'WRONG'}, RSS < {GOALS['rss_max_mb']} MB "
        f"{'ok' if c['rss_ok'] else 'MISSED'} (worst {c['worst_rss_mb']:.0f}), status < 1 s "
        f"{'ok' if c['status_ok'] else 'MISSED'} (worst {c['worst_status_s']:.3f} s)"
    )


def profile(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    count = args.profile_items or args.items
    folder = work / "profile"
    folder.mkdir()
    common.write_items(folder / "input.jsonl", count)
    config = common.write_job(
        folder, job_id=JOB_ID, batch_size=args.batch_size, workers=args.workers
    )
    raw = common.OUT / f"scale-{count}-profile.txt"
    cmd = [*common.slurmctl_cmd(), "--root", str(folder / "root"), "submit", str(config)]
    print(f"== profile: {count:,} items under py-spy (not timed)")
    return common.profile_run([*cmd, "--no-progress"], raw)


if __name__ == "__main__":
    main()
