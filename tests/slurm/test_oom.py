"""An OOM-killed worker on the real Slurm: a second cluster of our own that enforces `--mem`
(`SLURM_DEV_MEM_LIMITS=1`: CR_Core_Memory, jobacct_gather/linux with OverMemoryKill, polled every
second) beside the shared one, which does not. The item that makes its worker exceed `mem` is
classified `oom` (not `poison`) and its retry phase asks for `retry.mem_factor` times the
memory, which it then fits in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job
from tests.slurm import util
from tests.slurm.test_slurm_up import _two_free_ports, elsewhere, up

__all__ = ["elsewhere"]  # the fixture: a second cluster's folders, its daemons stopped after

HOG_HANDLER = """
import os, time

def process(item, ctx):
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(item["id"] + "\\n")
    if item["id"] == "1":
        hog = b"x" * (400 * 1024 * 1024)  # over 300M with the worker's own ~100 MB
        time.sleep(4)  # memory is polled every second
        del hog
    return {"id": item["id"]}
"""


def test_an_oom_killed_worker_is_classified_oom_and_its_retry_gets_more_memory(
    slurm_cluster: None,
    elsewhere: dict[str, str],
    tmp_path: Path,
    job_id: Callable[[str], str],
) -> None:
    port = _two_free_ports()
    env = {
        **elsewhere,
        "SLURM_DEV_MEM_LIMITS": "1",
        "SLURM_DEV_CTLD_PORT": str(port),
        "SLURM_DEV_SLURMD_PORT": str(port + 1),
    }
    started = up(env)
    assert started.returncode == 0, started.stdout + started.stderr
    jid = job_id("oom")
    log = tmp_path / "calls.txt"
    config = make_job(
        tmp_path / "job",
        3,
        handler=HOG_HANDLER,
        batch_size=1,
        workers=1,
        job_id=jid,
        extra=util.SLURM_JOB
        + "slurm: {mem: 300M}\nretry: {max_task_failures: 1, mem_factor: 2, backoff_s: 0}\n",
    )
    root = tmp_path / "root"
    run_env = {"SLURM_CONF": env["SLURM_CONF"], "CALLS_FILE": str(log)}
    out = cli(root, "submit", str(config), "--follow", "--no-progress", env=run_env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_exactly_once(root, jid, 3)
    deaths = util.manifest(root, jid)["slurm_deaths"]
    assert {d["kind"] for d in deaths.values()} == {"oom"}
    assert {d["task"] for d in deaths.values()} == {"task-000001"}
    # the item failed as oom (transient) in the initial phase, then succeeded with 600M
    failures = cli(root, "analyze-errors", jid, "--json", env=run_env)
    assert '"oom"' in failures.stdout, failures.stdout
    runs = [h for h in util.history(root, jid) if h["action"] == "workers"]
    assert [r["mem"] for r in runs][-1] == "600M"
    assert {r["mem"] for r in runs[:-1]} == {"300M"}
    assert util.job(root, jid).status == "COMPLETED"
