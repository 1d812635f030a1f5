"""Observability: what `status` shows, per-task metrics, the per-job time series, structured
worker logs, error analysis, alerts and the web dashboard (docs/observability.md).

Everything here reads the stores through the Backend interface, so it works the same with the
embedded backend and with AWS; nothing it computes for `status` scans the tasks. It sits above
the core (worker, finalize, executors), which reaches it only through `slurmctl.hooks`: the
observers here are installed by the CLI (docs/architecture.md, "Observability").
"""
