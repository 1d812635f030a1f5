"""Site limits read, not guessed (executors/slurm/limits.py): the parsing, on real output.

`scontrol show config` is captured from this machine's Slurm 22.05 (tests/slurm/data/), and so
are the association and QOS rows, from the slurmdbd of `scripts/slurm-acct-up` (several
partitions and accounts for one user: the shapes the end-to-end test's one association cannot
show). The shared cluster has no slurmdbd, so its real `sacctmgr` refuses: that refusal is
tested here. The QOS caps end to end, against a real slurmdbd, are in test_qos.py.
"""

from __future__ import annotations

from pathlib import Path

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

DATA = Path(__file__).parent / "data"
ASSOC = (DATA / "sacctmgr-show-user-withassoc.txt").read_text()
"""sacctmgr -n -P show user root withassoc format=DefaultAccount,Account,Partition,QOS,DefaultQOS,
MaxSubmit,MaxJobs,GrpTRES: account physics on partitions debug and gpu, chem, one and two
(without DefaultQOS), and root, the default account."""
QOS = (DATA / "sacctmgr-show-qos.txt").read_text()
"""sacctmgr -n -P show qos format=Name,MaxSubmitPU,MaxJobsPU,GrpTRES: normal, short, long, ta,
tb."""


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
    assert default_qos == "short"
    assert assoc == QosLimits(max_submit=8, max_jobs=6, grp_cpus=64)  # smallest over partitions
    assert parse_assoc(ASSOC, "chem") == (QosLimits(), "short")
    # no DefaultQOS: the QOS slurmctld gives a job that names none, its only one, else normal
    # (on this slurmdbd such jobs ran under normal and ta, and were refused asking for normal)
    assert parse_assoc(ASSOC, "one") == (QosLimits(), "ta")
    assert parse_assoc(ASSOC, "two") == (QosLimits(), "normal")
    # no slurm.account: the default account's rows (root's), not the smallest of all accounts
    assert parse_assoc(ASSOC, None) == (QosLimits(), "normal")
    assert parse_assoc(ASSOC, "elsewhere") == (QosLimits(8, 6, 64), "short")  # no such row
    assert parse_assoc("", "physics") == (QosLimits(), None)
    assert parse_qos(QOS, "long") == QosLimits(100, None, None)
    assert parse_qos(QOS, "normal") == QosLimits()
    assert parse_qos(QOS, "missing") is None
    limits = combine(SiteLimits(1001, 100000), assoc, parse_qos(QOS, "short"), "short")
    assert (limits.max_submit, limits.max_jobs, limits.grp_cpus) == (6, 2, 16)
    assert limits.max_submit_from == "QOS short MaxSubmitJobsPerUser"
    sizing = size(50, SlurmOptions(cpus_per_task=4), limits)
    assert (sizing.workers, sizing.parallelism) == (5, 2)
    assert sizing.capped == [
        "workers 50 -> 5: QOS short MaxSubmitJobsPerUser is 6 and finalize is a job too",
        "%P 5 -> 2: QOS short MaxJobsPerUser (workers running at once)",
    ]
    limits.user_jobs = 4  # the user's other jobs count against MaxSubmitJobsPerUser
    assert size(50, SlurmOptions(), limits).capped[0] == (
        "workers 50 -> 1: QOS short MaxSubmitJobsPerUser is 6, you have 4 jobs queued or "
        "running, and finalize is a job too"
    )
    # the association's limit wins where it is the smaller: long's MaxSubmitJobsPerUser is 100
    assoc_wins = combine(SiteLimits(1001, 100000), assoc, parse_qos(QOS, "long"), "long")
    assert (assoc_wins.max_submit, assoc_wins.max_submit_from) == (
        8,
        "the association's MaxSubmitJobs",
    )
    roomy = combine(SiteLimits(1001, 100000), QosLimits(), QosLimits(None, None, 16), "big")
    assert size(10, SlurmOptions(cpus_per_task=4), roomy).capped == [
        "%P 10 -> 4: QOS big GrpTRES cpu 16 / 4 CPUs per worker (workers running at once)"
    ]
