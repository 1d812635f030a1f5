"""The Slurm executor: W pilot workers as job arrays, finalize as a job that depends on them.

Nothing stays alive on the login node: `run` reconciles, queues what the job needs and returns.
The same `advance` runs in the finalize job, which resubmits workers (and itself) while work
remains and no worker is alive: time limits, lost nodes and cancelled elements all end there.
Every decision is taken under the job-level lease, so a `resume` and a finalize never both act.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmctl import hooks
from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.config import SlurmOptions
from slurmctl.errors import JobStateError, SlurmctlError
from slurmctl.executors.base import Executor, Liveness, Marker, Run, RunEnd, StartRequest, Step
from slurmctl.executors.slurm import scripts
from slurmctl.executors.slurm.deaths import Death, bad_nodes, kind_of, node_report
from slurmctl.executors.slurm.limits import SiteLimits
from slurmctl.executors.slurm.limits import size as size_under
from slurmctl.executors.slurm.sbatch import Element, SlurmClient
from slurmctl.executors.slurm.states import SlurmState
from slurmctl.holders import Holder
from slurmctl.ids import phase_number
from slurmctl.jobs import append_history, get_job, load_definition
from slurmctl.layout import JobLayout
from slurmctl.states import JobStatus, TaskStatus

log = logging.getLogger("slurmctl.slurm")

LEASE_TTL_S = 120.0
LEASE_WAIT_S = 180.0
MAX_FRUITLESS_RUNS = 3
EXIT_STOPPED = 143


@dataclass
class Advance:
    """What one `advance` found and did, for the CLI to say."""

    status: JobStatus
    work_left: int = 0
    submitted: list[str] = field(default_factory=list)
    """Arrays of workers submitted now."""
    finalize: str | None = None
    """The finalize job submitted now."""
    alive: list[Element] = field(default_factory=list)
    """Workers already queued or running (nothing submitted for them)."""
    waiting: list[str] = field(default_factory=list)
    """Finalize jobs already queued."""
    capped: list[str] = field(default_factory=list)
    """What the site's limits capped in the workers submitted now, and why."""


@dataclass
class SlurmIds:
    """The job's Slurm ids, from jobs/<id>/manifest.json."""

    arrays: list[str]
    finalize: list[str]

    @property
    def all(self) -> list[str]:
        return self.arrays + self.finalize


def read_manifest(backend: Backend, job_id: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = backend.objects.get_json(JobLayout(job_id).manifest)  # type: ignore[assignment]
    except ObjectNotFound:
        return {}
    return doc


def slurm_ids(backend: Backend, job_id: str) -> SlurmIds:
    runs = read_manifest(backend, job_id).get("slurm_runs", [])
    return SlurmIds(
        [a for r in runs for a in r.get("arrays", [])],
        [r["finalize"] for r in runs if r.get("finalize")],
    )


STATUS_MIN_INTERVAL_S = 5.0
_STATUS_CLIENT = SlurmClient(min_interval_s=STATUS_MIN_INTERVAL_S)
"""`status` (and `status --watch`, the dashboard, the alerts) asks squeue at most every 5 s per
process; decisions (finalize, resume) always ask afresh."""


def slurm_summary(
    backend: Backend, job_id: str, client: SlurmClient | None = None
) -> dict[str, Any]:
    """For `status`: the Slurm ids, and how many workers are running or queued (None when
    Slurm cannot be asked)."""
    doc = read_manifest(backend, job_id)
    ids = slurm_ids(backend, job_id)
    out: dict[str, Any] = {
        "array_id": doc.get("slurm_array_id"),
        "job_ids": doc.get("slurm_job_ids", []),
        "workers_running": None,
        "workers_queued": None,
        "finalize_queued": None,
        **node_report(doc),
    }
    try:
        elements = (client or _STATUS_CLIENT).elements(ids.all)
    except SlurmctlError as e:
        out["error"] = str(e)
        return out
    workers = [e for e in elements if e.job_id in ids.arrays and e.state.alive]
    running = sum(e.state is SlurmState.RUNNING for e in workers)
    out["workers_running"] = running
    out["workers_queued"] = len(workers) - running
    out["finalize_queued"] = [
        e.job_id for e in elements if e.job_id in ids.finalize and e.state.alive
    ]
    return out


@dataclass
class SlurmLiveness(Liveness):
    """The job's Slurm jobs as squeue/sacct see them (our own finalize job left out)."""

    elements: list[Element] = field(default_factory=list)
    """Alive worker elements."""
    waiting: list[str] = field(default_factory=list)
    """Finalize jobs queued or running."""
    ended: list[Element] = field(default_factory=list)
    """Worker elements Slurm reports ended (judged by deaths.py: OOM kills, crashes)."""


@dataclass(frozen=True)
class Submitted:
    arrays: list[str]
    finalize: str
    capped: list[str] = field(default_factory=list)


class SlurmExecutor(Executor[SlurmLiveness, Submitted]):
    name = "slurm"
    max_fruitless = MAX_FRUITLESS_RUNS
    finalize_alerts = False  # evaluated once the arrays queued now are recorded
    lease_ttl_s = LEASE_TTL_S
    lease_wait_s = LEASE_WAIT_S

    def __init__(
        self,
        backend: Backend,
        root: Path,
        *,
        client: SlurmClient | None = None,
        own_id: str | None = None,
    ) -> None:
        super().__init__(backend, root.absolute())
        self.client = client or SlurmClient()
        self.own_id = own_id
        """The finalize job we run in, if any: not a job to wait for."""
        self._chained: str | None = None
        self._kept: list[str] = []
        """Bad nodes not excluded now: they are every node of the partition."""

    # --- Executor -----------------------------------------------------------------------------
    def run(self, job_id: str) -> JobStatus:
        return self.advance(job_id).status

    def cancel(self, job_id: str) -> None:
        """scancel every Slurm job of the job: TERM makes workers checkpoint and leave."""
        self.client.scancel([i for i in slurm_ids(self.backend, job_id).all if i != self.own_id])

    def busy(self, job_id: str) -> SlurmctlError:
        return JobStateError(
            f"job {job_id} is being acted on by another slurmctl process; "
            f"`slurmctl status {job_id}` follows it"
        )

    def summary(self, job_id: str) -> dict[str, Any]:
        return slurm_summary(self.backend, job_id, self.client)

    def liveness(self, job_id: str) -> SlurmLiveness:
        """One squeue (and sacct for what squeue forgot): the leases of an element Slurm reports
        ended are dead."""
        ids = slurm_ids(self.backend, job_id)
        elements = [e for e in self.client.elements(ids.all) if e.job_id != self.own_id]
        workers = [e for e in elements if e.job_id in ids.arrays]
        alive = [e for e in workers if e.state.alive]
        # only what Slurm reports ended: an element it does not list (forgotten, or a squeue
        # that answered short) may still run, and its lease then expires as it would have
        ended = {e.element_id for e in workers if not e.state.alive}
        ended -= {e.element_id for e in alive}  # a requeued element is alive again

        def dead(h: Holder) -> bool:
            return h.slurm_element is not None and h.slurm_element in ended

        waiting = sorted({e.job_id for e in elements if e.job_id in ids.finalize and e.state.alive})
        now = Marker.of(self.backend.state.counters(job_id))
        return SlurmLiveness(
            len(alive),
            dead,
            _runs(self.backend, job_id, workers, now),
            alive,
            waiting,
            [e for e in workers if e.element_id in ended],
        )

    def release_dead(self, job_id: str, phase: str, live: Liveness) -> int:
        """Judge the ended elements not judged yet (deaths.py) while their leases still say
        which task each held, then free those leases."""
        found = self._deaths(job_id, phase, live) if isinstance(live, SlurmLiveness) else []
        freed = super().release_dead(job_id, phase, live)
        if found:
            self._record_deaths(job_id, found)
        return freed

    def _deaths(self, job_id: str, phase: str, live: SlurmLiveness) -> list[Death]:
        judged = read_manifest(self.backend, job_id).get("slurm_deaths", {})
        logs = self.log_dir(job_id)
        kinds = {
            e.element_id: (e, k)
            for e in live.ended
            if e.element_id not in judged
            and (k := kind_of(e, logs / f"worker-{e.element_id}.log")) is not None
        }
        if not kinds:
            return []
        held: dict[str, str] = {}
        for task in self.backend.state.running_tasks(job_id, phase):  # not every unfinished
            holder = Holder.decode(task.holder) if task.status == TaskStatus.RUNNING else None
            if holder is not None and holder.slurm_element in kinds:
                held[holder.slurm_element] = task.task_id
        return [
            Death(element, e.node, kind, e.exit_code, held.get(element))
            for element, (e, kind) in sorted(kinds.items())
        ]

    def _record_deaths(self, job_id: str, found: list[Death]) -> None:
        """Into the manifest (under the job lease), and the history; a node that turns bad
        now is said once."""
        key = JobLayout(job_id).manifest
        doc = read_manifest(self.backend, job_id)
        before = bad_nodes(doc)
        deaths = doc.setdefault("slurm_deaths", {})
        for d in found:
            deaths[d.element] = d.as_dict()
            log.warning(
                "job %s: worker %s on %s: %s (exit %s)%s",
                job_id,
                d.element,
                d.node or "?",
                "killed for its memory (oom)" if d.kind == "oom" else "crashed",
                d.exit_code,
                f" holding {d.task}" if d.task else "",
            )
        self.backend.objects.put_json(key, doc)
        for node, crashes in bad_nodes(doc).items():
            if node not in before:
                log.warning("job %s: node %s is bad (%d worker crashes)", job_id, node, crashes)
                append_history(self.backend, job_id, "bad_node", node=node, crashes=crashes)

    def while_alive(self, job_id: str, live: SlurmLiveness) -> None:
        if not live.waiting:  # its finalize was cancelled or failed: chain a new one
            self._chained = self._submit_finalize(job_id, sorted({e.job_id for e in live.elements}))
            self._record(job_id, [], self._chained, None)

    def start_workers(self, job_id: str, request: StartRequest) -> Submitted:
        # a retry phase's backoff: its workers wait in the queue, not on a node
        now = time.time()
        begin_s = math.ceil(request.begin_at - now) if request.begin_at > now + 1 else None
        definition = load_definition(self.backend, job_id)
        logs = self.log_dir(job_id)
        logs.mkdir(parents=True, exist_ok=True)
        script = self._script(job_id, "worker.sbatch", definition.slurm)
        retry = phase_number(get_job(self.backend, job_id).phase)
        options = scripts.for_phase(definition.slurm, definition.retry.mem_factor, retry)
        exclude = self._exclude(job_id, options)
        arrays: list[str] = []
        # submit and resume read the site's limits afresh; finalize sizes by what they read
        limits = self._limits(job_id, definition.slurm, fresh=request.operator)
        sizing = size_under(request.count, definition.slurm, limits)
        for note in sizing.capped:
            log.warning("job %s: %s", job_id, note)
        plan = scripts.split(sizing.workers, limits.max_array_size, sizing.parallelism)
        try:
            for size, parallelism in plan:
                args = scripts.worker_args(
                    options, job_id, logs, size, parallelism, begin_s, exclude
                )
                arrays.append(self.client.sbatch(args, script))
            fin = self._submit_finalize(job_id, arrays)
        except SlurmctlError:
            if arrays:  # record what is queued: `resume` chains a finalize to it
                self._record(job_id, arrays, None, sizing.workers, request, limits, exclude)
            raise
        self._record(job_id, arrays, fin, sizing.workers, request, limits, exclude)
        append_history(
            self.backend,
            job_id,
            "workers",
            executor="slurm",
            array=arrays[0],
            arrays=arrays,
            count=sizing.workers,
            finalize=fin,
            run=request.run,
            begin_in_s=begin_s,
            capped=sizing.capped,
            exclude=exclude,
            mem=options.mem,
        )
        log.info(
            "job %s: %d workers in arrays %s, finalize %s", job_id, sizing.workers, arrays, fin
        )
        return Submitted(arrays, fin, sizing.capped)

    def _exclude(self, job_id: str, options: SlurmOptions) -> list[str]:
        """The bad nodes, unless they are every node of the partitions the job uses (then the
        workers would never start: the nodes are only reported)."""
        bad = sorted(bad_nodes(read_manifest(self.backend, job_id)))
        self._kept = []
        if not bad:
            return []
        names = set((options.partition or "").split(",")) - {""}
        parts = [
            p for p in self.client.partitions() if p.name in names or (not names and p.default)
        ]
        if len(bad) >= sum(p.nodes for p in parts):
            self._kept = bad
            log.warning(
                "job %s: not excluding the bad nodes %s: they are every node of the partition",
                job_id,
                ", ".join(bad),
            )
            return []
        return bad

    def _limits(self, job_id: str, options: SlurmOptions, *, fresh: bool) -> SiteLimits:
        stored = read_manifest(self.backend, job_id).get("slurm_limits")
        if fresh or not isinstance(stored, dict):
            return self.client.site_limits(options)
        return SiteLimits.from_dict(stored)

    def fruitless_reason(self, job_id: str, count: int, codes: list[int]) -> str:
        return (
            f"Slurm workers ended (exit codes {codes}) {count} times without progress; "
            f"see {self.log_dir(job_id)}"
        )

    # --- the decision -----------------------------------------------------------------------
    def advance(self, job_id: str, *, operator: bool = False) -> Advance:
        """Reconcile; free the leases of ended elements; then queue workers + finalize if work
        remains and none is alive, or a finalize if workers are alive without one; or (phase
        done) let finalize aggregate.

        operator: asked by a person (submit, resume), not by a finalize job: never gives up.
        """
        with self.job_lease(job_id):
            self._chained = None
            try:
                out = self._advance_of(self.step(job_id, operator=operator))
            finally:
                # after the arrays it queued are recorded: they count as the job's workers
                hooks.registry.after_finalize(self.backend, job_id)
            if self.own_id:
                append_history(
                    self.backend,
                    job_id,
                    "finalize",
                    slurm_job_id=self.own_id,
                    status=str(out.status),
                    work_left=out.work_left,
                    submitted=out.submitted,
                    finalize=out.finalize,
                )
            return out

    def _advance_of(self, step: Step[SlurmLiveness, Submitted]) -> Advance:
        if not step.work_left or step.live is None:
            return Advance(step.status)
        if step.started is not None:
            return Advance(
                step.status,
                step.work_left,
                submitted=step.started.arrays,
                finalize=step.started.finalize,
                capped=step.started.capped,
            )
        if step.status == JobStatus.FAILED:
            return Advance(JobStatus.FAILED)
        live = step.live
        return Advance(
            step.status,
            step.work_left,
            alive=live.elements,
            waiting=live.waiting,
            finalize=self._chained,
        )

    def _submit_finalize(self, job_id: str, after: list[str]) -> str:
        definition = load_definition(self.backend, job_id)
        args = scripts.finalize_args(definition.slurm, job_id, self.log_dir(job_id), after)
        return self.client.sbatch(args, self._script(job_id, "finalize.sbatch", definition.slurm))

    def _script(self, job_id: str, name: str, options: SlurmOptions) -> Path:
        """Rendered into <root>/slurm/<job_id>/: sbatch copies it at submission."""
        path = self.root / "slurm" / job_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        url = self.backend.url if self.backend.kind != "local" else None
        text = scripts.render(name, scripts.Launch.here(self.root, url), job_id, options)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return path

    # --- bookkeeping ------------------------------------------------------------------------
    def _record(
        self,
        job_id: str,
        arrays: list[str],
        fin: str | None,
        workers: int | None,
        request: StartRequest | None = None,
        limits: SiteLimits | None = None,
        exclude: list[str] | None = None,
    ) -> None:
        """Read-modify-write of the job manifest (under the job lease): every Slurm id, and each
        run with the marker it started from (the fruitless-runs rule reads them back)."""
        key = JobLayout(job_id).manifest
        doc = read_manifest(self.backend, job_id)
        marker = request.marker if request else Marker.of(self.backend.state.counters(job_id))
        doc.setdefault("slurm_runs", []).append(
            {
                "arrays": arrays,
                "finalize": fin,
                "workers": workers,
                "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "done_before": marker.done,
                "lost_before": marker.lost,
                "operator": bool(request and request.operator),
            }
        )
        if limits is not None:
            doc["slurm_limits"] = limits.as_dict()
        if exclude is not None:
            doc["slurm_excluded"] = exclude
            doc["slurm_kept_bad"] = self._kept
        ids = doc.setdefault("slurm_job_ids", [])
        ids.extend(i for i in [*arrays, fin] if i and i not in ids)
        if not doc.get("slurm_array_id") and arrays:
            doc["slurm_array_id"] = arrays[0]
        self.backend.objects.put_json(key, doc)


def _runs(backend: Backend, job_id: str, workers: list[Element], now: Marker) -> list[Run]:
    """The manifest's runs, judged by how their elements ended: a time limit, requeue or
    scancel (or an array Slurm forgot) is no one's fault; exit 0 is a clean leave."""
    out = []
    for r in read_manifest(backend, job_id).get("slurm_runs", []):
        if not r.get("arrays"):
            continue
        marker = Marker(r.get("done_before", -1), r.get("lost_before", now.lost))
        mine = [e for e in workers if e.job_id in r["arrays"]]
        codes = tuple(e.exit_code for e in mine if e.exit_code is not None)
        if any(e.state.alive for e in mine):
            end = RunEnd.RUNNING
        elif not mine or any(_stopped(e) for e in mine):
            end = RunEnd.STOPPED
        elif all(e.state is SlurmState.COMPLETED for e in mine):
            end = RunEnd.OK
        else:
            end = RunEnd.FAILED
        out.append(Run(marker, end, codes, bool(r.get("operator"))))
    return out


def _stopped(e: Element) -> bool:
    return (
        e.state.stopped_from_outside
        or e.exit_code == EXIT_STOPPED
        or e.state in (SlurmState.UNKNOWN, SlurmState.OUT_OF_MEMORY)
    )
