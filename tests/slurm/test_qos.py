"""The QOS caps read from a real slurmdbd (executors/slurm/limits.py).

The cluster of `scripts/slurm-acct-up` (`acct_cluster`: MariaDB, slurmdbd, the cluster
`slurmctl-acct` with AccountingStorageEnforce=associations,limits,qos) beside the shared one. The
module creates two accounts, the user's associations in them (one with MaxJobs 3 and a
DefaultQOS, one that lists a single QOS and no DefaultQOS) and two QOSes with the real
`sacctmgr -i`, and `submit` reads them back with the real `sacctmgr`, through the CLI, for
`slurm.account` given, `slurm.qos` given or not, and neither (the user's default account). The
limits are enforced by slurmctld: a submission one job over MaxSubmitJobsPerUser is refused by
sbatch, so the cap slurmctl computes is exactly the room there is.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import pwd
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slurmctl.executors.slurm.limits import QOS_FORMAT
from tests.helpers import assert_exactly_once, cli, make_job, wait_for
from tests.slurm import util
from tests.slurm.conftest import SLURM_ACCT_UP

CLUSTER = "slurmctl-acct"


@dataclass(frozen=True)
class Accounting:
    conf: Path
    account: str
    capped: str
    """The association's default QOS: MaxSubmitJobsPerUser 6, MaxJobsPerUser 2, GrpTRES cpu=16."""
    grp: str
    """GrpTRES cpu=4 only."""
    plain: str
    """An account whose association lists only QOS `grp`, no DefaultQOS, no limit of its own."""

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60
        )

    def sacctmgr(self, *args: str) -> str:
        out = self.run("sacctmgr", "-i", *args)
        assert out.returncode == 0, f"sacctmgr {' '.join(args)}: {out.stdout}{out.stderr}"
        return out.stdout

    def queued(self, *which: str) -> list[str]:
        """The jobs (`-A ACCOUNT`, `-u USER`) that are not finished."""
        out = self.run("squeue", "-h", "-r", *which, "-o", "%i")
        assert out.returncode == 0, out.stderr
        return out.stdout.split()


@pytest.fixture(scope="module")
def exclusive(acct_cluster: Path) -> Iterator[None]:
    """One test session at a time on the accounting cluster (another helper's run of this
    module waits): every job of the user there counts against MaxSubmitJobsPerUser."""
    lock = (acct_cluster.parent.parent / "run" / "tests.lock").open("a")
    try:

        def taken() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_for(taken, 300, f"the lock {lock.name} (another session runs test_qos.py)")
        yield
    finally:
        lock.close()


@pytest.fixture(scope="module")
def accounting(acct_cluster: Path, exclusive: None) -> Iterator[Accounting]:
    tag = uuid.uuid4().hex[:6]
    acct = Accounting(acct_cluster, f"acct{tag}", f"capped{tag}", f"grp{tag}", f"plain{tag}")
    user = getpass.getuser()
    # the user's jobs count against MaxSubmitJobsPerUser: none left by an earlier session
    # (a killed one: the lock says no other runs now)
    acct.run("scancel", "-u", user)
    wait_for(lambda: not acct.queued("-u", user), 60, f"no job of {user} on {CLUSTER}")
    acct.sacctmgr("add", "qos", acct.capped, acct.grp)
    acct.sacctmgr(
        "modify", "qos", "where", f"name={acct.capped}", "set",
        "MaxSubmitJobsPerUser=6", "MaxJobsPerUser=2", "GrpTRES=cpu=16",
    )  # fmt: skip
    acct.sacctmgr("modify", "qos", "where", f"name={acct.grp}", "set", "GrpTRES=cpu=4")
    acct.sacctmgr("add", "account", acct.account, acct.plain, f"cluster={CLUSTER}")
    acct.sacctmgr(
        "add", "user", user, f"account={acct.account}", f"cluster={CLUSTER}",
        f"qos=normal,{acct.capped},{acct.grp}", f"defaultqos={acct.capped}", "MaxJobs=3",
    )  # fmt: skip
    acct.sacctmgr(
        "add", "user", user, f"account={acct.plain}", f"cluster={CLUSTER}", f"qos={acct.grp}"
    )

    def pushed() -> bool:  # slurmdbd sends the new association to slurmctld
        shown = acct.run(
            "scontrol", "show", "assoc_mgr", f"accounts={acct.account},{acct.plain}", "flags=assoc"
        )
        return all(
            f"Account={a} UserName={user}(" in shown.stdout for a in (acct.account, acct.plain)
        )

    wait_for(pushed, 30, "the association known to slurmctld")
    try:
        yield acct
    finally:
        acct.run("scancel", "-u", user)
        wait_for(lambda: not acct.queued("-u", user), 60, f"no job of {user} on {CLUSTER}")
        acct.sacctmgr("delete", "account", f"{acct.account},{acct.plain}")
        acct.sacctmgr("delete", "qos", f"{acct.capped},{acct.grp}")


def test_the_qos_rows_come_from_slurmdbd(accounting: Accounting) -> None:
    rows = accounting.run("sacctmgr", "-n", "-P", "show", "qos", f"format={QOS_FORMAT}").stdout
    assert f"{accounting.capped}|6|2|cpu=16\n" in rows
    assert f"{accounting.grp}|||cpu=4\n" in rows


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """The real sacctmgr behind a wrapper first on PATH that records each call's arguments
    (the workers and finalize inherit PATH): who asks slurmdbd, and how often."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sacctmgr.calls"
    wrapper = bin_dir / "sacctmgr"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shutil.which("sacctmgr")} "$@"\n')
    wrapper.chmod(0o755)
    return log


def test_submit_sizes_workers_and_parallelism_under_the_real_qos(
    accounting: Accounting, recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = accounting.capped
    monkeypatch.setenv("SLURM_CONF", str(accounting.conf))  # util's squeue/scontrol calls
    # one job of the user's already queued: it counts against MaxSubmitJobsPerUser too
    held = accounting.run(
        "sbatch", "--parsable", "--hold", f"--account={accounting.account}", "--wrap=true"
    )
    assert held.returncode == 0, held.stderr
    jid = f"qos-{uuid.uuid4().hex[:6]}"
    config = make_job(
        tmp_path / "job",
        12,
        batch_size=1,
        workers=6,
        job_id=jid,
        extra=util.SLURM_JOB + f"slurm: {{account: {accounting.account}}}\n",
    )
    root = tmp_path / "root"
    env = {**accounting.env, "PATH": f"{recorded.parent / 'bin'}:{os.environ['PATH']}"}
    dry = cli(root, "submit", str(config), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert (
        "  slurm limits  MaxArraySize 1001, MaxJobCount 100000\n"
        f"                QOS {q}: MaxSubmitJobsPerUser 6 (QOS {q} MaxSubmitJobsPerUser), "
        f"MaxJobsPerUser 2 (QOS {q} MaxJobsPerUser), GrpTRES cpu 16 (QOS {q} GrpTRES cpu), "
        "1 job of yours queued or running\n"
        f"  capped        workers 6 -> 4: QOS {q} MaxSubmitJobsPerUser is 6, you have 1 job "
        "queued or running, and finalize is a job too\n"
        f"                %P 4 -> 2: QOS {q} MaxJobsPerUser (workers running at once)\n"
    ) in dry.stdout
    out = cli(root, "submit", str(config), "--follow", "--no-progress", env=env, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        f"job {jid}: capped by the site's limits: workers 6 -> 4: QOS {q} MaxSubmitJobsPerUser "
        "is 6, you have 1 job queued or running, and finalize is a job too\n" in out.stderr
    )
    assert_exactly_once(root, jid, 12)
    array = util.manifest(root, jid)["slurm_array_id"]
    assert len(util.elements(array)) == 4
    shown = accounting.run("scontrol", "show", "job", array).stdout
    assert "ArrayTaskThrottle=2" in shown and f"QOS={q}" in shown
    limits = util.manifest(root, jid)["slurm_limits"]
    assert (limits["max_submit"], limits["max_jobs"], limits["grp_cpus"]) == (6, 2, 16)
    assert limits["qos"] == q and limits["user_jobs"] == 1 and limits["unread"] is None
    # read by the dry run and by submit, each the associations and the QOS; never by finalize
    assert [c.split()[3] for c in recorded.read_text().splitlines()] == ["user", "qos"] * 2
    # the cap is the room there is: beside the held job, 5 jobs (4 workers and finalize) fit
    # under MaxSubmitJobsPerUser 6, and 6 are refused
    wait_for(
        lambda: accounting.queued("-u", getpass.getuser()) == [held.stdout.strip()],
        60,
        "only the held job left",
    )
    over = accounting.run(
        "sbatch", "--hold", "--array=0-5", f"--account={accounting.account}", "--wrap=true"
    )
    assert over.returncode == 1
    assert "sbatch: error: QOSMaxSubmitJobPerUserLimit\n" in over.stderr
    fits = accounting.run(
        "sbatch", "--hold", "--array=0-4", f"--account={accounting.account}", "--wrap=true"
    )
    assert fits.returncode == 0, fits.stderr


def test_grptres_and_the_associations_maxjobs_cap_parallelism(
    accounting: Accounting, tmp_path: Path
) -> None:
    g = accounting.grp
    config = make_job(
        tmp_path / "job",
        12,
        batch_size=1,
        workers=6,
        job_id=f"grp-{uuid.uuid4().hex[:6]}",
        extra=util.SLURM_JOB
        + f"slurm: {{account: {accounting.account}, qos: {g}, cpus_per_task: 2}}\n",
    )
    dry = cli(tmp_path / "root", "submit", str(config), "--dry-run", env=accounting.env)
    assert dry.returncode == 0, dry.stderr
    assert (
        "  slurm limits  MaxArraySize 1001, MaxJobCount 100000\n"
        "                QOS "
        f"{g}: MaxJobsPerUser 3 (the association's MaxJobs), GrpTRES cpu 4 (QOS {g} GrpTRES cpu)\n"
        "  capped        %P 6 -> 3: the association's MaxJobs (workers running at once)\n"
        f"                %P 3 -> 2: QOS {g} GrpTRES cpu 4 / 2 CPUs per worker (workers "
        "running at once)\n"
    ) in dry.stdout
    # no slurm.qos and no DefaultQOS: the association's only QOS, as slurmctld would choose
    config.write_text(
        config.read_text().replace(
            f"slurm: {{account: {accounting.account}, qos: {g}, ",
            f"slurm: {{account: {accounting.plain}, ",
        )
    )
    implied = cli(tmp_path / "root", "submit", str(config), "--dry-run", env=accounting.env)
    assert implied.returncode == 0, implied.stderr
    assert (
        f"                QOS {g}: GrpTRES cpu 4 (QOS {g} GrpTRES cpu)\n"
        f"  capped        %P 6 -> 2: QOS {g} GrpTRES cpu 4 / 2 CPUs per worker (workers "
        "running at once)\n"
    ) in implied.stdout
    # no slurm.account: the user's default account (root, QOS normal: no limits), not the
    # smallest limits of all the user's accounts
    config.write_text(config.read_text().replace(f"account: {accounting.plain}, ", ""))
    default = cli(tmp_path / "root", "submit", str(config), "--dry-run", env=accounting.env)
    assert default.returncode == 0, default.stderr
    assert (
        "                QOS normal: no per-user limits set\n  capped        nothing\n"
    ) in default.stdout


def test_the_accounting_cluster_is_private_and_a_second_run_changes_nothing(
    acct_cluster: Path,
) -> None:
    base = acct_cluster.parent.parent
    names = {"slurmctld": "run", "slurmd": "run", "slurmdbd": "run", "mysqld": "db"}
    pids = {n: (base / d / f"{n}.pid").read_text() for n, d in names.items()}
    shared = Path("/etc/slurm/slurm.conf")
    shared_before = shared.read_bytes() if shared.exists() else None
    again = subprocess.run([str(SLURM_ACCT_UP)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert re.fullmatch(
        r"slurm acct up: cluster slurmctl-acct, slurmdbd on 127\.0\.0\.1:\d+, MariaDB on "
        rf"{re.escape(str(base))}/db/mysqld\.sock, \d+s; "
        rf"SLURM_CONF={re.escape(str(acct_cluster))}\n",
        again.stdout,
    ), again.stdout
    assert pids == {n: (base / d / f"{n}.pid").read_text() for n, d in names.items()}
    assert (shared.read_bytes() if shared.exists() else None) == shared_before
    # MariaDB: no network at all, its data the mysql user's only; slurmdbd's config (which
    # names the database user) the slurm user's only
    networking = subprocess.run(
        ["mariadb", "--no-defaults", "-S", str(base / "db" / "mysqld.sock"), "-u", "root",
         "-N", "-e", "SELECT @@skip_networking, @@bind_address"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert networking.split()[0] == "1", networking
    data, dbd_conf = (base / "db" / "data").stat(), (base / "etc" / "slurmdbd.conf").stat()
    assert (stat.S_IMODE(data.st_mode), pwd.getpwuid(data.st_uid).pw_name) == (0o700, "mysql")
    assert (stat.S_IMODE(dbd_conf.st_mode), pwd.getpwuid(dbd_conf.st_uid).pw_name) == (
        0o600,
        "slurm",
    )
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True,
        env={**os.environ, "SLURM_CONF": str(acct_cluster)},
    ).stdout  # fmt: skip
    assert re.search(r"^ClusterName\s+= slurmctl-acct$", config, re.M)
    assert re.search(r"^AccountingStorageType\s+= accounting_storage/slurmdbd$", config, re.M)
    assert re.search(r"^AccountingStorageEnforce\s+= associations,limits,qos$", config, re.M)
