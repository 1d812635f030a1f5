"""Failure manifests at scale (issue 15): `slurmctl failures JOB --to f.parquet` over a job whose
manifest lists N failures, for N = 100k and 1M (3M with --large), peak RSS and records/s of the
command; RSS must be flat in N (the records stream). Baseline in the same run: loading the same
records stored in the old form (one JSON document `{"items": [...]}`), as the earlier version's
readers did, in a process of its own.

    .venv/bin/python bench/failures.py            # N = 100k, 1M
    .venv/bin/python bench/failures.py --large    # and 3M

The job is a real one (submitted through the CLI, a few items failed); its manifest is then
replaced by N synthetic records of the same fields through `finalize.failures.store`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

sys.path.insert(0, str(common.REPO))

from slurmctl.backends import open_local
from slurmctl.finalize import failures
from tests.helpers import cli, make_job

OLD_FORM = """
import json, sys
doc = json.load(open(sys.argv[1]))
print(len(doc["items"]))
"""


def _record(i: int) -> dict[str, Any]:
    return {
        "item_id": str(i),
        "index": i % 100,
        "task_id": f"task-{i // 100:06d}",
        "batch_id": f"batch-{i // 100:06d}",
        "phase": "initial",
        "error_type": "not_found",
        "permanent": True,
        "message": f"HTTPError: 404 Client Error: Not Found for url: /users/{i}",
        "signature": "HTTPError: 404 Client Error: Not Found for url: /users/<n>",
        "attempt": 1,
        "reason": "permanent error",
    }


def _peak(cmd: list[str]) -> tuple[float, int, str]:
    """Seconds, peak RSS (KiB) and stdout of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd}: exit {proc.returncode}: {err}")
    return elapsed, usage.ru_maxrss, out


def run(base: Path, n: int) -> dict[str, Any]:
    shutil.rmtree(base, ignore_errors=True)
    root = base / "root"
    config = make_job(base / "job", 1000, batch_size=100, workers=2)
    assert cli(root, "submit", str(config), "--no-progress").returncode == 0
    records = base / "records.jsonl"
    with open(records, "w") as f:
        for i in range(n):
            f.write(json.dumps(_record(i), sort_keys=True) + "\n")
    backend = open_local(root)
    failures.store(backend, "t1", "initial", records, n, 0)
    backend.close()
    out = base / "f.parquet"
    cmd = [sys.executable, "-m", "slurmctl", "--root", str(root), "failures", "t1"]
    cmd += ["--to", str(out)]
    secs, rss, printed = _peak(cmd)
    assert printed.startswith(f"{n} failures written"), printed
    old = base / "old.json"
    with open(old, "w") as f:  # the old form, as the earlier FailureWriter wrote it
        f.write('{"job_id": "t1", "phase": "initial", "items": [\n')
        with open(records) as src:
            for i, line in enumerate(src):
                f.write((",\n" if i else "") + line.rstrip("\n"))
        f.write(f'\n], "count": {n}, "retried": 0, "retried_into": null}}\n')
    old_secs, old_rss, _ = _peak([sys.executable, "-c", OLD_FORM, str(old)])
    shutil.rmtree(base, ignore_errors=True)
    return {
        "n": n,
        "secs": secs,
        "per_s": n / secs,
        "rss_mb": rss / 1024,
        "old_load_secs": old_secs,
        "old_rss_mb": old_rss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="Also 3M failures.")
    args = parser.parse_args()
    sizes = [100_000, 1_000_000] + ([3_000_000] if args.large else [])
    base = common.REPO / "bench" / "out" / "failures"
    print("failures  `failures --to parquet`: s  records/s  peak RSS | old form json.load: s  RSS")
    rows = [run(base, n) for n in sizes]
    for r in rows:
        print(
            f"{r['n']:>9,}  {r['secs']:7.1f} {r['per_s']:10,.0f} {r['rss_mb']:8.0f} MB | "
            f"{r['old_load_secs']:6.1f} {r['old_rss_mb']:6.0f} MB"
        )
    growth = rows[-1]["rss_mb"] / rows[0]["rss_mb"]
    print(f"peak RSS x{growth:.2f} from {sizes[0]:,} to {sizes[-1]:,} failures (flat: < x1.5)")


if __name__ == "__main__":
    main()
