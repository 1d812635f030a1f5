"""Checks made before submit writes anything, so a refused job leaves nothing behind
(docs/architecture.md, invariant 7): reserved sbatch arguments, the partition, the embedded
backend on a multi-node partition, and Slurm's own verdict on the options (`sbatch --test-only`);
then the site's limits are read (limits.py), for `--dry-run` to show."""

from __future__ import annotations

from slurmctl.config import JobDefinition
from slurmctl.errors import ConfigError
from slurmctl.executors.slurm import scripts
from slurmctl.executors.slurm.limits import SiteLimits
from slurmctl.executors.slurm.sbatch import SlurmClient


def preflight(definition: JobDefinition, client: SlurmClient | None = None) -> SiteLimits | None:
    """Raise a one-line ConfigError (exit code 2) if the Slurm executor cannot run this job;
    else the site's limits the workers will be sized under (None for another executor)."""
    if definition.executor != "slurm":
        return None
    client = client or SlurmClient()
    where = str(definition.config_path)
    options = definition.slurm
    problem = scripts.check_extra_args(options.extra_args)
    if problem:
        raise ConfigError(f"{where}: slurm.extra_args: {problem}")
    partitions = client.partitions()
    names = ", ".join(p.name for p in partitions) or "none"
    chosen = []
    for name in (options.partition or "").split(","):  # sbatch takes a list: "a,b"
        if not name:
            continue
        part = next((p for p in partitions if p.name == name), None)
        if part is None:
            raise ConfigError(
                f"{where}: slurm.partition: no partition {name!r} on this cluster "
                f"(partitions: {names})"
            )
        chosen.append(part)
    if not chosen:
        default = next((p for p in partitions if p.default), None)
        if default is None:
            raise ConfigError(
                f"{where}: slurm.partition: the cluster has no default partition; set one of: "
                f"{names}"
            )
        chosen.append(default)
    for part in chosen:
        if definition.backend == "local" and part.nodes > 1:
            raise ConfigError(
                f"{where}: partition {part.name!r} has {part.nodes} nodes, but the embedded "
                "backend (SQLite in one folder) serves a single host: set backend: aws for a "
                "multi-node partition"
            )
    refused = client.test_only(scripts.resource_args(options))
    if refused:
        raise ConfigError(f"{where}: slurm options refused by sbatch: {refused}")
    return client.site_limits(options)
