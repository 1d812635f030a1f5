"""examples/api_quickstart.py, run as a user runs it: submit, wait with progress, the results
into pandas when it is installed (else the Arrow table), the failures."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "api_quickstart.py"


def test_api_quickstart_example(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--count",
            "300",
            "--root",
            str(tmp_path / "root"),
            "--work",
            str(tmp_path / "job"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] in ("submitted squares: PENDING", "submitted squares: RUNNING")
    assert lines[1] == "COMPLETED: 297 succeeded, 3 failed of 300"
    if importlib.util.find_spec("pandas") is not None:
        assert lines[2] == "pandas DataFrame (297 rows):"
        assert lines[3].split() == ["id", "n", "square"]
        assert lines[4].split() == ["0", "n0", "0", "0"]
    else:
        assert lines[2] == "pandas is not installed; the Arrow table (297 rows):"
        assert lines[3:7] == ["pyarrow.Table", "id: string", "n: int64", "square: int64"]
        assert 'id: [["n0","n1","n2","n3","n4"]]' in lines
        assert "square: [[0,1,4,9,16]]" in lines
    assert lines[-1].startswith("3 failures, e.g. [{'id': 'n97', 'phase': 'initial', ")
    assert "squares: COMPLETED 300/300 items" in out.stderr.splitlines()  # the progress line
