"""The Slurm executor: pilot workers as job arrays, finalize chained by dependency."""

from slurmctl.executors.slurm.executor import Advance, SlurmExecutor, slurm_ids, slurm_summary
from slurmctl.executors.slurm.preflight import preflight
from slurmctl.executors.slurm.states import SlurmState

__all__ = ["Advance", "SlurmExecutor", "SlurmState", "preflight", "slurm_ids", "slurm_summary"]
