"""The pieces the executors share: the holder a worker records with its lease, and the
fruitless-runs rule."""

from __future__ import annotations

import socket
import subprocess
import sys

from slurmctl.executors.base import Marker, Run, RunEnd, fruitless
from slurmctl.holders import Holder


def test_holder_round_trips_and_names_its_slurm_element() -> None:
    env = {"SLURM_JOB_ID": "812", "SLURM_ARRAY_JOB_ID": "800", "SLURM_ARRAY_TASK_ID": "12"}
    h = Holder.here(env)
    assert h.host == socket.gethostname() and h.slurm_job_id == "812"
    assert h.slurm_element == "800_12"
    assert Holder.decode(h.encode()) == h
    assert Holder.here({}).slurm_element is None
    assert Holder.decode(None) is None and Holder.decode("") is None
    assert Holder.decode("not json") is None and Holder.decode('{"host": "x"}') is None


def test_a_holder_is_gone_only_when_its_pid_is_free_on_this_host_and_namespace() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid is free
    me = Holder.here({})
    assert not me.process_gone()
    gone = Holder(me.host, child.pid, pidns=me.pidns)
    assert gone.process_gone()
    assert not Holder("another-host", child.pid, pidns=me.pidns).process_gone()
    assert not Holder(me.host, child.pid, pidns="pid:[1]").process_gone()  # another namespace
    assert not Holder(me.host, child.pid).process_gone()  # namespace unknown: never guessed


M = Marker(100, 2)


def test_fruitless_counts_failed_runs_since_the_marker_last_moved() -> None:
    failed = Run(M, RunEnd.FAILED, (1,))
    assert fruitless([failed] * 5, M) == (5, {1})
    assert fruitless([failed] * 7, M, limit=5) == (5, {1})  # the rule's limit, however many ended
    # an older marker: progress (an item done, or a lease freed from a dead worker) since then
    assert fruitless([failed, Run(Marker(100, 1), RunEnd.FAILED, (-9,)), failed], M) == (1, {1})
    assert fruitless([Run(Marker(99, 2), RunEnd.FAILED)] * 3, M) == (0, set())
    # runs still going are not judged; a clean exit or a stop from outside ends the count
    running = Run(M, RunEnd.RUNNING)
    assert fruitless([failed, failed, running, failed, running], M) == (3, {1})
    assert fruitless([failed, Run(M, RunEnd.STOPPED, (143,)), failed], M) == (1, {1})
    assert fruitless([failed, Run(M, RunEnd.OK, (0,)), failed], M) == (1, {1})
    # an operator's run (submit, resume) is the last one counted
    operator = Run(M, RunEnd.FAILED, (75,), operator=True)
    assert fruitless([failed, failed, operator, failed], M) == (2, {1, 75})
