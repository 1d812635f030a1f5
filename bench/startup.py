"""CLI start-up: the time a `slurmctl` process takes before it does anything, this checkout
against a base commit, run in alternation (docs/benchmarks.md, "CLI start-up").

Every `slurmctl` command and every local worker is a fresh interpreter that pays the imports of
its command; a test suite or a script polling `status` pays them thousands of times. Each side
runs as `python -m slurmctl` from its own source tree (the base is `git archive`d into a
temporary folder, the interpreter and packages are the same), so only slurmctl's code differs:

    .venv/bin/python bench/startup.py --base d09848d --repeat 5

Commands: `--help` (lists every command), `status`, `pause` and `worker` of a job that does not
exist (each the full start-up, then one refusal line, exit 2), and a small job end to end
(`submit` of 400 items in 4 batches on 4 local workers, each worker a fresh process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/common.py: the script's folder is on sys.path
from common import REPO, git_commit, load, load_text, median, save, write_items, write_job

COMMANDS = {
    "--help": ["--help"],
    "status (no job)": ["status", "nojob"],
    "pause (no job)": ["pause", "nojob"],
    "worker (no job)": ["worker", "--job-id", "nojob"],
}


def base_tree(commit: str, into: Path) -> Path:
    """The base commit's `slurmctl/` package, exported under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "slurmctl"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def timed(tree: Path, root: Path, args: list[str], expect: int) -> float:
    """Seconds for one `python -m slurmctl ARGS` run from `tree` (its package first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "slurmctl", "--root", str(root), *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - start
    if run.returncode != expect:
        raise SystemExit(f"{args}: exit {run.returncode}, expected {expect}: {run.stderr}")
    return took


def small_job(tree: Path, work: Path, n: int) -> float:
    folder = work / f"job-{tree.name}-{n}"
    write_items(folder / "input.jsonl", 400)
    config = write_job(folder, job_id="startup", batch_size=100, workers=4)
    return timed(tree, folder / "root", ["submit", str(config), "--no-progress"], 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--repeat", type=int, default=5, help="alternated pairs per command")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slurmctl-bench-startup-") as tmp:
        work = Path(tmp)
        (work / "base").mkdir()
        sides = {"base": base_tree(args.base, (work / "base").resolve()), "this": REPO}
        before = load()
        times: dict[str, dict[str, list[float]]] = {}
        for n in range(args.repeat):
            for label, cli_args in COMMANDS.items():
                expect = 0 if cli_args == ["--help"] else 2
                for side, tree in sides.items():
                    t = timed(tree, work / "empty-root", cli_args, expect)
                    times.setdefault(label, {}).setdefault(side, []).append(t)
            for side, tree in sides.items():
                t = small_job(tree, work, n)
                times.setdefault("submit, 400 items, 4 workers", {}).setdefault(side, []).append(t)
        after = load()
    print(f"== CLI start-up: this checkout ({git_commit()}) against {args.base}")
    print(f"   load before: {load_text(before)}")
    print(f"   load after:  {load_text(after)}")
    for label, by_side in times.items():
        b, t = median(by_side["base"]), median(by_side["this"])
        print(
            f"   {label:32s} base {b:.3f} s  this {t:.3f} s  ({t - b:+.3f} s, "
            f"{(t - b) / b:+.0%}; medians of {args.repeat}, min {min(by_side['this']):.3f} s "
            f"against {min(by_side['base']):.3f} s)"
        )
    save("startup", {"base": args.base, "commit": git_commit(), "times": times})


if __name__ == "__main__":
    main()
