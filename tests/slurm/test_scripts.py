"""The batch scripts and sbatch arguments, pinned by golden files; the state tables. No Slurm
needed. `UPDATE_GOLDEN=1 pytest tests/slurm/test_scripts.py` rewrites the golden files."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from slurmctl.config import ContainerOptions, SlurmOptions
from slurmctl.executors.slurm import scripts, states
from slurmctl.executors.slurm.sbatch import _squeue_line, sbatch_error, time_limit_s
from slurmctl.executors.slurm.states import LONG_NAMES, SQUEUE_CODES, SlurmState, parse_state

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
LAUNCH = scripts.Launch(
    root=Path("/srv/slurmctl/state"),
    cwd=Path("/home/alice/jobs"),
    python="/home/alice/.venv/bin/python",
    venv="/home/alice/.venv",
)
JOB = "backfill-2025-04-12"
OPTIONS = SlurmOptions(
    partition="debug",
    account="proj1",
    time="02:00:00",
    cpus_per_task=2,
    mem="8G",
    gres="gpu:1",
    array_parallelism=100,
    extra_args=["--constraint=avx2"],
)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; UPDATE_GOLDEN=1 rewrites it if meant"


@pytest.mark.parametrize("name", ["worker.sbatch", "finalize.sbatch"])
def test_batch_scripts_match_golden_files(name: str) -> None:
    check_golden(name, scripts.render(name, LAUNCH, JOB))


SETUP = ["module load python/3.11", "source /shared/venv/bin/activate  # the team's venv"]
CONTAINER = ContainerOptions(
    image="/shared/images/etl.sif", args=["--bind", "/srv/slurmctl", "--nv"], python="python3"
)
ENVIRONMENTS = {
    "setup": SlurmOptions(setup=SETUP),
    "python": SlurmOptions(python="/shared/venv/bin/python"),
    "container": SlurmOptions(setup=["module load apptainer"], container=CONTAINER),
}


@pytest.mark.parametrize("option", sorted(ENVIRONMENTS))
@pytest.mark.parametrize("name", ["worker.sbatch", "finalize.sbatch"])
def test_environment_options_match_golden_files(name: str, option: str) -> None:
    script = scripts.render(name, LAUNCH, JOB, ENVIRONMENTS[option])
    check_golden(f"{option}-{name}", script)


def test_setup_lines_run_before_exec_and_stop_the_script_when_they_fail() -> None:
    script = scripts.render("worker.sbatch", LAUNCH, JOB, SlurmOptions(setup=SETUP))
    lines = script.splitlines()
    assert (
        lines.index(SETUP[0])
        < lines.index(SETUP[1])
        < next(i for i, ln in enumerate(lines) if ln.startswith("exec "))
    )
    assert "} || setup_failed 1 $? 'source /shared/venv/bin/activate  # the team'\"'\"'s venv'" in (
        lines
    )


def test_slurm_python_replaces_the_submitters_interpreter_and_venv() -> None:
    options = SlurmOptions(python="/shared/venv/bin/python")
    for name in ("worker.sbatch", "finalize.sbatch"):
        script = scripts.render(name, LAUNCH, JOB, options)
        assert "exec /shared/venv/bin/python -m slurmctl --root /srv/slurmctl/state " in script
        assert "/home/alice/.venv" not in script


def test_container_wraps_the_worker_in_exec_and_leaves_finalize_on_the_host() -> None:
    options = SlurmOptions(container=CONTAINER)
    worker = scripts.render("worker.sbatch", LAUNCH, JOB, options)
    assert (
        "exec apptainer exec --bind /srv/slurmctl --nv /shared/images/etl.sif python3 -m slurmctl"
        " --root /srv/slurmctl/state worker --job-id backfill-2025-04-12" in worker
    )
    assert "VIRTUAL_ENV" not in worker
    finalize = scripts.render("finalize.sbatch", LAUNCH, JOB, options)
    assert "exec /home/alice/.venv/bin/python -m slurmctl --root" in finalize
    singularity = SlurmOptions(
        container=ContainerOptions(runtime="singularity", image="docker://x")
    )
    worker = scripts.render("worker.sbatch", LAUNCH, JOB, singularity)
    assert "exec singularity exec docker://x python -m slurmctl --root" in worker


def test_sbatch_arguments_match_golden_file() -> None:
    logs = LAUNCH.root / "logs" / JOB
    args = {
        "worker": scripts.worker_args(OPTIONS, JOB, logs, 4, 2),
        "worker_retry_phase": scripts.worker_args(SlurmOptions(), JOB, logs, 1, None, 60),
        "finalize": scripts.finalize_args(OPTIONS, JOB, logs, ["101", "102"]),
        # retry phase 2 after OOM kills (mem_factor 1.5: 8G -> 18432M), off a bad node
        "worker_retry_2_oom_bad_node": scripts.worker_args(
            scripts.for_phase(OPTIONS.model_copy(update={"exclude": ["gpu07"]}), 1.5, 2),
            JOB,
            logs,
            4,
            2,
            None,
            ["node12", "gpu07"],
        ),
    }
    check_golden("sbatch-args.json", json.dumps(args, indent=2) + "\n")


@pytest.mark.parametrize(
    ("mem", "factor", "times", "scaled"),
    [
        ("8G", 2.0, 1, "16384M"),
        ("512M", 1.5, 2, "1152M"),
        ("1000", 1.1, 1, "1100M"),
        ("8G", 2.0, 0, "8G"),
        ("2T", 1.0, 3, "2T"),
        ("100K", 2.0, 1, "1M"),
    ],
)
def test_retry_phases_scale_the_memory(mem: str, factor: float, times: int, scaled: str) -> None:
    assert scripts.scaled_mem(mem, factor, times) == scaled


def test_exec_so_signals_reach_python() -> None:
    script = scripts.render("worker.sbatch", LAUNCH, JOB)
    command = [ln for ln in script.splitlines() if not ln.startswith("#") and "slurmctl" in ln]
    assert command[-1].startswith("exec /home/alice/.venv/bin/python -m slurmctl --root ")


def test_a_remote_backend_is_handed_to_workers_and_finalize() -> None:
    launch = scripts.Launch(LAUNCH.root, LAUNCH.cwd, LAUNCH.python, None, "aws://b/p/?table=t")
    for name, command in (("worker.sbatch", "worker"), ("finalize.sbatch", "finalize")):
        script = scripts.render(name, launch, JOB)
        assert f"--backend 'aws://b/p/?table=t' {command} --job-id {JOB}" in script


def test_paths_with_spaces_are_quoted() -> None:
    launch = scripts.Launch(Path("/data/my state"), Path("/home/a b"), "/usr/bin/python3", None)
    script = scripts.render("worker.sbatch", launch, JOB)
    assert "cd '/home/a b' || exit 1" in script
    assert "--root '/data/my state' worker" in script
    assert "VIRTUAL_ENV" not in script


@pytest.mark.parametrize(
    ("count", "max_size", "parallelism", "expected"),
    [
        (4, 1001, None, [(4, None)]),
        (4, 1001, 2, [(4, 2)]),
        (7, 3, None, [(3, None), (3, None), (1, None)]),
        (2500, 1001, 100, [(1001, 41), (1001, 40), (498, 19)]),
        (7, 3, 2, [(3, 1), (3, 1), (1, 1)]),
    ],
)
def test_split_keeps_each_array_within_max_array_size(
    count: int, max_size: int, parallelism: int | None, expected: list[tuple[int, int | None]]
) -> None:
    assert scripts.split(count, max_size, parallelism) == expected


@pytest.mark.parametrize(
    ("time", "seconds", "lead"),
    [
        (None, None, 120),
        ("UNLIMITED", None, 120),
        ("30", 1800, 120),
        ("00:01:00", 60, 30),
        ("3:30", 210, 105),
        ("1-02", 93600, 120),
        ("2-00:00:10", 172810, 120),
    ],
)
def test_time_limits_and_signal_lead(time: str | None, seconds: int | None, lead: int) -> None:
    assert time_limit_s(time) == seconds
    assert scripts.signal_lead_s(SlurmOptions(time=time)) == lead


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--constraint=avx2", "--exclusive"], None),
        (["--array=0-9"], "--array is set by slurmctl"),
        (["-a", "0-9"], "-a is set by slurmctl"),
        (["--dependency=afterok:1"], "--dependency is set by slurmctl"),
        (["--signal=USR2@60"], "--signal is set by slurmctl"),
        (["-pgpu"], "-p: use slurm.partition instead"),
        (["--mem", "4G"], "--mem: use slurm.mem instead"),
        (["--comment=mine"], "--comment is set by slurmctl (slurmctl marks each submission"),
    ],
)
def test_extra_args_we_set_ourselves_are_refused(extra: list[str], problem: str | None) -> None:
    got = scripts.check_extra_args(extra)
    assert (got is None) if problem is None else (got is not None and got.startswith(problem))


def test_every_state_code_and_name_maps_onto_the_enum() -> None:
    assert {s.value for s in SlurmState} <= set(LONG_NAMES)
    tree = ast.parse(Path(states.__file__).read_text())
    enum = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SlurmState")
    documented = {
        a.targets[0].id  # type: ignore[attr-defined]
        for a, doc in zip(enum.body, enum.body[1:], strict=False)
        if isinstance(a, ast.Assign) and isinstance(doc, ast.Expr)
    }
    assert documented == {s.name for s in SlurmState}, "every member has a docstring"
    assert parse_state("PD") is SlurmState.PENDING and parse_state("CG").alive
    assert parse_state("CANCELLED by 0") is SlurmState.CANCELLED
    assert parse_state("TO").stopped_from_outside and not parse_state("CD").alive
    assert parse_state("REQUEUE_HOLD").alive and parse_state("what?") is SlurmState.UNKNOWN
    for code in ("PD", "R", "CG", "CD", "CA", "F", "TO", "NF", "PR", "S", "OOM", "BF", "DL"):
        assert code in SQUEUE_CODES


def test_squeue_lines_and_sbatch_errors_are_parsed() -> None:
    assert _squeue_line("12_3|FAILED|NonZeroExitCode|36608|").exit_code == 143
    assert _squeue_line("12_3|CANCELLED|None|15|").exit_code == 143  # killed by TERM
    gone = _squeue_line("40|TIMEOUT|TimeLimit|9|")
    assert (gone.job_id, gone.state, gone.exit_code) == ("40", SlurmState.TIMEOUT, 137)
    assert _squeue_line("12_0|RUNNING|None|0|").job_id == "12"
    err = "sbatch: error: invalid partition specified: nope\nallocation failure: x\n"
    assert sbatch_error(err) == "invalid partition specified: nope"


def _run_script(tmp_path: Path, options: SlurmOptions) -> subprocess.CompletedProcess[str]:
    launch = scripts.Launch(tmp_path / "root", tmp_path, "/nonexistent/python", None)
    path = tmp_path / "worker.sbatch"
    path.write_text(scripts.render("worker.sbatch", launch, JOB, options))
    env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "0"}
    return subprocess.run(
        ["bash", str(path)], capture_output=True, text=True, env=env, timeout=10, check=False
    )


def test_a_rendered_script_runs_setup_then_execs_slurm_python(tmp_path: Path) -> None:
    fake = tmp_path / "py"
    fake.write_text('#!/bin/bash\necho "X=$X SLURMCTL_HOME=$SLURMCTL_HOME args=$*"\n')
    fake.chmod(0o755)
    options = SlurmOptions(setup=["export X=from-setup  # a comment"], python=str(fake))
    out = _run_script(tmp_path, options)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        f"X=from-setup SLURMCTL_HOME={tmp_path}/root args=-m slurmctl --root {tmp_path}/root "
        f"worker --job-id {JOB} --worker-id 7_0@{socket.gethostname().split('.')[0]}\n"
    )


def test_a_failing_setup_line_stops_the_script_naming_it(tmp_path: Path) -> None:
    options = SlurmOptions(setup=["true", "module load nope 2>/dev/null || (exit 3)"])
    out = _run_script(tmp_path, options)
    assert out.returncode == 1
    assert out.stderr == (
        "slurmctl: slurm.setup[1] failed (exit 3): module load nope 2>/dev/null || (exit 3); "
        "slurmctl not started\n"
    )
