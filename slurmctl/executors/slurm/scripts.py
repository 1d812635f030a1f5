"""The batch scripts and sbatch arguments, as pure functions of the job (golden-file tested).

Options go on sbatch's command line (an argv, so no quoting trouble); the scripts only set up
the environment and `exec` slurmctl, so signals reach Python.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from slurmctl.config import SlurmOptions
from slurmctl.ratelimit.allocation import signal_lead_s as lead_of_time


@dataclass(frozen=True)
class Launch:
    """Where and how the batch scripts run slurmctl: the submitter's own Python and folders."""

    root: Path
    """The absolute state root (`--root`)."""
    cwd: Path
    python: str
    """The interpreter that runs slurmctl here (a venv's bin/python, not resolved)."""
    venv: str | None
    backend_url: str | None = None
    """`--backend` for the workers and finalize when the job's backend is not the embedded one
    under root."""

    @classmethod
    def here(cls, root: Path, backend_url: str | None = None) -> Launch:
        venv = sys.prefix if sys.prefix != sys.base_prefix else None
        return cls(root.absolute(), Path.cwd(), sys.executable, venv, backend_url)


def render(name: str, launch: Launch, job_id: str, options: SlurmOptions | None = None) -> str:
    """The batch script `name` (worker.sbatch or finalize.sbatch) for this job: `slurm.setup`
    lines, then `exec` of `slurm.python` (else the submitter's interpreter), inside
    `slurm.container` for the workers."""
    options = options or SlurmOptions()
    text = resources.files(__package__).joinpath("templates", name).read_text()
    python = options.python or launch.python
    env = [f"export SLURMCTL_HOME={shlex.quote(str(launch.root))}"]
    container = options.container if name == "worker.sbatch" else None
    if launch.venv and python == launch.python and container is None:
        env.append(f"export VIRTUAL_ENV={shlex.quote(launch.venv)}")
        env.append(f'export PATH={shlex.quote(launch.venv + "/bin")}:"$PATH"')
    interpreter = [python]
    if container is not None:
        interpreter = [container.runtime, "exec", *container.args, container.image]
        interpreter.append(container.python)
    values = {
        "job_id": shlex.quote(job_id),
        "cwd": shlex.quote(str(launch.cwd)),
        "root": shlex.quote(str(launch.root)),
        "backend": f" --backend {shlex.quote(launch.backend_url)}" if launch.backend_url else "",
        "interpreter": shlex.join(interpreter),
        "environment": "\n".join(env + setup_lines(options.setup)),
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)


def setup_lines(setup: list[str]) -> list[str]:
    """`slurm.setup`, each line in a group of its own (so a trailing comment or a `;` list is
    kept whole) that stops the script, naming the line, when it fails: a worker never starts in
    a half-made environment."""
    if not setup:
        return []
    out = [
        "# slurm.setup (the job definition), run in this shell so exports and activations last",
        "setup_failed() {",
        '    echo "slurmctl: slurm.setup[$1] failed (exit $2): $3; slurmctl not started" >&2',
        "    exit 1",
        "}",
    ]
    for i, line in enumerate(setup):
        out += ["{", line, f"}} || setup_failed {i} $? {shlex.quote(line)}"]
    return out


def signal_lead_s(options: SlurmOptions) -> int:
    """120 s, or half a shorter time limit: a worker told to stop at once would do nothing."""
    return lead_of_time(options.time)


def resource_args(options: SlurmOptions, *, gres: bool = True) -> list[str]:
    """The job definition's options, as sbatch spells them."""
    args = []
    for flag, value in (
        ("--partition", options.partition),
        ("--account", options.account),
        ("--qos", options.qos),
        ("--time", options.time),
        ("--cpus-per-task", options.cpus_per_task),
        ("--mem", options.mem),
        ("--gres", options.gres if gres else None),
    ):
        if value is not None:
            args.append(f"{flag}={value}")
    return args + list(options.extra_args)


def worker_args(
    options: SlurmOptions,
    job_id: str,
    logs: Path,
    size: int,
    parallelism: int | None,
    begin_s: int | None = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """sbatch arguments for one array of `size` workers, kept off the `exclude` nodes
    (`slurm.exclude` and the nodes found bad)."""
    array = f"0-{size - 1}" + (f"%{parallelism}" if parallelism else "")
    args = [
        f"--array={array}",
        f"--job-name=slurmctl-{job_id}",
        f"--output={logs}/worker-%A_%a.log",
        "--open-mode=append",
        f"--signal=B:USR1@{signal_lead_s(options)}",
        "--requeue",
    ]
    if begin_s:
        args.append(f"--begin=now+{begin_s}")
    avoid = list(dict.fromkeys([*options.exclude, *exclude]))
    if avoid:
        args.append(f"--exclude={','.join(avoid)}")
    return args + resource_args(options)


def finalize_args(options: SlurmOptions, job_id: str, logs: Path, after: list[str]) -> list[str]:
    """sbatch arguments for finalize: after every listed array, whatever their outcome."""
    return [
        f"--dependency=afterany:{':'.join(after)}",
        f"--job-name=slurmctl-{job_id}-finalize",
        f"--output={logs}/finalize-%j.log",
        "--open-mode=append",
        "--requeue",
        *resource_args(options, gres=False),
    ]


def scaled_mem(mem: str, factor: float, times: int) -> str:
    """`mem` (8G, 512M, 8192) times factor**times, in whole megabytes rounded up (sbatch's
    default unit); as it was when nothing scales it."""
    if times <= 0 or factor == 1:
        return mem
    m = re.fullmatch(r"(\d+)([KMGT]?)", mem.strip(), re.I)
    if m is None:
        return mem
    mb = int(m.group(1)) * MEM_UNITS_MB[m.group(2).upper() or "M"]
    return f"{math.ceil(round(mb * factor**times, 6))}M"  # 1000 x 1.1 is 1100, not 1101


MEM_UNITS_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def for_phase(options: SlurmOptions, mem_factor: float | None, retry: int) -> SlurmOptions:
    """The options of retry phase `retry` (0: the initial phase): more memory after OOM kills
    when `retry.mem_factor` says so."""
    if mem_factor is None or options.mem is None or retry <= 0:
        return options
    return options.model_copy(update={"mem": scaled_mem(options.mem, mem_factor, retry)})


def split(count: int, max_array_size: int, parallelism: int | None) -> list[tuple[int, int | None]]:
    """(size, %P) of each array: at most MaxArraySize elements each (indexes 0..size-1), the
    parallelism shared out so the arrays together keep to it (at least 1 each)."""
    sizes = []
    left = count
    while left > 0:
        sizes.append(min(left, max_array_size))
        left -= sizes[-1]
    if parallelism is None or parallelism >= count:
        return [(s, None) for s in sizes]
    shares = [max(1, parallelism * s // count) for s in sizes]
    for i in range(parallelism - sum(shares)):
        shares[i % len(shares)] += 1
    return [(s, min(p, s)) for s, p in zip(sizes, shares, strict=True)]


RESERVED = {
    "--array": "array sizes come from `workers` and `slurm.array_parallelism`",
    "-a": "array sizes come from `workers` and `slurm.array_parallelism`",
    "--dependency": "slurmctl chains finalize after the workers itself",
    "-d": "slurmctl chains finalize after the workers itself",
    "--parsable": "slurmctl reads the job ids itself",
    "--signal": "the workers checkpoint on USR1 before the time limit",
    "--requeue": "workers are always requeueable",
    "--no-requeue": "workers are always requeueable",
    "--job-name": "slurmctl names the jobs after the job id",
    "-J": "slurmctl names the jobs after the job id",
    "--output": "logs go to <root>/logs/<job_id>/",
    "-o": "logs go to <root>/logs/<job_id>/",
    "--error": "logs go to <root>/logs/<job_id>/",
    "-e": "logs go to <root>/logs/<job_id>/",
    "--open-mode": "logs are appended across requeues",
    "--wrap": "slurmctl writes the batch scripts",
    "--begin": "retry phases set their own begin time",
    "-b": "retry phases set their own begin time",
    "--test-only": "slurmctl submits for real",
    "--comment": "slurmctl marks each submission so that a retried sbatch is never duplicated",
    "--array-parallelism": "use slurm.array_parallelism",
}
NAMED = {
    "--partition": "partition",
    "-p": "partition",
    "--account": "account",
    "-A": "account",
    "--qos": "qos",
    "-q": "qos",
    "--time": "time",
    "-t": "time",
    "--cpus-per-task": "cpus_per_task",
    "-c": "cpus_per_task",
    "--mem": "mem",
    "--gres": "gres",
    "--exclude": "exclude",
    "-x": "exclude",
}


def check_extra_args(extra: list[str]) -> str | None:
    """Why an extra sbatch argument cannot be used, or None when they all can."""
    for arg in extra:
        if not arg.startswith("-"):
            continue
        flag = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
        if flag in RESERVED:
            return f"{flag} is set by slurmctl ({RESERVED[flag]}); remove it"
        if flag in NAMED:
            return f"{flag}: use slurm.{NAMED[flag]} instead"
    return None
