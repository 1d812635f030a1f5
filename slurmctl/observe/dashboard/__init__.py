"""The web dashboard: `slurmctl dashboard` (stdlib http.server; static files bundled)."""

from slurmctl.observe.dashboard.server import Dashboard, JobSources, make_server

__all__ = ["Dashboard", "JobSources", "make_server"]
