"""slurm.setup, slurm.python and slurm.container on the real Slurm: the lines run in the batch
shell before slurmctl, the named interpreter is the one exec'd, and the container runtime gets
`exec <args> <image> <python> -m slurmctl ... worker` while finalize stays on the host."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq

from tests.helpers import assert_exactly_once, cli, make_job, status, wait_for
from tests.slurm import util

ENV_HANDLER = """
import os

def process(item, ctx):
    return {"id": item["id"], "seen": os.environ.get("SETUP_SEEN", "unset")}
"""


def _wrapper(path: Path, record: Path, then: str) -> Path:
    """An executable that notes each call (its first words) in `record`, then execs `then`."""
    path.write_text(f'#!/bin/bash\necho "$(basename "$0") $*" >> {record}\nexec {then} "$@"\n')
    path.chmod(0o755)
    return path


def _says(log: Path, line: str) -> bool:
    return log.exists() and line in log.read_text()


def _seen(root: Path, job_id: str) -> list[str]:
    outputs = status(root, job_id)["outputs"]
    return [v for o in outputs for v in pq.read_table(o["path"]).column("seen").to_pylist()]


def test_setup_lines_run_and_slurm_python_is_the_interpreter(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("setup")
    calls = tmp_path / "calls.txt"
    python = _wrapper(tmp_path / "node-python", calls, sys.executable)
    extra = util.SLURM_JOB + (
        "slurm:\n"
        "  setup:\n"
        "    - export SETUP_SEEN=from-setup-line  # set on the node, not by the submitter\n"
        "    - test -x /bin/sh\n"
        f"  python: {python}\n"
    )
    config = make_job(
        tmp_path / "job", 40, handler=ENV_HANDLER, batch_size=10, workers=2, job_id=jid, extra=extra
    )
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), "--follow", "--no-progress", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_exactly_once(root, jid, 40)
    assert _seen(root, jid) == ["from-setup-line"] * 40
    lines = calls.read_text().splitlines()
    workers = [ln for ln in lines if " worker --job-id " in ln]
    finals = [ln for ln in lines if " finalize --job-id " in ln]
    assert len(workers) == 2 and len(finals) == 1, lines
    assert all(ln.startswith(f"node-python -m slurmctl --root {root} ") for ln in lines), lines


def test_a_failing_setup_line_is_named_in_the_logs(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("badsetup")
    extra = util.SLURM_JOB + "slurm:\n  setup: ['true', 'source /nonexistent/venv/bin/activate']\n"
    config = make_job(tmp_path / "job", 10, batch_size=10, workers=1, job_id=jid, extra=extra)
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    run = util.manifest(root, jid)["slurm_runs"][0]
    said = (
        "slurmctl: slurm.setup[1] failed (exit 1): source /nonexistent/venv/bin/activate; "
        "slurmctl not started"
    )
    logs = root / "logs" / jid
    for log in (
        logs / f"worker-{run['arrays'][0]}_0.log",
        logs / f"finalize-{run['finalize']}.log",
    ):
        wait_for(partial(_says, log, said), 60, f"{log.name}")
        lines = log.read_text().splitlines()
        assert lines[-1] == said and "No such file or directory" in lines[0], lines


def test_a_container_runtime_execs_the_worker_and_finalize_stays_on_the_host(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    """`apptainer` here is a stand-in put on PATH by a setup line: it records its arguments and
    execs what follows the image, as `apptainer exec` runs a command in the image."""
    jid = job_id("container")
    calls = tmp_path / "calls.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runtime = bin_dir / "apptainer"
    runtime.write_text(
        "#!/bin/bash\n"
        f'echo "apptainer $*" >> {calls}\n'
        '[ "$1" = exec ] || exit 64\n'
        'shift; while [ "$1" != /images/etl.sif ]; do shift; done; shift\n'
        'exec "$@"\n'
    )
    runtime.chmod(0o755)
    inner = _wrapper(tmp_path / "image-python", calls, sys.executable)
    extra = util.SLURM_JOB + (
        "slurm:\n"
        f"  setup: ['export PATH={bin_dir}:$PATH', 'export SETUP_SEEN=host-setup']\n"
        f"  container: {{image: /images/etl.sif, args: [--bind, /data, --no-home], "
        f"python: {inner}}}\n"
    )
    config = make_job(
        tmp_path / "job", 20, handler=ENV_HANDLER, batch_size=10, workers=2, job_id=jid, extra=extra
    )
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), "--follow", "--no-progress", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_exactly_once(root, jid, 20)
    lines = calls.read_text().splitlines()
    runs = [ln for ln in lines if ln.startswith("apptainer ")]
    assert len(runs) == 2, lines
    assert all(
        ln.startswith(
            f"apptainer exec --bind /data --no-home /images/etl.sif {inner} -m slurmctl "
            f"--root {root} worker --job-id {jid} --worker-id "
        )
        for ln in runs
    ), runs
    inside = [ln for ln in lines if ln.startswith("image-python ")]
    assert len(inside) == 2 and all(" worker --job-id " in ln for ln in inside), lines
    # finalize ran the submitter's interpreter on the host, not through the runtime
    finals = [h for h in util.history(root, jid) if h["action"] == "finalize"]
    assert [h["status"] for h in finals] == ["COMPLETED"]
