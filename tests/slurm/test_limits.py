"""Site limits read, not guessed (executors/slurm/limits.py).

The test cluster has no slurmdbd, so `sacctmgr` refuses: the configuration's parsing is tested on
`scontrol show config` captured from this machine's Slurm 22.05 (tests/slurm/data/), the refusal
on the real `sacctmgr`, and the QOS caps end to end with a stand-in `sacctmgr` first on PATH that
prints association and QOS rows in sacctmgr's `-n -P` format (not captured from a slurmdbd: none
runs here), while sbatch, squeue and scontrol are the real ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from slurmctl.config import SlurmOptions
from slurmctl.executors.slurm.limits import (
    QosLimits,
    SiteLimits,
    combine,
    describe,
    parse_assoc,
    parse_config,
    parse_qos,
    size,
)
from slurmctl.executors.slurm.sbatch import SlurmClient
from tests.helpers import assert_exactly_once, cli, make_job
from tests.slurm import util

DATA = Path(__file__).parent / "data"
ASSOC = (  # sacctmgr -n -P show assoc user=<me> format=Account,Partition,QOS,DefaultQOS,...
    "physics|debug|normal,long|normal|10||cpu=64\n"
    "physics|gpu|normal|normal|8|6|\n"
    "chem||normal|normal|||\n"
)
QOS = (  # sacctmgr -n -P show qos format=Name,MaxSubmitPU,MaxJobsPU,GrpTRES
    "normal|6|2|cpu=16,mem=64G\nlong|100||\n"
)


def test_the_configuration_of_this_machines_slurm_is_read() -> None:
    text = (DATA / "scontrol-show-config.txt").read_text()
    assert "SLURM_VERSION           = 22.05.8" in text
    assert parse_config(text) == (1001, 100000)
    assert parse_config("nothing here") == (1001, None)


def test_without_slurmdbd_the_qos_limits_are_said_unread(slurm_cluster: None) -> None:
    captured = (DATA / "sacctmgr-no-slurmdbd.stderr").read_text().splitlines()[0]
    limits = SlurmClient().site_limits(SlurmOptions())
    assert limits.unread == f"sacctmgr: {captured}"
    assert (limits.max_array_size, limits.max_job_count, limits.max_submit) == (1001, 100000, None)
    assert describe(limits) == [
        "MaxArraySize 1001, MaxJobCount 100000",
        f"QOS limits not read (sacctmgr: {captured}): not capped by them",
    ]
    assert size(5000, SlurmOptions(), limits).capped == [
        "workers split into 5 arrays: MaxArraySize is 1001"
    ]


def test_association_and_qos_rows_are_parsed_and_the_smaller_limit_wins() -> None:
    assoc, default_qos = parse_assoc(ASSOC, "physics")
    assert default_qos == "normal"
    assert assoc == QosLimits(max_submit=8, max_jobs=6, grp_cpus=64)  # smallest over partitions
    assert parse_assoc(ASSOC, "chem") == (QosLimits(), "normal")
    assert parse_qos(QOS, "long") == QosLimits(100, None, None)
    assert parse_qos(QOS, "missing") is None
    limits = combine(SiteLimits(1001, 100000), assoc, parse_qos(QOS, "normal"), "normal")
    assert (limits.max_submit, limits.max_jobs, limits.grp_cpus) == (6, 2, 16)
    assert limits.max_submit_from == "QOS normal MaxSubmitJobsPerUser"
    sizing = size(50, SlurmOptions(cpus_per_task=4), limits)
    assert (sizing.workers, sizing.parallelism) == (5, 2)
    assert sizing.capped == [
        "workers 50 -> 5: QOS normal MaxSubmitJobsPerUser is 6 and finalize is a job too",
        "%P 5 -> 2: QOS normal MaxJobsPerUser (workers running at once)",
    ]
    limits.user_jobs = 4  # the user's other jobs count against MaxSubmitJobsPerUser
    assert size(50, SlurmOptions(), limits).capped[0] == (
        "workers 50 -> 1: QOS normal MaxSubmitJobsPerUser is 6, you have 4 jobs queued or "
        "running, and finalize is a job too"
    )
    roomy = combine(SiteLimits(1001, 100000), QosLimits(), QosLimits(None, None, 16), "big")
    assert size(10, SlurmOptions(cpus_per_task=4), roomy).capped == [
        "%P 10 -> 4: QOS big GrpTRES cpu 16 / 4 CPUs per worker (workers running at once)"
    ]


@pytest.fixture
def sacctmgr(tmp_path: Path) -> Path:
    """A stand-in `sacctmgr` (first on PATH) answering as a slurmdbd with QOS `normal` would,
    each call logged; and a stand-in `squeue` that says the user has 2 jobs already (other
    tests' jobs run as the same user) and hands every other query to the real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sacctmgr.calls"
    (tmp_path / "assoc.txt").write_text(ASSOC)
    (tmp_path / "qos.txt").write_text(QOS)
    fake = bin_dir / "sacctmgr"
    fake.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {log}\n'
        f'case "$*" in *assoc*) cat {tmp_path / "assoc.txt"};; *qos*) cat {tmp_path / "qos.txt"};;'
        " esac\n"
    )
    fake.chmod(0o755)
    real = shutil.which("squeue")
    squeue = bin_dir / "squeue"
    squeue.write_text(
        '#!/bin/bash\ncase " $* " in *" -u "*) printf "11\\n12_3\\n";;'
        f' *) exec {real} "$@";; esac\n'
    )
    squeue.chmod(0o755)
    return log


def test_submit_sizes_workers_and_parallelism_under_the_qos(
    tmp_path: Path, sacctmgr: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("qos")
    config = make_job(
        tmp_path / "job",
        12,
        batch_size=1,
        workers=6,
        job_id=jid,
        extra=util.SLURM_JOB + "slurm: {account: physics}\n",
    )
    root = tmp_path / "root"
    env = {"PATH": f"{sacctmgr.parent / 'bin'}:{os.environ['PATH']}"}
    dry = cli(root, "submit", str(config), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert (
        "  slurm limits  MaxArraySize 1001, MaxJobCount 100000\n"
        "                QOS normal: MaxSubmitJobsPerUser 6 (QOS normal MaxSubmitJobsPerUser), "
        "MaxJobsPerUser 2 (QOS normal MaxJobsPerUser), GrpTRES cpu 16 (QOS normal GrpTRES cpu), "
        "2 jobs of yours queued or running\n"
        "  capped        workers 6 -> 3: QOS normal MaxSubmitJobsPerUser is 6, you have 2 jobs "
        "queued or running, and finalize is a job too\n"
        "                %P 3 -> 2: QOS normal MaxJobsPerUser (workers running at once)\n"
    ) in dry.stdout
    out = cli(root, "submit", str(config), "--follow", "--no-progress", env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        f"job {jid}: capped by the site's limits: workers 6 -> 3: QOS normal "
        "MaxSubmitJobsPerUser is 6, you have 2 jobs queued or running, and finalize is a job too"
        in out.stderr
    )
    assert_exactly_once(root, jid, 12)
    array = util.manifest(root, jid)["slurm_array_id"]
    assert len(util.elements(array)) == 3
    shown = subprocess.run(
        ["scontrol", "show", "job", array], capture_output=True, text=True, check=True
    ).stdout
    assert "ArrayTaskThrottle=2" in shown
    # read by the dry run and by submit, each an assoc and a qos call; never by finalize
    assert [c.split()[3] for c in sacctmgr.read_text().splitlines()] == ["assoc", "qos"] * 2
    assert util.manifest(root, jid)["slurm_limits"]["max_submit"] == 6
