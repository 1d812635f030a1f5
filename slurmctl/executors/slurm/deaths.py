"""How worker elements died: out of memory, or crashed on their node (bad nodes).

Finalize (and `resume`) judge every worker element Slurm reports ended, once each, and keep what
they found in the job manifest (`slurm_deaths`, by element id, so judging the same element again
changes nothing):

- **oom**: Slurm's OUT_OF_MEMORY state (cgroup sites), or the element's log holding slurmstepd's
  `exceeded memory limit` / `oom-kill` line (sites that enforce `--mem` by polling, like
  `JobAcctGatherParams=OverMemoryKill`). The task it held is recorded: when poison isolation
  fails the item that kills its workers, it fails as `oom` (transient), not `poison`, and the
  retry phase asks for `retry.mem_factor` times the memory.
- **crash**: ended FAILED, NODE_FAIL or BOOT_FAIL with an exit code that is not a clean leave
  (0), a stop at a checkpoint (143) or the job's own failure (3: the handler cannot be imported,
  which no node fixes). A time limit, preemption, requeue or scancel is no crash, nor is an item
  failing in the handler (the worker goes on).

A node is bad once workers crashed there `BAD_NODE_CRASHES` times, not all on the same task: a
poison item that kills every worker it meets is poison isolation's business, not its node's.
Bad nodes are excluded (`--exclude`) from the job's next submissions, unless that would exclude
every node of the partition (then they are only reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmctl.executors.slurm.sbatch import Element
from slurmctl.executors.slurm.states import SlurmState

BAD_NODE_CRASHES = 2
OOM_MARKS = ("exceeded memory limit", "oom-kill", "out of memory", "oom killed")
EXIT_CLEAN = frozenset({0, 3, 143})
"""0: left on its own; 3: the job failed (no node's fault); 143: stopped at a checkpoint."""
CRASH_STATES = frozenset({SlurmState.FAILED, SlurmState.NODE_FAIL, SlurmState.BOOT_FAIL})
LOG_TAIL_BYTES = 16384


@dataclass(frozen=True)
class Death:
    element: str
    node: str
    kind: str
    """`oom` or `crash`."""
    exit_code: int | None
    task: str | None
    """The task it held when it died, if any."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "kind": self.kind,
            "exit_code": self.exit_code,
            "task": self.task,
        }


def _log_says_oom(log: Path) -> bool:
    try:
        with log.open("rb") as f:
            f.seek(max(log.stat().st_size - LOG_TAIL_BYTES, 0))
            tail = f.read().decode("utf-8", "replace").lower()
    except OSError:
        return False
    return any(mark in tail for mark in OOM_MARKS)


def kind_of(e: Element, log: Path) -> str | None:
    """`oom`, `crash`, or None for an element that ended some other way."""
    if e.state is SlurmState.OUT_OF_MEMORY:
        return "oom"
    if e.state not in CRASH_STATES or e.exit_code in EXIT_CLEAN:
        return None
    return "oom" if _log_says_oom(log) else "crash"


def bad_nodes(manifest: dict[str, Any]) -> dict[str, int]:
    """Node -> crashes there, for the nodes that count as bad."""
    by_node: dict[str, list[str]] = {}
    for element, d in manifest.get("slurm_deaths", {}).items():
        if d.get("kind") == "crash" and d.get("node"):
            by_node.setdefault(d["node"], []).append(d.get("task") or element)
    return {
        node: len(causes)
        for node, causes in sorted(by_node.items())
        if len(causes) >= BAD_NODE_CRASHES and len(set(causes)) > 1
    }


def node_report(manifest: dict[str, Any]) -> dict[str, Any]:
    """For `status` and `analyze-errors`: the bad nodes (crashes there), the nodes the latest
    workers were kept off, and the deaths by kind."""
    kinds: dict[str, int] = {}
    for d in manifest.get("slurm_deaths", {}).values():
        kinds[str(d.get("kind"))] = kinds.get(str(d.get("kind")), 0) + 1
    return {
        "bad_nodes": bad_nodes(manifest),
        "excluded_nodes": list(manifest.get("slurm_excluded", [])),
        "kept_bad_nodes": list(manifest.get("slurm_kept_bad", [])),
        "worker_deaths": dict(sorted(kinds.items())),
    }


def describe_nodes(report: dict[str, Any]) -> str | None:
    """One line on the bad nodes, or None when there are none."""
    bad = report.get("bad_nodes") or {}
    if not bad:
        return None
    excluded = set(report.get("excluded_nodes") or [])
    kept = set(report.get("kept_bad_nodes") or [])

    def fate(node: str) -> str:
        if node in excluded:
            return "excluded from the latest workers"
        if node in kept:
            return "not excluded: every node of the partition is bad"
        return "no workers submitted since"

    return ", ".join(f"{node} ({n} worker crashes, {fate(node)})" for node, n in bad.items())
