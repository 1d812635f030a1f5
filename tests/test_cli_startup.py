"""The CLI imports a command's module only when that command runs (docs/benchmarks.md, "CLI
start-up"): every worker and every `status` pays its process's imports, thousands of times a
job."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from slurmctl.cli import COMMANDS, cli

HEAVY = ("slurmctl.executors", "slurmctl.coordinator", "slurmctl.finalize")
"""What a worker or a read-only command must not import: the executors, submit, finalize."""


def test_every_command_is_mapped_to_the_module_that_defines_it() -> None:
    for module in set(COMMANDS.values()):
        importlib.import_module(f"slurmctl.cli.{module}")
    assert sorted(cli.commands) == sorted(COMMANDS)
    for name, command in cli.commands.items():
        assert command.callback is not None
        assert command.callback.__module__ == f"slurmctl.cli.{COMMANDS[name]}", name


def _modules_after(tmp_path: Path, *args: str) -> tuple[int, str, list[str]]:
    """Run `slurmctl ARGS` in a fresh interpreter; its exit code, stderr and the slurmctl
    modules it had imported when it exited."""
    probe = tmp_path / "modules.json"
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: open({str(probe)!r}, 'w').write(json.dumps("
        "sorted(m for m in sys.modules if m.startswith('slurmctl')))))\n"
        f"sys.argv = ['slurmctl', '--root', {str(tmp_path / 'root')!r}, *{list(args)!r}]\n"
        "from slurmctl.cli import main\n"
        "main()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    return run.returncode, run.stderr, json.loads(probe.read_text())


@pytest.mark.parametrize(
    "args",
    [["worker", "--job-id", "nojob"], ["status", "nojob"], ["pause", "nojob"]],
    ids=["worker", "status", "pause"],
)
def test_a_worker_and_the_commands_that_read_a_job_import_no_executor(
    tmp_path: Path, args: list[str]
) -> None:
    code, err, modules = _modules_after(tmp_path, *args)
    assert code == 2, err
    assert err == "error: no job 'nojob' in this state root; `slurmctl list` shows the jobs\n"
    assert [m for m in modules if m.startswith(HEAVY)] == []
    assert f"slurmctl.cli.{COMMANDS[args[0]]}" in modules
    assert "slurmctl.cli.submit" not in modules


def test_help_lists_every_command(tmp_path: Path) -> None:
    code, err, modules = _modules_after(tmp_path, "--help")
    assert code == 0, err
    assert {f"slurmctl.cli.{m}" for m in COMMANDS.values()} <= set(modules)
