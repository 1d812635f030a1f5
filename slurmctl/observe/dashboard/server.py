"""The dashboard's HTTP server: HTML pages, a JSON API, `/metrics`, bundled static files.

Pages: `/` (the jobs) and `/job/<id>`; API: `/api/jobs`, `/api/jobs/<id>`,
`/api/jobs/<id>/errors` (the error analysis, cached `ERRORS_TTL_S`: it reads every committed
task); `/metrics` for Prometheus. A request whose Host header is not one of the server's own
names (loopback, the bound address, `--allow-host`) is refused with 421 (DNS rebinding). It
only reads, through the Backend interface, so it shows embedded and AWS jobs alike. Nothing on
the pages comes from elsewhere: the chart is drawn by the bundled `chart.js` as SVG.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from slurmctl.backends import Backend
from slurmctl.errors import JobNotFound, SlurmctlError
from slurmctl.ids import JOB_ID_RE
from slurmctl.jobs import local_job_stopped, read_history
from slurmctl.observe import prometheus, timeseries
from slurmctl.observe.alerts import read_state
from slurmctl.observe.errors import analyze
from slurmctl.observe.metrics import job_resources
from slurmctl.observe.status import job_status, shown_status

log = logging.getLogger("slurmctl.dashboard")

ERRORS_TTL_S = 30.0
HTML = "text/html; charset=utf-8"
REFRESH_S = 3
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


@dataclass
class JobSources:
    """Where jobs are: one or more backends (the state root's, and the registered AWS ones)."""

    openers: list[Callable[[], Backend]]
    _backends: list[Backend] = field(default_factory=list)
    _where: dict[str, Backend] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def backends(self) -> list[Backend]:
        with self._lock:
            if not self._backends:
                for opener in self.openers:
                    try:
                        self._backends.append(opener())
                    except SlurmctlError as e:
                        log.warning("dashboard: a backend cannot be opened: %s", e)
            return list(self._backends)

    def jobs(self) -> list[tuple[Backend, Any]]:
        found = []
        for backend in self.backends():
            try:
                records = backend.state.list_jobs()
            except SlurmctlError as e:
                log.warning("dashboard: cannot list jobs: %s", e)
                continue
            for job in records:
                if job.job_id not in self._where or self._where[job.job_id] is backend:
                    self._where[job.job_id] = backend
                    found.append((backend, job))
        return found

    def backend_of(self, job_id: str) -> Backend:
        if job_id not in self._where:
            self.jobs()
        if job_id not in self._where:
            raise JobNotFound(f"no job {job_id!r}")
        return self._where[job_id]


class Dashboard:
    """What the handler serves; separate from HTTP so it can be tested directly."""

    def __init__(self, sources: JobSources) -> None:
        self.sources = sources
        self._errors: dict[str, tuple[float, dict[str, Any]]] = {}
        self._errors_lock = threading.Lock()

    def job_list(self) -> list[dict[str, Any]]:
        rows = []
        for backend, job in self.sources.jobs():
            counters = backend.state.counters(job.job_id, running=False)  # items only
            total = counters.get("items.total", 0)
            rows.append(
                {
                    "job_id": job.job_id,
                    "status": str(shown_status(job, local_job_stopped(backend, job))),
                    "phase": job.phase,
                    "tasks": job.task_count,
                    "items": total,
                    "done": total - counters.get("items.pending", 0),
                    "failed": counters.get("items.failed_permanent", 0)
                    + counters.get("items.failed_transient", 0),
                    "executor": job.executor,
                    "backend": backend.kind,
                    "created_at": job.created_at,
                    "items_per_s": round(timeseries.rates(job, counters, time.time())[0], 3),
                }
            )
        rows.sort(key=lambda r: -float(r["created_at"]))
        return rows

    def job(self, job_id: str) -> dict[str, Any]:
        backend = self.sources.backend_of(job_id)
        status = job_status(backend, job_id)  # the tasks, RUNNING told apart
        counters = backend.state.counters(job_id, running=False)  # the series, the resources
        created = float(status["created_at"])
        now = time.time()
        if status["status"] in ("COMPLETED", "FAILED", "CANCELLED") and status["updated_at"]:
            now = min(now, float(status["updated_at"]))  # the chart ends with the job
        alerts = read_state(backend, job_id)
        return {
            "status": status,
            "series": [p.as_dict(now) for p in timeseries.read_series(counters, created)],
            "resources": job_resources(counters),
            "alerts": {
                "open": {k: v for k, v in alerts.get("rules", {}).items() if v.get("open")},
                "events": alerts.get("events", [])[-20:][::-1],
            },
            "history": read_history(backend, job_id)[-20:][::-1],
            "now": now,
        }

    def errors(self, job_id: str) -> dict[str, Any]:
        with self._errors_lock:
            cached = self._errors.get(job_id)
            if cached is not None and time.monotonic() - cached[0] < ERRORS_TTL_S:
                return cached[1]
        result = analyze(self.sources.backend_of(job_id), job_id)
        with self._errors_lock:
            self._errors[job_id] = (time.monotonic(), result)
        return result

    def metrics(self) -> str:
        per_job = []
        for backend, job in self.sources.jobs():
            try:
                status = job_status(backend, job.job_id)  # the tasks, RUNNING told apart
                counters = backend.state.counters(job.job_id, running=False)
                alerts = read_state(backend, job.job_id)
            except SlurmctlError as e:
                log.warning("dashboard: /metrics skips %s: %s", job.job_id, e)
                continue
            per_job.append(prometheus.job_samples(status, counters, alerts))
        return prometheus.render(per_job)


def static_file(name: str) -> bytes:
    return (resources.files("slurmctl.observe.dashboard") / "static" / name).read_bytes()


def page(name: str, **values: str) -> bytes:
    text = static_file(name).decode()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text.encode()


def _embed(data: Any) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _html_escape(text: str) -> str:
    return html.escape(text, quote=True)


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:",
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data, default=str).encode(), "application/json")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self.server.host_allowed(self.headers.get("Host")):
            # DNS rebinding: a page of another site, its name pointed at this address, would
            # read the jobs through the visitor's browser. Only our own names are answered.
            self._json(
                {"error": "this dashboard answers only for its own host names"},
                HTTPStatus.MISDIRECTED_REQUEST,
            )
            return
        path = unquote(urlsplit(self.path).path)
        app = self.server.app
        try:
            if path in ("/", "/index.html"):
                self._send(
                    200, page("index.html", refresh=str(REFRESH_S)), "text/html; charset=utf-8"
                )
            elif path.startswith("/job/"):
                job_id = self._job_id(path.removeprefix("/job/"))
                data = app.job(job_id)
                body = page(
                    "job.html",
                    job_id=_html_escape(job_id),
                    status=_html_escape(str(data["status"]["status"])),
                    initial=_embed(data),
                    refresh=str(REFRESH_S),
                )
                self._send(200, body, HTML)
            elif path == "/api/jobs":
                self._json(app.job_list())
            elif path.startswith("/api/jobs/") and path.endswith("/errors"):
                job_id = self._job_id(path.removeprefix("/api/jobs/").removesuffix("/errors"))
                self._json(app.errors(job_id))
            elif path.startswith("/api/jobs/"):
                self._json(app.job(self._job_id(path.removeprefix("/api/jobs/"))))
            elif path == "/metrics":
                self._send(200, app.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif path.startswith("/static/") and path.removeprefix("/static/") in STATIC:
                name = path.removeprefix("/static/")
                self._send(200, static_file(name), STATIC[name])
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            else:
                self._json({"error": f"no page {path}"}, HTTPStatus.NOT_FOUND)
        except JobNotFound as e:
            self._json({"error": str(e)}, HTTPStatus.NOT_FOUND)
        except SlurmctlError as e:
            self._json({"error": str(e)}, HTTPStatus.SERVICE_UNAVAILABLE)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:
            log.exception("dashboard: %s failed", path)
            self._json({"error": f"{type(e).__name__}: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    @staticmethod
    def _job_id(text: str) -> str:
        job_id = text.strip("/")
        if not JOB_ID_RE.match(job_id) or job_id.startswith("."):
            raise JobNotFound(f"no job {job_id!r}")
        return job_id


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("", "0.0.0.0", "::")


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], app: Dashboard, allowed_hosts: Sequence[str] = ()
    ) -> None:
        super().__init__(address, Handler)
        self.app = app
        bound = str(address[0])
        names = {*LOOPBACK_NAMES, bound, *allowed_hosts} - set(WILDCARD)
        if bound in WILDCARD:  # every interface: the machine's own names too
            names |= {socket.gethostname(), socket.getfqdn()}
        self.allowed_names = frozenset(_name(n) for n in names)
        self.port = int(self.server_address[1])

    def host_allowed(self, header: str | None) -> bool:
        """The Host header names this server: one of its names or addresses, with its port."""
        if not header:
            return False
        name, port = _split_host(header.strip())
        return _name(name) in self.allowed_names and port == self.port


def _name(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _split_host(header: str) -> tuple[str, int | None]:
    """'localhost:8765' -> ('localhost', 8765); '[::1]:80' -> ('::1', 80); no port: 80."""
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else ""
    elif header.count(":") == 1:
        name, port = header.split(":")
    else:
        name, port = header, ""
    if not port:
        return name, 80
    return (name, int(port)) if port.isdigit() else (name, None)


def make_server(
    sources: JobSources,
    host: str = "127.0.0.1",
    port: int = 8765,
    allowed_hosts: Sequence[str] = (),
) -> DashboardServer:
    return DashboardServer((host, port), Dashboard(sources), allowed_hosts)
