"""The batch scripts and sbatch arguments, pinned by golden files; the state tables. No Slurm
needed. `UPDATE_GOLDEN=1 pytest tests/slurm/test_scripts.py` rewrites the golden files."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from slurmctl.config import SlurmOptions
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


def test_sbatch_arguments_match_golden_file() -> None:
    logs = LAUNCH.root / "logs" / JOB
    args = {
        "worker": scripts.worker_args(OPTIONS, JOB, logs, 4, 2),
        "worker_retry_phase": scripts.worker_args(SlurmOptions(), JOB, logs, 1, None, 60),
        "finalize": scripts.finalize_args(OPTIONS, JOB, logs, ["101", "102"]),
    }
    check_golden("sbatch-args.json", json.dumps(args, indent=2) + "\n")


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
