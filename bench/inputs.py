"""Submit from each input format (issue 15): the library's `submit()` on the embedded backend from
JSON Lines, JSON Lines gzip, CSV, CSV gzip and Parquet of the same ids, against reading the same
file with pyarrow alone (its streaming readers, counting rows: the limit) in the same run, at two
sizes to show the peak RSS is flat in N.

    .venv/bin/python bench/inputs.py                          # 5,000,000 and 1,000,000 ids
    .venv/bin/python bench/inputs.py --items 200000 --small 50000   # a quick look (< 2 min)

Each measurement is a fresh child process (so its peak RSS, `ru_maxrss`, is its own): the
submit's, and beside it the id index's child process (`coordinator/idindex.py`), which the scan
starts for inputs of 8 MB and more. The inputs are generated once under --inputs (default
/tmp/slurmctl-bench-inputs) and kept for the next run. Items: {"id": "N", "n": N, "name":
"user-N"}; the CSV declares `input_columns: {n: int64}`, so its cells are converted as a user's
would be. batch_size 1000 (the batches' files are not what is measured here; bench/submit.py
measures them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

FORMATS = ["jsonl", "jsonl.gz", "csv", "csv.gz", "parquet"]
STEP = 100_000


def _rows(start: int, stop: int) -> tuple[list[str], list[int], list[str]]:
    ns = list(range(start, stop))
    return [str(n) for n in ns], ns, [f"user-{n}" for n in ns]


def generate(folder: Path, count: int) -> dict[str, Path]:
    """The inputs of `count` ids in every format, made once (a `.done` marker)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = {fmt: folder / f"ids-{count}.{fmt}" for fmt in FORMATS}
    done = folder / f"ids-{count}.done"
    if done.exists():
        return paths
    print(f"   generating {count:,} ids in {', '.join(FORMATS)} under {folder}")
    common.write_items(paths["jsonl"], count)
    with open(paths["csv"], "w") as f:
        f.write("id,n,name\n")
        for start in range(0, count, STEP):
            f.write("".join(f"{n},{n},user-{n}\n" for n in range(start, min(count, start + STEP))))
    for plain in ("jsonl", "csv"):
        with open(paths[plain], "rb") as src, gzip.open(paths[f"{plain}.gz"], "wb", 6) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    schema = pa.schema([("id", pa.string()), ("n", pa.int64()), ("name", pa.string())])
    with pq.ParquetWriter(paths["parquet"], schema) as writer:  # row groups of 1Mi rows
        for start in range(0, count, 1 << 20):
            ids, ns, names = _rows(start, min(count, start + (1 << 20)))
            writer.write_table(pa.table([ids, ns, names], schema=schema))
    done.write_text("")
    return paths


def _hwm_mb(pid: int | str = "self") -> float:
    """A process's peak RSS (VmHWM: its own, from exec on; ru_maxrss would count the fork)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


class ChildPeak:
    """The peak RSS of this process's children (the id index), their VmHWM read every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.05):
            for child in me.children(recursive=True):
                self.peak = max(self.peak, _hwm_mb(child.pid))

    def __enter__(self) -> ChildPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child_submit(fmt: str, path: Path, work: Path, batch_size: int) -> dict[str, Any]:
    """One submit() from path in this (fresh) process."""
    from slurmctl.backends import open_local
    from slurmctl.config import load_job_definition
    from slurmctl.coordinator.submit import submit

    config = common.write_job(
        work, job_id="bench-inputs", batch_size=batch_size, workers=1, input_name=str(path)
    )
    if fmt.startswith("csv"):
        config.write_text(config.read_text() + "input_columns: {n: int64}\n")
    backend = open_local(work / "root")
    definition = load_job_definition(config)
    common.warm(path)
    before = _hwm_mb()
    with ChildPeak() as index:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        result = submit(backend, definition)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    job = backend.state.get_job(result.job_id)
    backend.close()
    items = job.item_count if job else 0
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "items": items,
        "peak_rss_mb": _hwm_mb(),
        "rss_before_mb": before,
        "index_peak_rss_mb": index.peak,
    }


def child_pyarrow(fmt: str, path: Path) -> dict[str, Any]:
    """The same file through pyarrow's own streaming reader, rows counted: the limit."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    common.warm(path)
    t0 = time.perf_counter()
    rows = 0
    if fmt == "parquet":  # pyarrow's own threads: the limit on this machine
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
            rows += batch.num_rows
    else:
        stream = pa.input_stream(str(path), compression="gzip" if fmt.endswith(".gz") else None)
        reader = pacsv.open_csv(stream) if fmt.startswith("csv") else pajson.open_json(stream)
        for batch in reader:
            rows += batch.num_rows
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "items": rows, "peak_rss_mb": _hwm_mb()}


def _child(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def measure(fmt: str, path: Path, count: int, tmp: Path, batch_size: int) -> dict[str, Any]:
    work = tmp / f"job-{fmt}-{count}"
    shutil.rmtree(work, ignore_errors=True)
    with common.Monitor() as mon:
        s = _child("--submit", fmt, str(path), str(work), str(batch_size))
    shutil.rmtree(work, ignore_errors=True)
    if s["items"] != count:
        raise SystemExit(f"{fmt}: submit counted {s['items']} items, expected {count}")
    with common.Monitor() as mon_b:
        b = _child("--pyarrow", fmt, str(path))
    if b["items"] != count:
        raise SystemExit(f"{fmt}: pyarrow counted {b['items']} rows, expected {count}")
    s["items_per_s"], b["items_per_s"] = count / s["wall_s"], count / b["wall_s"]
    s["machine_load"], b["machine_load"] = mon.summary, mon_b.summary
    row = {
        "format": fmt,
        "items": count,
        "mb": round(path.stat().st_size / 1e6, 1),
        "submit": s,
        "pyarrow": b,
        "ratio": s["items_per_s"] / b["items_per_s"],
    }
    print(
        f"   {fmt:9} {count:>10,}  {row['mb']:7.1f} MB  submit {s['wall_s']:6.1f} s "
        f"(cpu {s['cpu_s']:5.1f} s) "
        f"{common.fmt_rate(s['items_per_s']):>9}/s  peak {s['peak_rss_mb']:6.1f} MB "
        f"(index {s['index_peak_rss_mb']:5.1f} MB) | pyarrow {b['wall_s']:5.2f} s "
        f"{common.fmt_rate(b['items_per_s']):>9}/s  peak {b['peak_rss_mb']:6.1f} MB "
        f"| ratio {row['ratio']:.3f}"
    )
    print(f"     meanwhile: {common.Monitor.describe(mon.summary)}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=5_000_000)
    ap.add_argument("--small", type=int, default=1_000_000, help="the second size (RSS flat in N)")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--inputs", default="/tmp/slurmctl-bench-inputs", help="generated inputs")
    ap.add_argument("--tmp", help="folder for the jobs' state (default: $TMPDIR)")
    ap.add_argument("--submit", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--pyarrow", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.submit:
        fmt, path, work, size = args.submit
        print(json.dumps(child_submit(fmt, Path(path), Path(work), int(size))))
        return
    if args.pyarrow:
        print(json.dumps(child_pyarrow(args.pyarrow[0], Path(args.pyarrow[1]))))
        return
    info = common.machine()
    formats = args.formats.split(",")
    common.header(f"inputs: submit of {args.small:,} and {args.items:,} ids per format", info)
    tmp = common.work_dir(args.tmp, "inputs")
    result: dict[str, Any] = {"args": vars(args), "machine": info, "runs": []}
    try:
        for count in (args.small, args.items):
            paths = generate(Path(args.inputs), count)
            for fmt in formats:
                result["runs"].append(measure(fmt, paths[fmt], count, tmp, args.batch_size))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"   results: {common.save('inputs', result)}")


if __name__ == "__main__":
    main()
