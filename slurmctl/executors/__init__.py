"""Executors start workers: local subprocesses, or Slurm job arrays."""
