"""End-to-end jobs on the real Slurm: pilot arrays, finalize by dependency, splitting, refusals."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

from tests.helpers import assert_exactly_once, cli, make_job, status, task_records
from tests.slurm import util
from tests.slurm.conftest import _unavailable, slurm_up


def test_fifty_batches_over_four_array_elements(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("e2e")
    config = make_job(
        tmp_path / "job", 500, batch_size=10, workers=4, job_id=jid, extra=util.SLURM_JOB
    )
    root = tmp_path / "root"
    out = cli(root, "submit", str(config), "--follow", "--no-progress", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "workers queued on Slurm" in out.stdout
    assert f"job {jid}: COMPLETED: 499 succeeded, 1 failed permanently" in out.stdout
    assert_exactly_once(root, jid, 500)

    manifest = util.manifest(root, jid)
    array = manifest["slurm_array_id"]
    workers = [h for h in util.history(root, jid) if h["action"] == "workers"]
    assert len(workers) == 1 and workers[0]["executor"] == "slurm"
    assert workers[0]["arrays"] == [array] and workers[0]["count"] == 4
    fin = workers[0]["finalize"]
    assert manifest["slurm_job_ids"] == [array, fin]
    # finalize ran as its own Slurm job, started by the dependency on the array
    finals = [h for h in util.history(root, jid) if h["action"] == "finalize"]
    assert [(h["slurm_job_id"], h["status"]) for h in finals] == [(fin, "COMPLETED")]
    # every task names its worker: <array>_<index>@<node>
    node = socket.gethostname().split(".")[0]
    ids = {m["worker_id"] for m in util.task_manifests(root, jid)}
    # every element that committed a task wrote its gathered manifests when it left
    assert ids == {t.worker_id for t in task_records(root, jid).values()}
    # (how the 50 tasks spread is Slurm's timing: since streaming submit one element may start
    # early enough to take them all; that all four ran is checked below)
    assert ids and ids <= {f"{array}_{i}@{node}" for i in range(4)}, ids
    assert all(m["slurm"]["SLURM_ARRAY_JOB_ID"] == array for m in util.task_manifests(root, jid))
    ended = util.elements(array, fin)
    assert sorted(e.element_id for e in ended) == sorted([f"{array}_{i}" for i in range(4)] + [fin])
    assert all(e.state == "COMPLETED" for e in ended), ended
    s = status(root, jid)
    assert s["slurm"]["array_id"] == array and s["slurm"]["workers_running"] == 0
    batch = (root / "slurm" / jid / "worker.sbatch").read_text()
    assert re.search(r"^exec .*/python[\d.]* -m slurmctl --root .* worker --job-id ", batch, re.M)
    # a healthy job raised no alert: not even at submit, before its array was queued
    alerts = json.loads((root / "objects" / "jobs" / jid / "alerts.json").read_text())
    assert alerts["events"] == [], alerts["events"]


def test_workers_split_into_arrays_of_max_array_size(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    up = slurm_up(SLURM_MAX_ARRAY_SIZE="3")
    if up.returncode == 4:  # a cluster slurm-up did not start: not ours to reconfigure
        _unavailable(f"MaxArraySize=3 not settable: {up.stderr.strip()}")
    assert up.returncode == 0, up.stderr
    try:
        jid = job_id("split")
        config = make_job(
            tmp_path / "job", 70, batch_size=10, workers=7, job_id=jid, extra=util.SLURM_JOB
        )
        root = tmp_path / "root"
        out = cli(root, "submit", str(config), "--follow", "--no-progress", timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        restored = slurm_up()
    assert restored.returncode == 0, restored.stderr
    assert_exactly_once(root, jid, 70)
    run = util.manifest(root, jid)["slurm_runs"][0]
    assert len(run["arrays"]) == 3 and run["workers"] == 7
    elements = util.elements(*run["arrays"])
    sizes = [sum(e.job_id == a for e in elements) for a in run["arrays"]]
    assert sizes == [3, 3, 1]
    finals = [h for h in util.history(root, jid) if h["action"] == "finalize"]
    assert [h["slurm_job_id"] for h in finals] == [run["finalize"]]


def test_bad_partition_is_refused_before_anything_is_written(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    jid = job_id("nope")
    config = make_job(
        tmp_path / "job", 20, job_id=jid, extra=util.SLURM_JOB + "slurm: {partition: nope}\n"
    )
    root = tmp_path / "root"
    out = cli(root, "submit", str(config))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'nope'" in lines[0] and "partition" in lines[0], lines
    listed = cli(root, "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert not (root / "objects" / "jobs" / jid).exists()


def test_reserved_and_duplicate_sbatch_arguments_are_refused(
    tmp_path: Path, job_id: Callable[[str], str]
) -> None:
    root = tmp_path / "root"
    for extra, said in (
        ('["--array=0-99"]', "--array is set by slurmctl"),
        ('["-p", "debug"]', "use slurm.partition"),
        ('["--mem-per-cpu=99999999"]', "refused by sbatch"),
    ):
        jid = job_id("args")
        config = make_job(
            tmp_path / jid,
            20,
            job_id=jid,
            extra=util.SLURM_JOB + f"slurm: {{extra_args: {extra}}}\n",
        )
        out = cli(root, "submit", str(config))
        assert out.returncode == 2 and said in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert json.loads(cli(root, "list", "--json").stdout) == []
