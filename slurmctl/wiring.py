"""What every slurmctl process plugs into the core before a command runs.

The core (worker, finalize, executors) calls hooks and `status` asks registered summaries; it
imports no observer and no executor for them. This module, in the top layer, is where the
observers (metrics, the worker's JSON log, alerts) and the executors' `status` sections are
installed: once per process, before the command (docs/architecture.md, "Observability").

The executors are imported only when a Slurm job's `status` asks for its section: the Slurm
executor pulls finalize, pyarrow's dataset and compute modules and the job definition's model,
which a worker, `pause` or a local job's `status` never need (docs/benchmarks.md,
"CLI start-up").
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
    """The Slurm executor's section of `status`, imported on first use."""
    from slurmctl.executors.slurm import slurm_summary

    return slurm_summary(backend, job_id)
