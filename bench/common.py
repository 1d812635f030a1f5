"""Shared plumbing for the benchmarks: inputs, the machine, the load beside a figure, timing
statistics, py-spy profiles and where results go (bench/out/, git-ignored)."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
VENV_BIN = REPO / ".venv" / "bin"

NOOP_HANDLER = "def process(item, ctx):\n    return item\n"


# --- the things we run ----------------------------------------------------------------------


def slurmctl_cmd() -> list[str]:
    """The installed console script, as a user types it; `python -m slurmctl` as a fallback."""
    script = VENV_BIN / "slurmctl"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "slurmctl"]


def pyspy_path() -> str | None:
    local = VENV_BIN / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


def item_line(n: int) -> str:
    """One input line, byte for byte what json.dumps gives for the benchmark's item."""
    return f'{{"id": "{n}", "n": {n}, "name": "user-{n}"}}\n'


def write_items(path: Path, count: int) -> int:
    """The benchmark input: `count` JSON lines; returns the file's size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    step = 50_000
    with open(path, "w") as f:
        for start in range(0, count, step):
            f.write("".join(item_line(n) for n in range(start, min(count, start + step))))
    return path.stat().st_size


def warm(path: Path) -> None:
    """Read a file once so both sides of a comparison find it in the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 22):
            pass


def write_job(
    folder: Path,
    *,
    job_id: str,
    batch_size: int,
    workers: int,
    input_name: str = "input.jsonl",
) -> Path:
    """A job definition beside a no-op handler (module `bench_handler`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_handler.py").write_text(NOOP_HANDLER)
    config = folder / "job.yaml"
    config.write_text(
        f"job_id: {job_id}\njob_type: bench\nhandler: bench_handler:process\n"
        f"input: {input_name}\nid_field: id\nbatch_size: {batch_size}\nworkers: {workers}\n"
        f"scratch: {folder / 'scratch'}\n"
    )
    return config


def task_manifests(jobdir: Path) -> list[dict[str, Any]]:
    """A local job's task manifests: the JSON lines each worker gathers (`tasks/*.jsonl`), and
    the one file per task of jobs written before (`tasks/*.json`)."""
    found: list[dict[str, Any]] = []
    for path in sorted((jobdir / "tasks").glob("*.json*")):
        if path.suffix == ".jsonl":
            found += [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        elif path.suffix == ".json":
            found.append(json.loads(path.read_text()))
    return found


def work_dir(base: str | None, name: str) -> Path:
    """A fresh temporary folder for one benchmark run (under --tmp when given)."""
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"slurmctl-bench-{name}-", dir=base))


# --- the machine and what else runs on it ---------------------------------------------------


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "slurmctl"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + (" (slurmctl/ modified)" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
    }


def _describe(info: dict[str, Any]) -> str:
    args = info.get("cmdline") or []
    if not args:
        return f"kernel {info.get('name')}"
    return " ".join(" ".join([Path(args[0]).name, *args[1:4]]).split())[:60]  # one line


class Monitor:
    """What else runs while a figure is measured: samples every process outside this benchmark's
    own process tree once a second (psutil) and the load average (what `uptime` shows).

        with Monitor() as mon:
            ...
        mon.summary  # {"loadavg_before", "loadavg_after", "others_cpu_mean_pct", ...}
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.summary: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._procs: dict[int, Any] = {}
        self._totals: Counter[str] = Counter()
        self._others: list[float] = []
        self._kernel: list[float] = []

    def __enter__(self) -> Monitor:
        self.summary["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        ticks = max(len(self._others), 1)
        self.summary.update(
            loadavg_after=[round(x, 2) for x in os.getloadavg()],
            samples=len(self._others),
            others_cpu_mean_pct=round(sum(self._others) / ticks, 1),
            others_cpu_max_pct=round(max(self._others, default=0.0), 1),
            kernel_cpu_mean_pct=round(sum(self._kernel) / ticks, 1),
            top=[
                f"[{what}] {total / ticks:.0f}%"
                for what, total in self._totals.most_common(4)
                if total / ticks >= 2
            ],
        )

    def _mine(self, psutil: Any) -> set[int]:
        try:
            me = psutil.Process()
            return {me.pid, *(c.pid for c in me.children(recursive=True))}
        except psutil.Error:
            return {os.getpid()}

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        self._sample(psutil, prime=True)
        while True:
            stopped = self._stop.wait(self.interval_s)
            self._sample(psutil, prime=False)  # a last one at the end: short runs get one too
            if stopped:
                return

    def _sample(self, psutil: Any, *, prime: bool) -> None:
        """CPU % of each process since the previous sample (psutil's cpu_percent(None))."""
        mine = self._mine(psutil)
        others = kernel = 0.0
        seen: set[int] = set()
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            pid = p.info["pid"]
            seen.add(pid)
            proc = self._procs.setdefault(pid, p)
            try:
                pct = proc.cpu_percent(None)
            except psutil.Error:
                continue
            if pid in mine or prime:
                continue
            what = _describe(p.info)
            if what.startswith("kernel "):
                kernel += pct
            else:
                others += pct
                self._totals[what] += pct
        for pid in set(self._procs) - seen:
            del self._procs[pid]
        if not prime:
            self._others.append(others)
            self._kernel.append(kernel)

    @staticmethod
    def describe(m: dict[str, Any]) -> str:
        la, lb = m.get("loadavg_before", [0, 0, 0]), m.get("loadavg_after", [0, 0, 0])
        top = ", ".join(m.get("top", [])) or "nothing over 2%"
        return (
            f"load {la[0]:.2f} -> {lb[0]:.2f} (1 min); other processes used "
            f"{m.get('others_cpu_mean_pct', 0):.0f}% CPU on average (max "
            f"{m.get('others_cpu_max_pct', 0):.0f}%, of {100 * (os.cpu_count() or 1)}%), "
            "kernel threads "
            f"{m.get('kernel_cpu_mean_pct', 0):.0f}%; busiest: {top}"
        )


def load() -> dict[str, Any]:
    """A snapshot: the load average and the processes busy over the next half second."""
    with Monitor(interval_s=0.5) as mon:
        time.sleep(0.5)
    return {
        "loadavg": mon.summary["loadavg_before"],
        "busy": mon.summary["top"],
        **mon.summary,
    }


def load_text(snapshot: dict[str, Any]) -> str:
    return Monitor.describe(snapshot)


# --- numbers --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def children_cpu_s() -> float:
    """CPU seconds (user + system) of every waited-for child process so far."""
    usage = os.times()
    return usage.children_user + usage.children_system


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:.1f} ms"


def save(name: str, result: dict[str, Any]) -> Path:
    """bench/out/<name>.json (the latest run) and a dated copy beside it."""
    OUT.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, sort_keys=True)
    path = OUT / f"{name}.json"
    path.write_text(text)
    (OUT / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(text)
    return path


def header(title: str, info: dict[str, Any]) -> None:
    print(f"== {title}")
    print(
        f"   {info['cores']} cores, {info['cpu_model']}, Python {info['python']}, "
        f"{info['date_utc']}, commit {info['git_commit']}"
    )


# --- profiles -------------------------------------------------------------------------------


def pyspy_record(cmd: list[str], raw_out: Path, *, rate: int = 100, env: Any = None) -> int:
    """Run cmd under `py-spy record --subprocesses`, writing collapsed stacks (raw format)."""
    spy = pyspy_path()
    if spy is None:
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    raw_out.parent.mkdir(parents=True, exist_ok=True)
    full = [spy, "record", "--subprocesses", "-f", "raw", "-r", str(rate), "-o", str(raw_out)]
    proc = subprocess.run([*full, "--", *cmd], env=env, check=False, capture_output=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode(errors="replace")[-2000:])
    return proc.returncode


def profile_run(cmd: list[str], raw_out: Path) -> dict[str, Any]:
    """One untimed run of cmd under py-spy; prints and returns its hot spots."""
    code = pyspy_record(cmd, raw_out)
    if code != 0:
        raise SystemExit(f"py-spy failed ({code})")
    summary = summarize_profile(raw_out)
    print_profile(summary, raw_out)
    return summary


def cli_json(root: Path, *args: str, env: Any = None, lines: bool = False) -> Any:
    """`slurmctl --root ROOT ARGS... --json`, parsed; lines: JSON lines, as a list."""
    done = subprocess.run(
        [*slurmctl_cmd(), "--root", str(root), *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode not in (0, 1, 3) or not done.stdout.strip():  # 1, 3: FAILED, PAUSED
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    out = done.stdout
    if lines:
        return [json.loads(line) for line in out.splitlines() if line.strip()]
    return json.loads(out)


def _frame_parts(frame: str) -> tuple[str, str]:
    """'func (path/file.py:12)' -> ('func', 'path/file.py:12')."""
    if frame.endswith(")") and " (" in frame:
        func, _, where = frame[:-1].rpartition(" (")
        return func, where
    return frame, ""


def _short(where: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in where:
            return where.split(marker, 1)[1]
    repo = str(REPO) + "/"
    return where.removeprefix(repo)


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Hot spots from py-spy's collapsed stacks: per process role, by own time (the sampled
    line itself) and by total time (the function anywhere on the stack)."""
    by_role: Counter[str] = Counter()
    own: Counter[tuple[str, str]] = Counter()
    total: Counter[tuple[str, str]] = Counter()
    ours_line: Counter[tuple[str, str]] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        role = "other"
        while frames and frames[0].startswith("process "):  # parent, then child, ...
            cmdline = frames.pop(0)
            role = "worker" if " worker " in cmdline else "cli"
            if "bench/" in cmdline:
                role = "bench"
        samples += count
        by_role[role] += count
        if not frames:
            continue
        func, where = _frame_parts(frames[-1])
        own[(f"{role}: {func}", _short(where))] += count
        for frame in reversed(frames):
            func, where = _frame_parts(frame)
            if _short(where).startswith("slurmctl/"):
                ours_line[(f"{role}: {func}", _short(where))] += count
                break
        seen: set[tuple[str, str]] = set()
        for frame in frames:
            func, where = _frame_parts(frame)
            file_only = _short(where).rsplit(":", 1)[0]
            key = (f"{role}: {func}", file_only)
            if key not in seen:
                seen.add(key)
                total[key] += count

    def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
        return [
            {"function": f, "where": w, "samples": n, "share": round(n / max(samples, 1), 4)}
            for (f, w), n in counter.most_common(top)
        ]

    return {
        "samples": samples,
        "by_process": {k: round(v / max(samples, 1), 4) for k, v in by_role.most_common()},
        "own": rows(own),
        "slurmctl_line": rows(ours_line),
        "total": rows(
            Counter(
                {
                    k: v
                    for k, v in total.items()
                    if "<frozen" not in k[1]
                    and not k[1].startswith("click/")
                    and not k[0].endswith(("<module>", ": main"))
                }
            )
        ),
    }


def print_profile(summary: dict[str, Any], path: Path) -> None:
    print(f"   profile: {path} ({summary['samples']} samples)")
    shares = ", ".join(f"{k} {v:.0%}" for k, v in summary["by_process"].items())
    print(f"   time by process: {shares}")
    print("   own time (the line on top of the stack):")
    for row in summary["own"]:
        print(f"     {row['share']:6.1%}  {row['function']}  {row['where']}")
    print("   by the innermost slurmctl line on the stack (where our code spends it):")
    for row in summary["slurmctl_line"]:
        print(f"     {row['share']:6.1%}  {row['function']}  {row['where']}")
    print("   total time (function anywhere on the stack):")
    for row in summary["total"]:
        print(f"     {row['share']:6.1%}  {row['function']}  {row['where']}")
