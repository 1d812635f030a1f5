"""scripts/slurm-up beside another Slurm: the port probe of scripts/slurm-lib.sh against real
listeners, a cluster that already answers used as it is, and a second cluster of our own on
free ports while the shared one keeps 6817/6818. The shared cluster is only read, never
restarted: the second one has its own config, state, logs and pid files, and is stopped by
the pids it wrote."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.slurm.conftest import REPO, SLURM_UP, _unavailable

LIB = REPO / "scripts" / "slurm-lib.sh"


def lib(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f". {LIB}; {command}"], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        sock.listen()
        yield sock


def test_the_port_probe_sees_ipv4_and_ipv6_listeners_and_moves_on(
    listener: socket.socket,
) -> None:
    taken6 = listener.getsockname()[1]
    with socket.socket() as v4:
        v4.bind(("127.0.0.1", 0))
        assert lib(f"port_in_use {v4.getsockname()[1]}").returncode == 1  # bound, not listening
        v4.listen()
        taken4 = v4.getsockname()[1]
        assert lib(f"port_in_use {taken4}").returncode == 0
        assert lib(f"port_in_use {taken6}").returncode == 0
        got = lib(f"free_port {taken4} {taken4 + 1}")
        assert got.returncode == 0, got.stderr
        port = int(got.stdout)
        assert port > taken4 + 1 and lib(f"port_in_use {port}").returncode == 1
        assert int(lib(f"free_port {taken6}").stdout) > taken6


def test_ports_are_read_back_from_a_config(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nSlurmctldPort=7017\nSlurmdPort=7018\n")
    assert lib(f"conf_port {conf} SlurmdPort 6818").stdout == "7018\n"
    assert lib(f"conf_port {conf} SlurmctldPort 6817").stdout == "7017\n"
    assert lib(f"conf_port {tmp_path}/none SlurmdPort 6818").stdout == "6818\n"


@pytest.fixture
def elsewhere() -> Iterator[dict[str, str]]:
    """Config, state, logs and pid files of a second cluster (readable by the slurm user, which
    pytest's 0700 tmp_path is not); its daemons are stopped by their own pid files."""
    base = Path(tempfile.mkdtemp(prefix="slurmctl-second-", dir="/tmp"))
    base.chmod(0o755)
    env = {
        "SLURM_DEV_ETC": str(base / "etc"),
        "SLURM_DEV_SPOOL": str(base / "spool"),
        "SLURM_DEV_LOG": str(base / "log"),
        "SLURM_DEV_RUN": str(base / "run"),
        "SLURM_CONF": str(base / "etc" / "slurm.conf"),
    }
    try:
        yield env
    finally:
        for name in ("slurmd", "slurmctld"):
            pidfile = base / "run" / f"{name}.pid"
            if pidfile.exists():
                pid = int(pidfile.read_text())
                comm = Path(f"/proc/{pid}/comm")
                if comm.exists() and comm.read_text().strip() == name:
                    os.kill(pid, signal.SIGTERM)
                    wait_for(partial(_gone, pid), 30, f"{name} {pid} stopped")
        shutil.rmtree(base, ignore_errors=True)


def _gone(pid: int) -> bool:
    return not _running(pid)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SLURM_UP)], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def _shared_ports() -> tuple[str, str]:
    conf = Path("/etc/slurm/slurm.conf").read_text()
    ports = re.findall(r"^Slurm(?:ctld|d)Port=(\d+)$", conf, re.M)
    assert len(ports) == 2, conf
    return ports[0], ports[1]


def test_a_cluster_that_answers_is_used_as_it_is(
    slurm_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our config elsewhere, the caller's commands reading /etc/slurm/slurm.conf, which
    answers: that cluster is used, nothing is written, and it is not reconfigured."""
    env = {"SLURM_DEV_ETC": str(tmp_path / "etc"), "SLURM_DEV_RUN": str(tmp_path / "run")}
    monkeypatch.delenv("SLURM_CONF", raising=False)
    out = up(env)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(
        r"slurm up: using the Slurm already answering with /etc/slurm/slurm.conf: cluster "
        r"slurmctl-dev, partition debug, node \S+ (idle|mix|alloc|comp), MaxArraySize=\d+\n",
        out.stdout,
    ), out.stdout
    assert not (tmp_path / "etc").exists() and not (tmp_path / "run").exists()
    refused = up({**env, "SLURM_MAX_ARRAY_SIZE": "3"})
    assert refused.returncode == 4, refused.stderr
    assert "not ours to reconfigure: it keeps MaxArraySize=" in refused.stderr
    assert (
        "MaxArraySize=3"
        not in subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, check=True
        ).stdout
    )


def _two_free_ports() -> int:
    """p such that p and p + 1 are free now, away from 6817/6818 and the ephemeral range (so a
    restart of the shared cluster meanwhile never finds its ports taken by this test)."""
    for p in range(26817, 27817, 10):
        if lib(f"port_in_use {p} || port_in_use {p + 1}").returncode == 1:
            return p
    raise AssertionError("no two free ports in 26817..27817")


def test_a_second_cluster_starts_on_free_ports_beside_the_running_one(
    slurm_cluster: None, elsewhere: dict[str, str]
) -> None:
    shared = _shared_ports()
    base = _two_free_ports()
    with socket.socket() as held_ctld, socket.socket() as held_slurmd:
        for sock, port in ((held_ctld, base), (held_slurmd, base + 1)):
            sock.bind(("0.0.0.0", port))
            sock.listen()
        env = {
            **elsewhere,
            "SLURM_DEV_CTLD_PORT": str(base),
            "SLURM_DEV_SLURMD_PORT": str(base + 1),
        }
        out = up(env)
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"SlurmctldPort=(\d+), SlurmdPort=(\d+)", out.stdout)
    assert m, out.stdout
    ctld, slurmd = (int(p) for p in m.groups())
    assert ctld > base + 1 and slurmd > base + 1 and ctld != slurmd, (base, ctld, slurmd)
    assert f"port {base} is taken by another process; slurmctld will listen on {ctld}" in out.stderr
    assert f"port {base + 1} is taken by another process; slurmd will listen on {slurmd}" in (
        out.stderr
    )
    # a job runs on the second cluster
    result = Path(elsewhere["SLURM_DEV_LOG"]) / "hello.out"
    sub = subprocess.run(
        ["sbatch", "--parsable", f"--output={result}", "--wrap=echo hello from the second"],
        capture_output=True,
        text=True,
        env={**os.environ, **elsewhere},
        check=False,
    )
    assert sub.returncode == 0, sub.stderr
    wait_for(
        lambda: result.exists() and result.read_text() == "hello from the second\n",
        60,
        "the job on the second cluster",
    )
    # the same run again changes nothing: its daemons keep their ports and keep running
    run = Path(elsewhere["SLURM_DEV_RUN"])
    pids = {n: (run / f"{n}.pid").read_text() for n in ("slurmctld", "slurmd")}
    again = up(env)
    assert again.returncode == 0, again.stderr
    assert f"SlurmctldPort={ctld}, SlurmdPort={slurmd}" in again.stdout
    assert pids == {n: (run / f"{n}.pid").read_text() for n in pids}
    _a_sites_config_is_used_not_overwritten(elsewhere)
    # the shared cluster kept its ports and still answers
    assert _shared_ports() == shared
    ping = subprocess.run(
        ["scontrol", "ping"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SLURM_CONF"},
    )
    assert "is UP" in ping.stdout


def _a_sites_config_is_used_not_overwritten(second: dict[str, str]) -> None:
    """The second cluster's config without slurm-up's marker, where slurm-up would write its
    own: a site's slurm.conf. It answers, so it is used and left as it is; with its default
    partition down it is still not overwritten: slurm-up refuses, saying what to set."""
    site = Path(second["SLURM_DEV_ETC"]).parent / "site-etc"
    site.mkdir()
    conf = site / "slurm.conf"
    text = "".join(
        ln
        for ln in Path(second["SLURM_CONF"]).read_text().splitlines(keepends=True)
        if not ln.startswith("# Managed by slurmctl")
    )
    conf.write_text(text)
    env = {**second, "SLURM_DEV_ETC": str(site), "SLURM_CONF": str(conf)}
    env["SLURM_DEV_RUN"] = str(site / "run")
    used = up(env)
    assert used.returncode == 0, used.stderr
    assert used.stdout.startswith(f"slurm up: using the Slurm already answering with {conf}: ")
    down = subprocess.run(
        ["scontrol", "update", "PartitionName=debug", "State=DOWN"],
        env={**os.environ, **second},
        capture_output=True,
        text=True,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    refused = up(env)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"slurm-dev: error: a Slurm answers with {conf} (not written by slurm-up) but has no up, "
        "single-node default partition with an idle node; set SLURM_DEV_ETC and SLURM_CONF to "
        "start a separate test cluster\n"
    )
    assert conf.read_text() == text and sorted(p.name for p in site.iterdir()) == ["slurm.conf"]


def test_a_failed_package_install_says_apts_reason() -> None:
    """What a CI machine that cannot install slurmdbd or mariadb-server sees (the session
    fixture then fails with these last lines): apt's own reason, not only its exit code. The
    package lists are taken as known, so apt-get update (the network) is not asked."""
    if os.geteuid() != 0:
        _unavailable("apt-get install needs root")
    got = lib(
        "pkg_installed() { return 1; }; apt-cache() { return 0; }; "
        "install_packages slurmctl-no-such-package"
    )
    assert got.returncode == 1
    assert got.stderr.splitlines()[-1] == (
        "slurm-dev: error: apt-get install slurmctl-no-such-package failed (exit 100): "
        "E: Unable to locate package slurmctl-no-such-package"
    )
