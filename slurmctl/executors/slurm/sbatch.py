"""The Slurm commands the executor runs (sbatch, squeue, sacct, scancel, scontrol), parsed.

Real commands, never a library binding: what works from a login shell works here. sacct is
optional (clusters without accounting storage refuse it): squeue and the state store suffice,
so its absence is logged once at debug level and never again.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmctl.config import SlurmOptions
from slurmctl.errors import SlurmctlError, UserError
from slurmctl.executors.slurm.limits import (
    ASSOC_FORMAT,
    QOS_FORMAT,
    SiteLimits,
    combine,
    current_user,
    parse_assoc,
    parse_config,
    parse_qos,
)
from slurmctl.executors.slurm.states import SlurmState, parse_state
from slurmctl.ratelimit.allocation import time_limit_s as time_limit_s  # re-exported

log = logging.getLogger("slurmctl.slurm")

COMMAND_TIMEOUT_S = 60.0
RETRIES = 3
TRANSIENT = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Zero Bytes were transmitted",
    "Resource temporarily unavailable",
)
NOT_RECEIVED = ("Unable to contact slurm controller", "Resource temporarily unavailable")
"""Transient sbatch failures where the controller certainly did not queue the job (it could not
be reached, or it refused the RPC while busy): submitted again without a look-up. The others
(a timed-out socket, a reply lost) are ambiguous: the job may be queued."""
SBATCH_ATTEMPTS = 5
SACCTMGR_TIMEOUT_S = 10.0
COMMENT_PREFIX = "slurmctl-submission="


class SlurmCommandError(SlurmctlError):
    """A Slurm command failed for a reason that is not the job definition's (exit code 1)."""


@dataclass(frozen=True)
class Element:
    """One Slurm job, or one element of an array (`<array>_<index>`), as squeue/sacct see it."""

    element_id: str
    state: SlurmState
    reason: str = ""
    exit_code: int | None = None
    """The script's exit status (143: a worker stopped at a checkpoint); None when unknown."""
    node: str = ""
    """The node it ran on (empty while pending)."""

    @property
    def job_id(self) -> str:
        """The array (or plain job) id the element belongs to."""
        return self.element_id.split("_", 1)[0]


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: int
    default: bool


_LIMITS: dict[tuple[str | None, str | None], SiteLimits] = {}


class SlurmClient:
    """One per process: caches MaxArraySize and whether sacct works."""

    backoff_s = 1.0
    """The first pause before a command is run again after a transient failure (doubling)."""

    def __init__(self, *, min_interval_s: float = 0.0) -> None:
        self._config: tuple[int, int | None] | None = None
        self._sacct_ok: bool | None = None
        self.min_interval_s = min_interval_s
        """The same question asked again sooner gets the last answer (`status --watch`, the
        dashboard: a person's refresh rate, not slurmctld's load)."""
        self._last: tuple[tuple[str, ...], float, list[Element]] | None = None

    # --- plumbing -----------------------------------------------------------------------------
    def run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a query (never sbatch, see `sbatch`); retry while the controller cannot be
        reached or is busy."""
        for attempt in range(RETRIES):
            out = self._once(list(args))
            if out.returncode == 0 or not any(t in out.stderr for t in TRANSIENT):
                break
            if attempt + 1 < RETRIES:
                log.warning("%s: %s; retrying", args[0], _first_line(out.stderr))
                time.sleep(self.backoff_s * 2.0**attempt)
        if check and out.returncode != 0:
            raise SlurmCommandError(
                f"{' '.join(args[:2])}: {_first_line(out.stderr) or f'exit {out.returncode}'}"
            )
        return out

    # --- submission ---------------------------------------------------------------------------
    def sbatch(self, args: Sequence[str], script: Path) -> str:
        """Submit once; returns the job id (`--parsable` prints `id` or `id;cluster`).

        Transient failures are retried with backoff, never duplicated: each submission carries
        a comment of its own (`slurmctl-submission=<token>`), and after a failure that leaves
        it unknown whether the job was queued (a timed-out socket) one squeue looks the comment
        up before sbatch runs again.
        """
        token = uuid.uuid4().hex[:16]
        name = next((a.split("=", 1)[1] for a in args if a.startswith("--job-name=")), None)
        command = ["sbatch", "--parsable", f"--comment={COMMENT_PREFIX}{token}", *args, str(script)]
        reason, unsure = "", False
        for attempt in range(SBATCH_ATTEMPTS + 1):
            if attempt:
                time.sleep(self.backoff_s * 2.0 ** (attempt - 1))
            if unsure:  # the last one may have been queued: ask before submitting again
                answered, found = self._submitted(name, token)
                if found:
                    log.warning(
                        "sbatch: %s, yet job %s was queued: not submitted again", reason, found
                    )
                    return found
                if not answered:
                    continue
                unsure = False
            if attempt == SBATCH_ATTEMPTS:
                break
            out = self._once(command)
            if out.returncode == 0:
                return _job_id(out.stdout)
            reason = sbatch_error(out.stderr)
            if not any(t in out.stderr for t in TRANSIENT):
                raise SlurmCommandError(f"sbatch failed: {reason}")
            unsure = not any(t in out.stderr for t in NOT_RECEIVED)
            log.warning("sbatch: %s; trying again (attempt %d)", reason, attempt + 1)
        raise SlurmCommandError(
            f"sbatch failed: {reason} ({SBATCH_ATTEMPTS} attempts"
            + ("; squeue could not say whether the last one was queued)" if unsure else ")")
        )

    def _submitted(self, name: str | None, token: str) -> tuple[bool, str | None]:
        """Whether squeue answered, and the id of the job whose comment carries `token` if the
        controller queued it (one squeue, by job name when there is one)."""
        query = ["squeue", "-h", "-t", "all", "-o", "%F|%k"] + (["-n", name] if name else [])
        out = self._once(query)
        if out.returncode != 0:
            return False, None
        mark = COMMENT_PREFIX + token
        found = (ln.split("|", 1)[0].strip() for ln in out.stdout.splitlines() if ln.endswith(mark))
        return True, next(found, None)

    def _once(
        self, args: list[str], timeout: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise UserError(
                f"{args[0]}: command not found; executor: slurm runs where Slurm's commands "
                "are (a login node)"
            ) from None
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 1, "", "Socket timed out (local)")

    def test_only(self, args: Sequence[str]) -> str | None:
        """`sbatch --test-only`: Slurm's own check of the options, nothing queued. None if ok,
        else sbatch's reason."""
        out = self.run(["sbatch", "--test-only", *args, "--wrap=true"], check=False)
        return None if out.returncode == 0 else sbatch_error(out.stderr)

    def scancel(self, ids: Sequence[str]) -> None:
        if ids:
            self.run(["scancel", *ids], check=False)

    # --- cluster facts ------------------------------------------------------------------------
    def max_array_size(self) -> int:
        """MaxArraySize from `scontrol show config` (read once): indexes go up to it minus one."""
        return self.cluster_config()[0]

    def cluster_config(self) -> tuple[int, int | None]:
        """MaxArraySize and MaxJobCount, from one `scontrol show config` per process."""
        if self._config is None:
            self._config = parse_config(self.run(["scontrol", "show", "config"]).stdout)
        return self._config

    def site_limits(self, options: SlurmOptions) -> SiteLimits:
        """The configuration's limits, and the user's association and QOS limits where
        slurmdbd answers (two sacctmgr calls, to slurmdbd rather than slurmctld). Read once
        per process and options: `submit`'s preflight and its first submission share them."""
        key = (options.account, options.qos)
        if key not in _LIMITS:
            _LIMITS[key] = self._read_site_limits(options)
        return SiteLimits.from_dict(_LIMITS[key].as_dict())

    def _read_site_limits(self, options: SlurmOptions) -> SiteLimits:
        max_array, max_jobs = self.cluster_config()
        limits = SiteLimits(max_array, max_jobs)
        user = current_user()
        if shutil.which("sacctmgr") is None:
            limits.unread = "sacctmgr: command not found"
            return limits
        # slurmdbd, not slurmctld; advisory: asked once, briefly (a slurmdbd down must not
        # hold up a submission), and a refusal only means the QOS limits are not applied
        out = self._once(
            ["sacctmgr", "-n", "-P", "show", "user", user, "withassoc", f"format={ASSOC_FORMAT}"],
            SACCTMGR_TIMEOUT_S,
        )
        if out.returncode != 0:
            limits.unread = f"sacctmgr: {_first_line(out.stderr) or f'exit {out.returncode}'}"
            return limits
        assoc, default_qos = parse_assoc(out.stdout, options.account)
        name = options.qos or default_qos
        qos = None
        if name:
            q = self._once(
                ["sacctmgr", "-n", "-P", "show", "qos", f"format={QOS_FORMAT}"], SACCTMGR_TIMEOUT_S
            )
            if q.returncode == 0:
                qos = parse_qos(q.stdout, name)
        limits = combine(limits, assoc, qos, name)
        if limits.max_submit is not None:  # the user's other jobs count against it
            mine = self.run(
                ["squeue", "-h", "-r", "-u", user, "-t", "PD,CF,R,S,CG", "-o", "%i"], check=False
            )
            if mine.returncode == 0:
                limits.user_jobs = len(mine.stdout.split())
        return limits

    def partitions(self) -> list[Partition]:
        out = self.run(["scontrol", "show", "partition", "-o"])
        parts = []
        for line in out.stdout.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "PartitionName" in fields:
                parts.append(
                    Partition(
                        fields["PartitionName"],
                        int(fields.get("TotalNodes", "0") or 0),
                        fields.get("Default") == "YES",
                    )
                )
        return parts

    # --- states -------------------------------------------------------------------------------
    def elements(self, ids: Sequence[str]) -> list[Element]:
        """Every element of the given jobs/arrays that Slurm still knows, any state.

        squeue keeps finished jobs for MinJobAge; sacct (when accounting works) is asked about
        the ids squeue has forgotten. An id neither knows is simply absent: gone.
        """
        if not ids:
            return []
        key, now = tuple(ids), time.monotonic()
        if self._last and self._last[0] == key and now - self._last[1] < self.min_interval_s:
            return list(self._last[2])
        found = self._query_elements(ids)
        self._last = (key, now, found)
        return list(found)

    def _query_elements(self, ids: Sequence[str]) -> list[Element]:
        out = self.run(
            [
                "squeue",
                "-h",
                "-r",
                "-t",
                "all",
                "-j",
                ",".join(ids),
                "-O",
                "JobArrayID:|,State:|,Reason:|,exit_code:|,NodeList:|",
            ],
            check=False,
        )
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            raise SlurmCommandError(f"squeue: {_first_line(out.stderr)}")
        found = [_squeue_line(line) for line in out.stdout.splitlines() if line.count("|") >= 3]
        known = {e.job_id for e in found}
        missing = [i for i in ids if i not in known]
        return found + (self._sacct(missing) if missing else [])

    def _sacct(self, ids: Sequence[str]) -> list[Element]:
        if self._sacct_ok is False:
            return []
        out = self.run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,ExitCode,NodeList"],
            check=False,
        )
        if out.returncode != 0:
            self._sacct_ok = False
            log.debug("sacct unavailable (%s): using squeue only", _first_line(out.stderr))
            return []
        self._sacct_ok = True
        found = []
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 3:
                code = parts[2].split(":", 1)[0]
                found.append(
                    Element(
                        parts[0],
                        parse_state(parts[1]),
                        "",
                        int(code) if code.isdigit() else None,
                        _node(parts[3] if len(parts) > 3 else ""),
                    )
                )
        return found


def _node(text: str) -> str:
    text = text.strip()
    return "" if text in ("", "None assigned", "(null)") else text


def _squeue_line(line: str) -> Element:
    fields = line.split("|")
    element, state, reason, code = fields[:4]
    node = _node(fields[4]) if len(fields) > 5 else ""
    status = int(code) if code.strip().isdigit() else None
    # squeue prints the raw wait status: exit code << 8, or the killing signal (as 128 + signal,
    # the shell's way)
    exit_code = None
    if status is not None:
        exit_code = status >> 8 if status & 0x7F == 0 else 128 + (status & 0x7F)
    return Element(element.strip(), parse_state(state), reason.strip(), exit_code, node)


def _job_id(stdout: str) -> str:
    job_id = stdout.strip().split(";", 1)[0]
    if not job_id.isdigit():
        raise SlurmCommandError(f"sbatch printed {stdout.strip()!r}, expected a job id")
    return job_id


def sbatch_error(stderr: str) -> str:
    """sbatch's own reason: `sbatch: error: invalid partition specified: nope` gives the text
    after the last `error: `."""
    lines = [ln for ln in stderr.splitlines() if "error" in ln.lower()] or stderr.splitlines()
    text = lines[0] if lines else "no error message"
    return text.rsplit("error: ", 1)[-1].strip()


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
