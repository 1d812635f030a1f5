"""The Slurm tests run against a real single-node Slurm that `scripts/slurm-up` starts; the few
that need accounting (slurmdbd) against a second cluster that `scripts/slurm-acct-up` starts
beside it, lazily, for the session's first test that asks for it (`acct_cluster`).

Without root (or if the cluster cannot start) they are skipped with a loud reason; under
CI=true they fail instead, so a CI run never passes without them.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_UP = REPO / "scripts" / "slurm-up"
SLURM_ACCT_UP = REPO / "scripts" / "slurm-acct-up"


def slurm_up(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SLURM_UP)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
        check=False,
    )


def _unavailable(reason: str) -> None:
    message = f"SLURM TESTS NOT RUN: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: the Slurm tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A running cluster with the default config (MaxArraySize=1001, KillWait=30)."""
    if os.geteuid() != 0:
        _unavailable("scripts/slurm-up needs root to start slurmctld, slurmd and munged")
    out = slurm_up()
    if out.returncode != 0:
        tail = " | ".join(out.stderr.strip().splitlines()[-3:])
        _unavailable(f"scripts/slurm-up exited {out.returncode}: {tail}")
    yield


@pytest.fixture(scope="session")
def acct_cluster() -> Path:
    """The SLURM_CONF of the cluster with accounting (`slurmctl-acct`: MariaDB, slurmdbd on
    loopback, AccountingStorageEnforce=associations,limits,qos), its packages installed when
    missing. The shared cluster is neither needed nor touched."""
    if os.geteuid() != 0:
        _unavailable("scripts/slurm-acct-up needs root to install and start MariaDB and slurmdbd")
    out = subprocess.run(
        [str(SLURM_ACCT_UP)], capture_output=True, text=True, timeout=900, check=False
    )
    if out.returncode != 0:
        tail = " | ".join(out.stderr.strip().splitlines()[-3:])
        _unavailable(f"scripts/slurm-acct-up exited {out.returncode}: {tail}")
    conf = re.search(r"SLURM_CONF=(\S+)$", out.stdout.strip())
    assert conf, out.stdout
    return Path(conf.group(1))


@pytest.fixture
def job_id(slurm_cluster: None) -> Iterator[Callable[[str], str]]:
    """Unique job ids (Slurm job names derive from them); their Slurm jobs are cancelled at
    teardown whatever happened, so a failed test leaves nothing queued."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(f"{prefix}-{uuid.uuid4().hex[:6]}")
        return made[-1]

    yield make
    if made:
        names = ",".join(n for j in made for n in (f"slurmctl-{j}", f"slurmctl-{j}-finalize"))
        subprocess.run(["scancel", "-n", names], capture_output=True, check=False)
