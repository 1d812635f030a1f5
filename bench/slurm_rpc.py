"""The Slurm controller calls a job makes, by who makes them (issue 17's quiet controller).

For each task count, a job of that many tasks (batch_size 1, no-op handler, W pilot workers) is
submitted with `submit --follow` on the local Slurm, with stand-ins for sbatch, squeue, sacct,
scontrol and scancel first on PATH: each notes its call and runs the real command. sbatch's
default `--export=ALL` hands that PATH to the workers and finalize jobs too, so every call is
counted, attributed by the environment it ran in: a worker element (SLURM_ARRAY_JOB_ID set), a
finalize job (SLURM_JOB_ID set), or the submitter (`submit` and `--follow`'s liveness checks).
The goal: the finalize and submit counts do not grow with the task count.

    scripts/slurm-up                                   # as root
    .venv/bin/python bench/slurm_rpc.py                # 100 and 2,000 tasks, 4 workers
    .venv/bin/python bench/slurm_rpc.py --tasks 100,2000,10000   # docs/benchmarks.md, issue 17
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel", "sacctmgr")
"""sacctmgr asks slurmdbd, not slurmctld (the QOS limits, at submit): counted all the same."""


def stand_ins(folder: Path, log: Path) -> Path:
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for name in COMMANDS:
        real = shutil.which(name)
        assert real, f"{name} is not on PATH: run scripts/slurm-up first"
        who = (
            'who=submitter; [ -n "$SLURM_JOB_ID" ] && who=finalize; '
            '[ -n "$SLURM_ARRAY_JOB_ID" ] && who=worker'
        )
        (bin_dir / name).write_text(
            f'#!/bin/bash\n{who}\necho "$who {name}" >> {log}\nexec {real} "$@"\n'
        )
        (bin_dir / name).chmod(0o755)
    return bin_dir


def one(tasks: int, workers: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="slurmctl-rpc-"))
    log = folder / "calls.log"
    bin_dir = stand_ins(folder, log)
    (folder / "handler.py").write_text(common.NOOP_HANDLER)
    common.write_items(folder / "input.jsonl", tasks)
    job_id = f"rpc-{tasks}-{int(time.time())}"
    (folder / "job.yaml").write_text(
        f"job_id: {job_id}\njob_type: bench\nhandler: handler:process\ninput: input.jsonl\n"
        f"id_field: id\nbatch_size: 1\nworkers: {workers}\nexecutor: slurm\n"
        f"slurm: {{time: '00:30:00'}}\n"
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    start = time.monotonic()
    out = subprocess.run(
        [
            *common.slurmctl_cmd(),
            "--root",
            str(folder / "root"),
            "submit",
            str(folder / "job.yaml"),
            "--follow",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=folder,
    )
    wall = time.monotonic() - start
    assert out.returncode == 0, out.stdout + out.stderr
    calls = Counter(tuple(ln.split()) for ln in log.read_text().splitlines())
    history = [
        json.loads(ln)
        for ln in (folder / "root" / "objects" / "jobs" / job_id / "history.jsonl").open()
    ]
    finalizes = sum(h["action"] == "finalize" for h in history)
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "tasks": tasks,
        "workers": workers,
        "wall_s": round(wall, 1),
        "finalize_jobs": finalizes,
        "calls": {f"{who} {cmd}": n for (who, cmd), n in sorted(calls.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="100,2000", help="task counts, comma-separated")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    results = [one(int(t), args.workers) for t in args.tasks.split(",")]
    for r in results:
        print(json.dumps(r))
    common.OUT.mkdir(parents=True, exist_ok=True)
    (common.OUT / "slurm_rpc.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
