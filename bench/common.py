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


def busy_processes(sample_s: float = 0.5, top: int = 5) -> list[str]:
    """Other processes using CPU right now (not this benchmark): 'name pid cpu%'."""
    try:
        import psutil
    except ImportError:
        return []
    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.info["pid"] == me:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    time.sleep(sample_s)
    busy: list[tuple[float, str]] = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if pct >= 5.0:
            busy.append((pct, f"{p.info['name']} {p.info['pid']} {pct:.0f}%"))
    return [text for _, text in sorted(busy, reverse=True)[:top]]


def load() -> dict[str, Any]:
    """What `uptime` shows, and who else is busy: reported beside every figure."""
    one, five, fifteen = os.getloadavg()
    return {"loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)], "busy": busy_processes()}


def load_text(snapshot: dict[str, Any]) -> str:
    la = snapshot["loadavg"]
    busy = ", ".join(snapshot["busy"]) or "none over 5%"
    return f"load {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; other busy processes: {busy}"


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
    return f"{seconds * 1000:.1f} ms"


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
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        role = "other"
        if frames and frames[0].startswith("process "):
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
        "total": rows(
            Counter(
                {
                    k: v
                    for k, v in total.items()
                    if "<frozen" not in k[1] and not k[0].endswith("<module>")
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
    print("   total time (function anywhere on the stack):")
    for row in summary["total"]:
        print(f"     {row['share']:6.1%}  {row['function']}  {row['where']}")
