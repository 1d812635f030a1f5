"""The Python API from a script (or a notebook cell): submit a job, wait for it with progress,
load its results into pandas (the Arrow table when pandas is not installed) and look at its
failures.

    .venv/bin/python examples/api_quickstart.py [--count 1000] [--root DIR] [--work DIR]

It writes a tiny job (an input of COUNT numbers, a handler that squares them and refuses every
multiple of 97) into the work folder and runs it on 2 local workers with the embedded backend.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import slurmctl

HANDLER = """
from slurmctl import PermanentError


def process(item, ctx):
    if item["n"] % 97 == 0 and item["n"]:
        raise PermanentError(f"{item['n']} is a multiple of 97")
    return {"id": item["id"], "n": item["n"], "square": item["n"] ** 2}
"""


def write_job(work: Path, count: int) -> Path:
    """The job's folder: input.jsonl, handler.py and job.yaml."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "input.jsonl", "w") as f:
        for n in range(count):
            f.write(json.dumps({"id": f"n{n}", "n": n}) + "\n")
    (work / "handler.py").write_text(HANDLER)
    config = work / "job.yaml"
    config.write_text(
        "job_id: squares\njob_type: example\nhandler: handler:process\ninput: input.jsonl\n"
        "id_field: id\nbatch_size: 100\nworkers: 2\n"
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--root", type=Path, default=None, help="State root (a temporary one).")
    parser.add_argument("--work", type=Path, default=None, help="Job folder (a temporary one).")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="slurmctl-example-"))
    config = write_job(args.work or tmp / "job", args.count)

    job = slurmctl.submit(config, root=args.root or tmp / "state")  # returns once it runs
    print(f"submitted {job.job_id}: {job.status().status}")
    try:
        final = job.wait(progress=True)
    except slurmctl.JobFailed as e:
        print(f"failed: {e}")
        raise SystemExit(1) from None
    items = final.items
    print(f"{final.status}: {items.succeeded} succeeded, {items.failed} failed of {items.total}")

    table = job.results().sort_by("n")
    try:
        frame = table.to_pandas()
    except ImportError:  # pandas is optional: the Arrow table is the result
        print(f"pandas is not installed; the Arrow table ({table.num_rows} rows):")
        print(table.slice(0, 5))
    else:
        print(f"pandas DataFrame ({len(frame)} rows):")
        print(frame.head())
    fails = job.failures()
    print(f"{fails.num_rows} failures, e.g. {fails.slice(0, 1).to_pylist()}")


if __name__ == "__main__":
    main()
