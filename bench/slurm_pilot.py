"""Pilot workers vs one Slurm job per batch, on the local Slurm (issue 3's benchmark).

N small batches (10 items each, no-op handler), from submit to COMPLETED:

- slurmctl: `submit --follow` with W pilot workers in one array, then finalize (aggregation
  included), on the executor: slurm;
- (a) the submitit pattern: `sbatch --array=0-(N-1)`, one element per batch, each a Python
  process reading its batch file and writing its Parquet output; done when no element is left;
- (b) Parsl's HighThroughputExecutor with a SlurmProvider: one block (one Slurm job) of W
  workers running the same per-batch function, from `parsl.load` to the last result (block
  start-up included). Parsl lives in its own venv (`--parsl-python`); skipped when absent.

All run in the same invocation, one after the other; the Slurm job count of each is reported.

    scripts/slurm-up                                   # as root
    python3 -m venv /tmp/parsl-venv && /tmp/parsl-venv/bin/pip install parsl pyarrow
    .venv/bin/python bench/slurm_pilot.py              # 400 and 1,000 batches, 8 workers
    .venv/bin/python bench/slurm_pilot.py --sizes 100 --workers 4 --parsl-python none
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

GOAL = 0.25
GOAL_PARSL = 1.5
BATCH = 10
DEFAULT_PARSL = "/tmp/parsl-venv/bin/python"

ONE_BATCH = """
import json, sys
import pyarrow as pa, pyarrow.parquet as pq

def process(item):
    return item

folder, index = sys.argv[1], int(sys.argv[2])
with open(f"{folder}/batch-{index:06d}.jsonl") as f:
    rows = [process(json.loads(line)) for line in f]
pq.write_table(pa.Table.from_pylist(rows), f"{folder}/out-{index:06d}.parquet")
"""


PARSL = """
import json, os, sys, time
import parsl
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SingleNodeLauncher
from parsl.providers import SlurmProvider

folder, batches, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


@parsl.python_app
def one_batch(folder, index):
    import json
    import pyarrow as pa, pyarrow.parquet as pq

    with open(f"{folder}/batch-{index:06d}.jsonl") as f:
        rows = [json.loads(line) for line in f]
    pq.write_table(pa.Table.from_pylist(rows), f"{folder}/out-{index:06d}.parquet")
    return len(rows)


t0 = time.monotonic()
provider = SlurmProvider(
    partition="debug", nodes_per_block=1, init_blocks=1, min_blocks=1, max_blocks=1,
    walltime="00:30:00", exclusive=False, launcher=SingleNodeLauncher(),
    worker_init=f"export PATH={os.path.dirname(sys.executable)}:$PATH",
)
htex = HighThroughputExecutor(
    label="htex", address="127.0.0.1", max_workers_per_node=workers, cores_per_worker=0.01,
    provider=provider,
)
with parsl.load(Config(executors=[htex], run_dir=f"{folder}/runinfo", strategy="none")):
    rows = sum(f.result() for f in [one_batch(folder, i) for i in range(batches)])
print(json.dumps({"wall_s": round(time.monotonic() - t0, 2), "rows": rows}))
"""


def write_batches(data: Path, batches: int) -> None:
    data.mkdir(parents=True)
    for i in range(batches):
        lines = "".join(common.item_line(i * BATCH + k) for k in range(BATCH))
        (data / f"batch-{i:06d}.jsonl").write_text(lines)


def run_parsl(folder: Path, batches: int, workers: int, python: str) -> dict[str, Any]:
    """(b): Parsl HTEX, one SlurmProvider block of `workers` workers."""
    data = folder / "data"
    write_batches(data, batches)
    (folder / "parsl_run.py").write_text(PARSL)
    env = {**os.environ, "PATH": f"{Path(python).parent}:{os.environ.get('PATH', '')}"}
    out = subprocess.run(
        [python, str(folder / "parsl_run.py"), str(data), str(batches), str(workers)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=folder,
    )
    if out.returncode != 0:
        raise SystemExit(f"parsl run failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rows"] == batches * BATCH, got
    return {"wall_s": got["wall_s"], "slurm_jobs": 1}


def squeue_alive(job_id: str) -> int:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-j", job_id, "-o", "%i"], capture_output=True, text=True
    )
    return len(out.stdout.split())


def run_per_batch(folder: Path, batches: int) -> dict[str, Any]:
    """(a): one array element per batch, as submitit would submit a map over the batches."""
    data = folder / "data"
    write_batches(data, batches)
    (folder / "one_batch.py").write_text(ONE_BATCH)
    script = folder / "one.sh"
    script.write_text(
        textwrap.dedent(f"""\
        #!/bin/bash
        exec {sys.executable} {folder / "one_batch.py"} {data} "$SLURM_ARRAY_TASK_ID"
        """)
    )
    t0 = time.monotonic()
    out = subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{batches - 1}", "-o", "/dev/null", str(script)],
        capture_output=True,
        text=True,
        check=True,
    )
    array = out.stdout.strip().split(";")[0]
    while squeue_alive(array):
        time.sleep(0.2)
    wall = time.monotonic() - t0
    done = len(list(data.glob("out-*.parquet")))
    assert done == batches, f"only {done} of {batches} batches have an output"
    return {"wall_s": round(wall, 2), "slurm_jobs": batches, "array": array}


def run_slurmctl(folder: Path, batches: int, workers: int) -> dict[str, Any]:
    job_id = f"bench-pilot-{batches}-{int(time.time())}"
    common.write_items(folder / "input.jsonl", batches * BATCH)
    config = common.write_job(folder, job_id=job_id, batch_size=BATCH, workers=workers)
    config.write_text(config.read_text() + "executor: slurm\n")
    root = folder / "root"
    t0 = time.monotonic()
    out = subprocess.run(
        [*common.slurmctl_cmd(), "--root", str(root), "submit", str(config), "--follow"],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
    )
    wall = time.monotonic() - t0
    if out.returncode != 0 or "COMPLETED" not in out.stdout:
        raise SystemExit(f"slurmctl run failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    manifest = json.loads((root / "objects/jobs" / job_id / "manifest.json").read_text())
    runs = manifest["slurm_runs"]
    jobs = sum(r["workers"] or 0 for r in runs) + sum(1 for r in runs if r["finalize"])
    return {"wall_s": round(wall, 2), "slurm_jobs": jobs, "runs": len(runs), "job_id": job_id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 1000])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--tmp", default=None, help="Folder for the runs (default $TMPDIR).")
    parser.add_argument(
        "--parsl-python",
        default=DEFAULT_PARSL,
        help="Python of a venv with parsl and pyarrow ('none' skips Parsl).",
    )
    args = parser.parse_args()
    parsl_python = args.parsl_python if Path(args.parsl_python).exists() else None
    if parsl_python is None:
        print(f"   Parsl skipped: no {args.parsl_python}")
    info = common.machine()
    common.header("slurm pilot vs one job per batch", info)
    print(f"   {common.load_text(common.load())}")
    results: list[dict[str, Any]] = []
    for batches in args.sizes:
        per_batch = run_per_batch(common.work_dir(args.tmp, f"array-{batches}"), batches)
        parsl = None
        if parsl_python:
            folder = common.work_dir(args.tmp, f"parsl-{batches}")
            parsl = run_parsl(folder, batches, args.workers, parsl_python)
        pilot = run_slurmctl(common.work_dir(args.tmp, f"pilot-{batches}"), batches, args.workers)
        ratio = pilot["wall_s"] / per_batch["wall_s"]
        result: dict[str, Any] = {
            "batches": batches,
            "items": batches * BATCH,
            "slurmctl": pilot,
            "per_batch_array": per_batch,
            "ratio": round(ratio, 3),
        }
        line = (
            f"   {batches:5d} batches: slurmctl {pilot['wall_s']:6.1f} s "
            f"({pilot['slurm_jobs']} Slurm jobs) | (a) one element per batch "
            f"{per_batch['wall_s']:6.1f} s ({per_batch['slurm_jobs']} jobs), ratio {ratio:.2f} "
            f"(goal <= {GOAL})"
        )
        if parsl is not None:
            result["parsl"] = parsl
            result["ratio_parsl"] = round(pilot["wall_s"] / parsl["wall_s"], 3)
            line += (
                f" | (b) Parsl HTEX {parsl['wall_s']:6.1f} s (1 job), ratio "
                f"{result['ratio_parsl']:.2f} (goal <= {GOAL_PARSL})"
            )
        results.append(result)
        print(line)
    path = common.save(
        "slurm_pilot",
        {
            "machine": info,
            "workers": args.workers,
            "batch_size": BATCH,
            "goal": GOAL,
            "results": results,
            "load_after": common.load(),
        },
    )
    print(f"   saved {path}")


if __name__ == "__main__":
    main()
