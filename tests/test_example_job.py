"""The example job end to end against its strict mock API: the local workers together stay
under the rate limit (zero 429s), and every user is accounted for."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from examples.backfill.mock_api import start_server
from tests.helpers import cli, status

EXAMPLE = Path(__file__).parent.parent / "examples" / "backfill"
COUNT = 1000
"""Five seconds at the example's 200 requests/s: several windows of a second at the limit
(`make demo` runs the 10,000 of the README)."""


def test_backfill_example_under_a_strict_rate_limit(tmp_path: Path) -> None:
    work = tmp_path / "backfill"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("users.jsonl", "__pycache__"))
    subprocess.run(
        [
            sys.executable,
            str(work / "gen_input.py"),
            "--count",
            str(COUNT),
            "--out",
            str(work / "users.jsonl"),
        ],
        check=True,
        capture_output=True,
    )
    token = "tok-" + "x" * 20
    with start_server(rate=200, burst=10, token=token) as api:
        run = cli(
            tmp_path / "root",
            "submit",
            str(work / "job.yaml"),
            env={"API_BASE_URL": api.url, "API_TOKEN": token},
        )
        stats = api.stats()
    assert run.returncode == 0, run.stderr
    assert stats["status_429"] == 0, stats
    assert stats["status_401"] == 0
    assert stats["max_admitted_1s"] <= 200 + 10
    [job] = json.loads(cli(tmp_path / "root", "list", "--json").stdout)
    s = status(tmp_path / "root", job["job_id"])
    assert s["status"] == "COMPLETED"
    assert s["items"]["failed_permanent"] == COUNT // 97 == stats["status_404"]
    assert s["items"]["succeeded"] == COUNT - COUNT // 97
    [out] = s["outputs"]
    table = pq.read_table(out["path"])
    ids = table.column("user_id").to_pylist()
    assert len(ids) == len(set(ids)) == s["items"]["succeeded"]
    assert {"user_id", "name", "followers", "country", "signup"} <= set(table.column_names)
