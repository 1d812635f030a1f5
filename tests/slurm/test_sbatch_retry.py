"""sbatch under transient failures, on the real Slurm: retried, never duplicated. A stand-in
`sbatch` first on PATH (a real executable, fault injection) fails its first call, having
submitted for real or not, then hands every call to the real sbatch. And the job's states come
from one squeue for all its arrays."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from slurmctl.executors.slurm.sbatch import SlurmClient, SlurmCommandError
from tests.slurm.util import calls

TIMED_OUT = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
BUSY = "sbatch: error: Batch job submission failed: Resource temporarily unavailable"


def _fake(tmp_path: Path, name: str, first_call: str) -> Path:
    """`name` on PATH: logs each call; the first one runs `first_call`, the others the real one."""
    real = shutil.which(name)
    assert real, f"{name} not on PATH"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.calls"
    fake = bin_dir / name
    fake.write_text(
        "#!/bin/bash\n"
        f"echo {name} >> {log}\n"
        f'if [ "$(wc -l < {log})" -eq 1 ]; then {first_call}; fi\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    return log


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/bash\ntrue\n")
    return script


def _queued(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-n", name, "-o", "%i"], capture_output=True, text=True
    )
    return out.stdout.split()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SlurmClient:
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    c = SlurmClient()
    c.backoff_s = 0.2
    return c


def test_an_sbatch_that_timed_out_after_queueing_is_found_not_resubmitted(
    slurm_cluster: None, tmp_path: Path, client: SlurmClient, job_id: Callable[[str], str]
) -> None:
    name = f"slurmctl-{job_id('retry')}"
    real = shutil.which("sbatch")
    log = _fake(tmp_path, "sbatch", f'{real} "$@" > /dev/null; echo "{TIMED_OUT}" >&2; exit 1')
    got = client.sbatch([f"--job-name={name}", "--output=/dev/null"], _script(tmp_path))
    assert calls(log) == ["sbatch"]  # not run again: one squeue found it
    assert _queued(name) == [got]


def test_an_sbatch_refused_while_busy_is_submitted_again_once(
    slurm_cluster: None, tmp_path: Path, client: SlurmClient, job_id: Callable[[str], str]
) -> None:
    name = f"slurmctl-{job_id('busy')}"
    log = _fake(tmp_path, "sbatch", f'echo "{BUSY}" >&2; exit 1')
    squeue_log = _fake(tmp_path, "squeue", "true")
    got = client.sbatch([f"--job-name={name}", "--output=/dev/null"], _script(tmp_path))
    assert calls(log) == ["sbatch", "sbatch"] and calls(squeue_log) == []  # refused: no look-up
    assert _queued(name) == [got]


def test_an_sbatch_that_times_out_without_queueing_is_submitted_again_once(
    slurm_cluster: None, tmp_path: Path, client: SlurmClient, job_id: Callable[[str], str]
) -> None:
    name = f"slurmctl-{job_id('lost')}"
    log = _fake(tmp_path, "sbatch", f'echo "{TIMED_OUT}" >&2; exit 1')
    squeue_log = _fake(tmp_path, "squeue", "true")
    got = client.sbatch([f"--job-name={name}", "--output=/dev/null"], _script(tmp_path))
    assert calls(log) == ["sbatch", "sbatch"] and calls(squeue_log) == ["squeue"]
    assert _queued(name) == [got]


def test_a_permanent_sbatch_error_is_not_retried(
    slurm_cluster: None, tmp_path: Path, client: SlurmClient
) -> None:
    log = _fake(tmp_path, "sbatch", "true")
    with pytest.raises(SlurmCommandError) as info:
        client.sbatch(
            ["--partition=nope", f"--job-name=x-{uuid.uuid4().hex[:6]}"], _script(tmp_path)
        )
    assert str(info.value) == "sbatch failed: invalid partition specified: nope"
    assert calls(log) == ["sbatch"]


def test_the_states_of_every_array_of_a_job_come_from_one_squeue(
    slurm_cluster: None, tmp_path: Path, client: SlurmClient, job_id: Callable[[str], str]
) -> None:
    name = f"slurmctl-{job_id('batched')}"
    script = _script(tmp_path)
    arrays = [
        client.sbatch([f"--job-name={name}", "--output=/dev/null", "--array=0-2"], script)
        for _ in range(3)
    ]
    squeue_log = _fake(tmp_path, "squeue", "true")
    found = client.elements(arrays)
    assert calls(squeue_log) == ["squeue"]
    assert sorted(e.element_id for e in found) == sorted(
        f"{a}_{i}" for a in arrays for i in range(3)
    )


def test_the_same_question_within_the_minimum_interval_is_not_asked_again(
    slurm_cluster: None,
    tmp_path: Path,
    job_id: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"slurmctl-{job_id('interval')}"
    script = _script(tmp_path)
    first = SlurmClient().sbatch([f"--job-name={name}", "--output=/dev/null"], script)
    second = SlurmClient().sbatch([f"--job-name={name}", "--output=/dev/null"], script)
    squeue_log = _fake(tmp_path, "squeue", "true")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    watching = SlurmClient(min_interval_s=60)
    assert [e.element_id for e in watching.elements([first])] == [first]
    assert [e.element_id for e in watching.elements([first])] == [first]
    assert calls(squeue_log) == ["squeue"]
    assert sorted(e.element_id for e in watching.elements([first, second])) == sorted(
        [first, second]
    )
    assert calls(squeue_log) == ["squeue", "squeue"]
    deciding = SlurmClient()  # finalize and resume: always afresh
    deciding.elements([first])
    deciding.elements([first])
    assert len(calls(squeue_log)) == 4
