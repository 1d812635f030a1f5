"""What every slurmctl process plugs into the core before a command runs.

The core (worker, finalize, executors) calls hooks and `status` asks registered summaries; it
imports no observer and no executor for them. This module, in the top layer, is where the
observers (metrics, the worker's JSON log, alerts) and the executors' `status` sections are
installed: once per process, before the command (docs/architecture.md, "Observability").
"""

from __future__ import annotations

from typing import Any

from slurmctl import hooks
from slurmctl.backends import Backend
from slurmctl.observe import status
from slurmctl.observe.alerts import AlertsObserver
from slurmctl.observe.logs import WorkerLogObserver
from slurmctl.observe.metrics import MetricsObserver


def install() -> None:
    """Idempotent. The order matters: metrics take their baseline before the log opens, and a
    commit's counters are recorded before the log that mentions them is shipped."""
    hooks.registry.install(MetricsObserver(), WorkerLogObserver(), AlertsObserver())
    status.register_summary("slurm", _slurm_summary)


def _slurm_summary(backend: Backend, job_id: str) -> dict[str, Any]:
    """Imported when `status` first shows a Slurm job: a worker, which never does, does not
    load the executors (nor finalize, below them) at its start."""
    from slurmctl.executors.slurm import slurm_summary

    return slurm_summary(backend, job_id)
