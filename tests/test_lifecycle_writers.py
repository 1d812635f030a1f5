"""slurmctl/lifecycle.py is the only writer of a job's status and pause flag.

The check reads the source: every `update_job(...)` call outside the lifecycle module and the
state stores must pass its changes as a dict literal (so they can be read here) without a
`status` or `paused` key. A new transition belongs in slurmctl/lifecycle.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import slurmctl

ROOT = Path(slurmctl.__file__).parent
OWNED = {"status", "paused"}
ALLOWED = {ROOT / "lifecycle.py"}
"""The lifecycle writes them; the state stores implement `update_job` (and the contract tests
call it directly, below the lifecycle)."""


def _writes(source: str, path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "update_job":
            continue
        where = f"{path.relative_to(ROOT.parent)}:{node.lineno}"
        changes = node.args[1] if len(node.args) > 1 else None
        changes = changes or next((k.value for k in node.keywords if k.arg == "changes"), None)
        if not isinstance(changes, ast.Dict):
            found.append(f"{where}: changes not a dict literal")
            continue
        for key in changes.keys:
            if key is None:
                found.append(f"{where}: ** in changes")
            elif isinstance(key, ast.Constant) and key.value in OWNED:
                found.append(f"{where}: writes {key.value!r}")
            elif not isinstance(key, ast.Constant):
                found.append(f"{where}: a computed key")
    return found


def test_only_the_lifecycle_writes_job_status() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path in ALLOWED or path.parent.is_relative_to(ROOT / "backends"):
            continue
        offenders += _writes(path.read_text(), path)
    assert offenders == []


def test_the_check_finds_a_status_write() -> None:
    bad = """
def f(backend, changes):
    backend.state.update_job("j", {"status": "FAILED", "updated_at": 1.0})
    backend.state.update_job("j", {"paused": True})
    backend.state.update_job("j", changes)
    backend.state.update_job("j", {**changes})
    backend.state.update_job("j", {}, counter_deltas={"x": 1})
"""
    assert _writes(bad, ROOT / "x.py") == [
        "slurmctl/x.py:3: writes 'status'",
        "slurmctl/x.py:4: writes 'paused'",
        "slurmctl/x.py:5: changes not a dict literal",
        "slurmctl/x.py:6: ** in changes",
    ]
