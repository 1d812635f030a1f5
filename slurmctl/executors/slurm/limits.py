"""The site's limits, read rather than guessed: the workers and `%P` a submission asks for are
sized under them, and what was capped is said (submit, `--dry-run`, the job's history).

- `scontrol show config`: MaxArraySize (larger worker counts are split into several arrays)
  and MaxJobCount (slurmctld's whole job table: the workers and their finalize must fit).
- `sacctmgr show user <me> withassoc` (the user's default account and associations) and
  `sacctmgr show qos` (the QOS the job runs under: `slurm.qos`, else the association's default
  QOS, as slurmctld chooses it): MaxSubmitJobsPerUser caps the
  workers (each array element is a job, and the finalize job counts too), MaxJobsPerUser and
  GrpTRES `cpu=` cap `%P` (running workers). Where an association and its QOS both set a
  limit, the smaller is used.

Without accounting (`sacctmgr` refused, as on a cluster without slurmdbd) only the
configuration's limits apply, and the plan says the QOS limits could not be read. Limits are
read at `submit` and `resume` and kept in the job manifest: finalize sizes its resubmissions by
them without asking slurmdbd again.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from slurmctl.config import SlurmOptions

DEFAULT_MAX_ARRAY_SIZE = 1001
UNLIMITED = ("", "unlimited", "infinite", "n/a")


@dataclass(frozen=True)
class QosLimits:
    """Per-user limits from one association or QOS row (None: not set)."""

    max_submit: int | None = None
    max_jobs: int | None = None
    grp_cpus: int | None = None


@dataclass
class SiteLimits:
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    max_job_count: int | None = None
    max_submit: int | None = None
    """MaxSubmitJobsPerUser (QOS) / MaxSubmitJobs (association): jobs queued or running."""
    max_submit_from: str = ""
    max_jobs: int | None = None
    """MaxJobsPerUser (QOS) / MaxJobs (association): jobs running at once."""
    max_jobs_from: str = ""
    grp_cpus: int | None = None
    """GrpTRES cpu=N: CPUs the group may use at once."""
    grp_cpus_from: str = ""
    qos: str | None = None
    user_jobs: int = 0
    """The user's jobs queued or running when the limits were read (asked only when a
    MaxSubmitJobsPerUser applies): they count against it too."""
    unread: str | None = None
    """Why the QOS limits could not be read (sacctmgr's reason), or None."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SiteLimits:
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


@dataclass
class Sizing:
    """The workers and `%P` to ask for, and why they differ from the definition's."""

    workers: int
    parallelism: int | None
    capped: list[str] = field(default_factory=list)


def parse_config(text: str) -> tuple[int, int | None]:
    """MaxArraySize and MaxJobCount from `scontrol show config`."""
    size = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.M)
    count = re.search(r"^MaxJobCount\s*=\s*(\d+)", text, re.M)
    return (
        int(size.group(1)) if size else DEFAULT_MAX_ARRAY_SIZE,
        int(count.group(1)) if count else None,
    )


def _number(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _cpus(tres: str) -> int | None:
    """cpu=N from a TRES list like `cpu=64,mem=256G,node=4`."""
    m = re.search(r"(?:^|,)cpu=(\d+)", tres.strip())
    return int(m.group(1)) if m else None


ASSOC_FORMAT = "DefaultAccount,Account,Partition,QOS,DefaultQOS,MaxSubmit,MaxJobs,GrpTRES"
QOS_FORMAT = "Name,MaxSubmitPU,MaxJobsPU,GrpTRES"


def parse_assoc(text: str, account: str | None) -> tuple[QosLimits, str | None]:
    """The user's association (`sacctmgr -n -P show user <me> withassoc format=ASSOC_FORMAT`,
    one row per association, each beginning with the user's DefaultAccount): its limits and
    default QOS. The rows of `account` when given, else of the default account (where
    slurmctld puts a job that names none); limits set on several rows (one per partition)
    count at their smallest. An account the user has no association in keeps every row."""
    rows = [ln.split("|") for ln in text.splitlines() if ln.count("|") >= 7]
    if not rows:
        return QosLimits(), None
    mine = account or rows[0][0]
    rows = [r for r in rows if r[1] == mine] or rows
    default_qos = next((r[4] for r in rows if r[4]), None) or _implied_qos(rows[0][3])
    return _smallest(
        [QosLimits(_number(r[5]), _number(r[6]), _cpus(r[7])) for r in rows]
    ), default_qos


def _implied_qos(listed: str) -> str:
    """The QOS slurmctld gives a job that names none, of an association without DefaultQOS
    (most sites set their limits on `normal` and no DefaultQOS): its only QOS, else `normal`
    (measured on 22.05: an association of QOS `ta` runs a job under ta, of `ta,tb` asks for
    normal)."""
    names = [q for q in listed.split(",") if q]
    return names[0] if len(names) == 1 else "normal"


def parse_qos(text: str, name: str) -> QosLimits | None:
    """One QOS (`sacctmgr -n -P show qos format=QOS_FORMAT`), None when it is not listed."""
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 4 and parts[0] == name:
            return QosLimits(_number(parts[1]), _number(parts[2]), _cpus(parts[3]))
    return None


def _smallest(rows: list[QosLimits]) -> QosLimits:
    def low(values: list[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return min(known) if known else None

    return QosLimits(
        low([r.max_submit for r in rows]),
        low([r.max_jobs for r in rows]),
        low([r.grp_cpus for r in rows]),
    )


def combine(
    limits: SiteLimits, assoc: QosLimits, qos: QosLimits | None, qos_name: str | None
) -> SiteLimits:
    """Each limit at its smallest of the association's and the QOS's, naming where it came
    from."""
    for attr, qos_label, assoc_label in (
        ("max_submit", "MaxSubmitJobsPerUser", "MaxSubmitJobs"),
        ("max_jobs", "MaxJobsPerUser", "MaxJobs"),
        ("grp_cpus", "GrpTRES cpu", "GrpTRES cpu"),
    ):
        options = []
        if qos is not None and getattr(qos, attr) is not None:
            options.append((getattr(qos, attr), f"QOS {qos_name} {qos_label}"))
        if getattr(assoc, attr) is not None:
            options.append((getattr(assoc, attr), f"the association's {assoc_label}"))
        if options:
            value, source = min(options)
            setattr(limits, attr, value)
            setattr(limits, f"{attr}_from", source)
    limits.qos = qos_name
    return limits


def size(
    workers: int, options: SlurmOptions, limits: SiteLimits, *, jobs_per_run: int = 1
) -> Sizing:
    """The workers and `%P` to ask for under the limits. jobs_per_run: the Slurm jobs a run
    adds besides its workers (its finalize)."""
    out = Sizing(workers, options.array_parallelism)
    room = [
        (limits.max_submit, limits.max_submit_from),
        (limits.max_job_count, "MaxJobCount (scontrol show config)"),
    ]
    for i, (limit, source) in enumerate(room):
        others = limits.user_jobs if i == 0 else 0
        if limit is not None and out.workers + jobs_per_run + others > limit:
            cap = max(limit - jobs_per_run - others, 1)
            mine = f", you have {_jobs(others)} queued or running," if others else ""
            out.capped.append(
                f"workers {out.workers} -> {cap}: {source} is {limit}{mine} and finalize is a "
                "job too"
            )
            out.workers = cap
    running = [(limits.max_jobs, limits.max_jobs_from)]
    if limits.grp_cpus is not None:
        per = options.cpus_per_task or 1
        running.append(
            (
                max(limits.grp_cpus // per, 1),
                f"{limits.grp_cpus_from} {limits.grp_cpus}"
                + (f" / {per} CPUs per worker" if per > 1 else ""),
            )
        )
    for limit, source in running:
        current = out.parallelism or out.workers
        if limit is not None and current > limit:
            out.capped.append(f"%P {current} -> {limit}: {source} (workers running at once)")
            out.parallelism = limit
    if limits.max_array_size and out.workers > limits.max_array_size:
        arrays = -(-out.workers // limits.max_array_size)
        out.capped.append(
            f"workers split into {arrays} arrays: MaxArraySize is {limits.max_array_size}"
        )
    return out


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def describe(limits: SiteLimits) -> list[str]:
    """What was read, for `submit --dry-run`."""
    lines = [
        f"MaxArraySize {limits.max_array_size}, MaxJobCount "
        f"{limits.max_job_count if limits.max_job_count is not None else 'unknown'}"
    ]
    if limits.unread:
        lines.append(f"QOS limits not read ({limits.unread}): not capped by them")
        return lines
    shown = [
        f"{label} {value} ({source})"
        for label, value, source in (
            ("MaxSubmitJobsPerUser", limits.max_submit, limits.max_submit_from),
            ("MaxJobsPerUser", limits.max_jobs, limits.max_jobs_from),
            ("GrpTRES cpu", limits.grp_cpus, limits.grp_cpus_from),
        )
        if value is not None
    ]
    if limits.max_submit is not None:
        shown.append(f"{_jobs(limits.user_jobs)} of yours queued or running")
    lines.append(f"QOS {limits.qos or 'none'}: " + (", ".join(shown) or "no per-user limits set"))
    return lines


def current_user() -> str:
    return getpass.getuser()
