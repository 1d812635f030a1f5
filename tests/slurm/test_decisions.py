"""The executor's decisions against a fake Slurm: preflight refusals, giving up on workers
that never progress. The real Slurm is exercised by test_slurm_jobs and test_slurm_faults."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from slurmctl.backends import Backend, open_local
from slurmctl.backends.statestore import WORKERS_LOST
from slurmctl.config import SlurmOptions, load_job_definition
from slurmctl.coordinator.submit import submit
from slurmctl.errors import ConfigError
from slurmctl.executors.slurm import SlurmExecutor, preflight, slurm_summary
from slurmctl.executors.slurm.deaths import bad_nodes, describe_nodes
from slurmctl.executors.slurm.executor import read_manifest
from slurmctl.executors.slurm.limits import SiteLimits
from slurmctl.executors.slurm.sbatch import Element, Partition, SlurmClient
from slurmctl.executors.slurm.states import SlurmState
from slurmctl.holders import Holder
from slurmctl.jobs import get_job, read_history
from slurmctl.observe.errors import analyze
from slurmctl.states import JobStatus, TaskStatus
from tests.helpers import make_job


class FakeSlurm(SlurmClient):
    def __init__(self, partitions: list[Partition], elements: list[Element] | None = None) -> None:
        super().__init__()
        self._partitions = partitions
        self._elements = elements if elements is not None else []  # the test appends to it
        self.submitted: list[list[str]] = []

    def partitions(self) -> list[Partition]:
        return self._partitions

    def test_only(self, args: Sequence[str]) -> str | None:
        return None

    def elements(self, ids: Sequence[str]) -> list[Element]:
        return [e for e in self._elements if e.job_id in ids]

    def max_array_size(self) -> int:
        return 1001

    def site_limits(self, options: SlurmOptions) -> SiteLimits:
        return SiteLimits(max_array_size=1001)

    def sbatch(self, args: Sequence[str], script: Path) -> str:
        self.submitted.append(list(args))
        return str(100 + len(self.submitted))


CLUSTER = [Partition("big", 4, True), Partition("one", 1, False)]


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        ("", "partition 'big' has 4 nodes"),
        ("slurm: {partition: big}\n", "set backend: aws"),
        ("slurm: {partition: 'one,big'}\n", "partition 'big' has 4 nodes"),
        ("slurm: {partition: gpu}\n", "no partition 'gpu' on this cluster (partitions: big, one)"),
        ("slurm: {partition: one}\n", None),
        ("slurm: {partition: big}\nbackend: aws\naws: {bucket: b, table: t}\n", None),
    ],
)
def test_preflight_refuses_the_embedded_backend_on_many_nodes(
    tmp_path: Path, extra: str, refusal: str | None
) -> None:
    config = make_job(tmp_path, 10, extra="executor: slurm\n" + extra)
    definition = load_job_definition(config)
    if refusal is None:
        preflight(definition, FakeSlurm(CLUSTER))
        return
    with pytest.raises(ConfigError) as e:
        preflight(definition, FakeSlurm(CLUSTER))
    assert refusal in str(e.value) and "\n" not in str(e.value)


def test_workers_that_never_progress_fail_the_job_after_three_runs(tmp_path: Path) -> None:
    backend = open_local(tmp_path / "root")
    config = make_job(tmp_path / "job", 40, batch_size=10, workers=2, extra="executor: slurm\n")
    submit(backend, load_job_definition(config))
    crashed: list[Element] = []
    fake = FakeSlurm(CLUSTER, crashed)
    executor = SlurmExecutor(backend, tmp_path / "root", client=fake)
    first = executor.advance("t1", operator=True)
    assert first.submitted == ["101"] and first.finalize == "102"
    for run in range(3):  # each array's workers crash at start (exit 1), committing nothing
        array = str(100 + len(fake.submitted) - 1)  # the last array (then its finalize)
        crashed += [
            Element(f"{array}_{i}", SlurmState.FAILED, "NonZeroExitCode", 1) for i in (0, 1)
        ]
        out = SlurmExecutor(backend, tmp_path / "root", client=fake, own_id="x").advance("t1")
        if run < 2:
            assert out.submitted, f"run {run}: workers resubmitted"
    assert out.status == JobStatus.FAILED and not out.submitted
    job = get_job(backend, "t1")
    assert job.status == JobStatus.FAILED and "without progress" in (job.error or "")
    assert [h["action"] for h in read_history(backend, "t1")].count("workers") == 3
    # a worker stopped from outside (time limit, requeue: exit 143) is never held against it
    backend.state.update_job("t1", {"status": JobStatus.RUNNING, "error": None})
    crashed[-1] = Element(crashed[-1].element_id, SlurmState.TIMEOUT, "TimeLimit", 143)
    assert SlurmExecutor(backend, tmp_path / "root", client=fake).advance("t1").submitted


def test_finalize_frees_the_leases_of_ended_elements_at_once(tmp_path: Path) -> None:
    """An element Slurm reports ended holds no lease any more: its task is PENDING again at the
    next advance (not a lease TTL later), counted as a worker loss, and the run that lost it is
    not fruitless. A live element's lease is left alone."""
    backend = open_local(tmp_path / "root")
    config = make_job(tmp_path / "job", 40, batch_size=10, workers=2, extra="executor: slurm\n")
    _lease = "lease: {ttl_s: 3, heartbeat_s: 1}\n"
    config.write_text(config.read_text().replace(_lease, "lease: {ttl_s: 600, heartbeat_s: 60}\n"))
    submit(backend, load_job_definition(config))
    elements: list[Element] = []
    fake = FakeSlurm(CLUSTER, elements)
    assert SlurmExecutor(backend, tmp_path / "root", client=fake).advance("t1", operator=True)
    state = backend.state
    for task_id, element in (("task-000000", "101_0"), ("task-000001", "101_1")):
        holder = Holder("node1", 999_999, "77", element).encode()
        assert state.claim_task("t1", task_id, element, "tok" + element, 600, 1e10, holder=holder)
    elements += [
        Element("101_0", SlurmState.FAILED, "NonZeroExitCode", 137),  # SIGKILLed on its node
        Element("101_1", SlurmState.RUNNING),
    ]
    out = SlurmExecutor(backend, tmp_path / "root", client=fake, own_id="x").advance("t1")
    assert out.alive and not out.submitted  # 101_1 still works: nothing to submit
    dead, live = state.get_task("t1", "task-000000"), state.get_task("t1", "task-000001")
    assert dead is not None and dead.status == TaskStatus.PENDING and dead.worker_losses == 1
    assert live is not None and live.status == TaskStatus.RUNNING and live.lease_token == "tok101_1"
    assert state.counters("t1")[WORKERS_LOST] == 1
    # three fruitless-looking ends in a row, but each freed a lease: never given up
    for run in range(3):
        array = str(100 + len(fake.submitted) - 1 if run else 101)
        elements[:] = [Element(f"{array}_{i}", SlurmState.FAILED, "", 137) for i in (0, 1)]
        task = next(iter(state.unfinished_tasks("t1")))
        holder = Holder("node1", 999_999, "77", f"{array}_0").encode()
        claimed = state.claim_task("t1", task.task_id, "w", f"t{run}", 600, 1e10, holder=holder)
        assert claimed is not None
        out = SlurmExecutor(backend, tmp_path / "root", client=fake, own_id="x").advance("t1")
        assert out.status != JobStatus.FAILED and out.submitted, run
    assert state.counters("t1")[WORKERS_LOST] == 5  # 101_1's task too, once 101_1 ended


def _crash_holding(
    backend: Backend, elements: list[Element], array: str, node: str, tasks: list[str]
) -> None:
    """Elements <array>_i on `node` claim tasks[i], then end FAILED with exit 1 (a crash)."""
    for i, task_id in enumerate(tasks):
        element = f"{array}_{i}"
        holder = Holder(node, 999_999, "77", element).encode()
        claimed = backend.state.claim_task(
            "t1", task_id, element, f"tok{element}", 600, 1e10, holder=holder
        )
        assert claimed is not None
        elements.append(Element(element, SlurmState.FAILED, "NonZeroExitCode", 1, node))


def test_a_node_where_workers_crash_is_excluded_from_the_next_submissions(tmp_path: Path) -> None:
    backend = open_local(tmp_path / "root")
    config = make_job(tmp_path / "job", 40, batch_size=10, workers=2, extra="executor: slurm\n")
    submit(backend, load_job_definition(config))
    elements: list[Element] = []
    fake = FakeSlurm(CLUSTER, elements)  # partition big (the default): 4 nodes
    assert SlurmExecutor(backend, tmp_path / "root", client=fake).advance("t1", operator=True)
    assert not any(a.startswith("--exclude") for a in fake.submitted[0])
    _crash_holding(backend, elements, "101", "n2", ["task-000000", "task-000001"])
    out = SlurmExecutor(backend, tmp_path / "root", client=fake, own_id="x").advance("t1")
    assert out.submitted == ["103"]
    assert "--exclude=n2" in fake.submitted[2]  # the new array (then its finalize)
    assert not any(a.startswith("--exclude") for a in fake.submitted[3])  # finalize: anywhere
    assert [h["node"] for h in read_history(backend, "t1") if h["action"] == "bad_node"] == ["n2"]
    summary = slurm_summary(backend, "t1", fake)
    assert summary["bad_nodes"] == {"n2": 2} and summary["excluded_nodes"] == ["n2"]
    assert summary["worker_deaths"] == {"crash": 2}
    assert analyze(backend, "t1")["slurm_nodes"]["bad_nodes"] == {"n2": 2}
    assert describe_nodes(summary) == "n2 (2 worker crashes, excluded from the latest workers)"
    # judged once: the same ended elements seen again add nothing
    SlurmExecutor(backend, tmp_path / "root", client=fake, own_id="y").advance("t1")
    assert len(read_manifest(backend, "t1")["slurm_deaths"]) == 2


def test_a_poison_task_or_the_only_node_is_not_excluded(tmp_path: Path) -> None:
    backend = open_local(tmp_path / "root")
    config = make_job(
        tmp_path / "job",
        40,
        batch_size=10,
        workers=1,
        extra="executor: slurm\nslurm: {partition: one}\nretry: {max_task_failures: 5}\n",
    )
    submit(backend, load_job_definition(config))
    elements: list[Element] = []
    fake = FakeSlurm([Partition("big", 4, True), Partition("one", 1, False)], elements)
    assert SlurmExecutor(backend, tmp_path / "root", client=fake).advance("t1", operator=True)
    # one task kills its worker twice on n1: the item's fault (poison isolation), not n1's
    for array in ("101", "103"):
        _crash_holding(backend, elements, array, "n1", ["task-000000"])
        SlurmExecutor(backend, tmp_path / "root", client=fake, own_id="x").advance("t1")
    assert bad_nodes(read_manifest(backend, "t1")) == {}
    # a crash on another task makes n1 bad, but it is partition one's only node: kept
    _crash_holding(backend, elements, "105", "n1", ["task-000001"])
    SlurmExecutor(backend, tmp_path / "root", client=fake, own_id="x").advance("t1")
    assert not any(a.startswith("--exclude") for a in fake.submitted[-2])
    summary = slurm_summary(backend, "t1", fake)
    assert describe_nodes(summary) == (
        "n1 (3 worker crashes, not excluded: every node of the partition is bad)"
    )
