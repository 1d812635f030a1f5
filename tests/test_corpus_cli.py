"""Every case of tests/corpus/ through the real CLI: one line on stderr naming the problem,
exit code 2, no traceback, and no job left behind (docs/architecture.md, invariant 7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import cli

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p for p in CORPUS.iterdir() if (p / "layer").is_file())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_refused_with_one_line_and_nothing_left(case: Path, tmp_path: Path) -> None:
    work = tmp_path / case.name
    shutil.copytree(case, work)
    root = tmp_path / "root"
    run = cli(root, "submit", str(work / "job.yaml"))
    expected = (case / "expected.txt").read_text().strip()
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "sk-live" not in run.stderr
    assert json.loads(cli(root, "list", "--json").stdout) == []
    leftovers = list((root / "objects" / "jobs").glob("*")) if (root / "objects").exists() else []
    assert leftovers == []
