"""Streaming submit (issue 16): how soon the first task is committed after `slurmctl submit`
starts, and the end-to-end wall time against bench/throughput.py's hand-written baseline.

    .venv/bin/python bench/streaming.py                       # embedded: 1,000,000 items
    .venv/bin/python bench/streaming.py --items 100000 --aws  # moto: 100,000 items, first commit
    .venv/bin/python bench/streaming.py --no-baseline         # only the slurmctl side

The job: batch_size 100, 2 local workers, a no-op handler (bench/common.py), through the real
CLI (`slurmctl submit job.yaml --no-progress`). A thread in this process reads the job's counters
through the library every 20 ms (embedded) or 200 ms (moto) and notes when `initial.tasks.SUCCESS`
first turns positive ("first commit"), and when the command prints `submitted`. With --aws the
job runs against a moto server (bench/scale_aws.py's) and the run stops at the first commit (the
end-to-end time on moto is not a figure: moto is far slower than AWS). Results:
bench/out/streaming-<backend>-<N>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path
import scale_aws
import throughput

JOB_ID = "bench-streaming"
SUCCESS = "initial.tasks.SUCCESS"


class FirstCommit:
    """Polls the job's counters until a task of the initial phase is committed."""

    def __init__(self, config: Path, root: Path, t0: float, every_s: float) -> None:
        self.config, self.root, self.t0, self.every_s = config, root, t0, every_s
        self.at: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from slurmctl.backends.spec import BackendSpec
        from slurmctl.config import load_job_definition

        backend = None
        while not self.stop.wait(self.every_s):
            try:
                if backend is None:
                    if not (self.root / "state.sqlite").exists() and not self._aws():
                        continue
                    definition = load_job_definition(self.config)
                    backend = BackendSpec.for_definition(definition, self.root).open()
                if backend.state.counters(JOB_ID).get(SUCCESS, 0) > 0:
                    self.at = time.perf_counter() - self.t0
                    return
            except Exception:  # noqa: BLE001 - the store is not there yet: poll again
                continue

    def _aws(self) -> bool:
        return "backend: aws" in self.config.read_text()

    def close(self) -> float | None:
        self.stop.set()
        self.thread.join()
        return self.at


def run_slurmctl(
    folder: Path, config: Path, env: dict[str, str], stop_at_first: bool, every_s: float
) -> dict[str, Any]:
    root = folder / "root"
    cmd = [*common.slurmctl_cmd(), "--root", str(root), "submit", str(config), "--no-progress"]
    cpu0 = common.children_cpu_s()
    t0 = time.perf_counter()
    watch = FirstCommit(config, root, t0, every_s)
    with open(folder / "submit.stderr", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        assert proc.stdout is not None
        marks: list[float] = []

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                if raw.decode(errors="replace").rstrip().endswith(" submitted"):
                    marks.append(time.perf_counter() - t0)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if stop_at_first:
            watch.thread.join()
            proc.terminate()  # stopped at a checkpoint; the figure is the first commit
            proc.wait()
            reader.join()
        else:
            code = proc.wait()
            reader.join()
            if code != 0:
                text = (folder / "submit.stderr").read_text(errors="replace")
                raise SystemExit(f"slurmctl submit failed ({code}):\n{text[-3000:]}")
    wall = time.perf_counter() - t0
    submitted = marks[0] if marks else None
    first = watch.close()
    out: dict[str, Any] = {
        "first_commit_s": first,
        "submitted_s": submitted,
        "wall_s": wall,
        "cpu_s": common.children_cpu_s() - cpu0,  # submit and the workers it waited for
    }
    if not stop_at_first:
        status = common.cli_json(root, "status", JOB_ID, env=env)
        out["status"] = status["status"]
        out["items"] = status["items"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--aws", action="store_true", help="against a moto server; first commit only")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--label", default="", help="added to the results' file name")
    ap.add_argument("--tmp", help="folder for the inputs and outputs (default: $TMPDIR)")
    args = ap.parse_args()
    info = common.machine()
    where = "moto" if args.aws else "embedded"
    common.header(
        f"streaming submit ({where}): {args.items:,} items, batch_size {args.batch_size}, "
        f"{args.workers} workers",
        info,
    )
    work = common.work_dir(args.tmp, "streaming")
    result: dict[str, Any] = {"args": vars(args), "machine": info}
    server = None
    try:
        folder = work / "job"
        common.write_items(folder / "input.jsonl", args.items)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.aws:
            env.update(scale_aws.FAKE_ENV)
            os.environ.update(scale_aws.FAKE_ENV)
            server = scale_aws.Server(work / "moto.log")
            ns = argparse.Namespace(batch_size=args.batch_size, workers=args.workers)
            config = scale_aws.write_job(folder, server.url, ns)
            config.write_text(config.read_text().replace(scale_aws.JOB_ID, JOB_ID))
            init = [*common.slurmctl_cmd(), "--root", str(folder / "root"), "init", str(config)]
            subprocess.run(init, check=True, capture_output=True, env=env)
        else:
            config = common.write_job(
                folder, job_id=JOB_ID, batch_size=args.batch_size, workers=args.workers
            )
        common.warm(folder / "input.jsonl")
        with common.Monitor() as mon:
            s = run_slurmctl(folder, config, env, args.aws, 0.2 if args.aws else 0.02)
        s["machine_load"] = mon.summary
        result["slurmctl"] = s
        first = s["first_commit_s"]
        print(f"   first commit after {first:.2f} s" if first else "   no commit seen")
        if s["submitted_s"] is not None:
            print(f"   `submitted` printed after {s['submitted_s']:.2f} s")
        if not args.aws:
            print(f"   slurmctl {s['wall_s']:.2f} s end to end ({s['status']})")
        print(f"     meanwhile: {common.Monitor.describe(mon.summary)}")
        if not args.aws and not args.no_baseline:
            common.warm(folder / "input.jsonl")
            with common.Monitor() as mon:
                b = throughput.run_baseline(
                    folder / "input.jsonl", work / "baseline", args.batch_size, args.workers
                )
            b["machine_load"] = mon.summary
            result["baseline"] = b
            result["ratio"] = b["wall_s"] / s["wall_s"]
            print(
                f"   baseline {b['wall_s']:.2f} s; ratio baseline/slurmctl wall "
                f"{result['ratio']:.3f}"
            )
            print(f"     meanwhile: {common.Monitor.describe(mon.summary)}")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"   results: {common.save(f'streaming-{where}-{args.items}{args.label}', result)}")


if __name__ == "__main__":
    main()
