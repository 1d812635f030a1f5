"""A loopback API that is down (503 to everything) or up (200), switched over HTTP, counting
every request it answers: the judge of the circuit breaker's request budget.

`GET /item/<id>` answers 503 while down, `{"id": ..., "v": ...}` while up; `GET /mode?set=up`
switches; `GET /count` returns `{"503": n, "200": m}`. Run in a process of its own
(`python -m tests.outage_api PORT_FILE`) so the workers it judges share nothing with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.up = False
        self.counts: dict[str, int] = {"200": 0, "503": 0}
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a worker stopped mid-request hangs up: normal


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        api = self.server
        url = urlsplit(self.path)
        if url.path == "/count":
            with api.lock:
                self._send(200, dict(api.counts))
            return
        if url.path == "/mode":
            api.up = parse_qs(url.query)["set"][0] == "up"
            self._send(200, {"up": api.up})
            return
        item = url.path.removeprefix("/item/")
        code = 200 if api.up else 503
        with api.lock:
            api.counts[str(code)] += 1
        self._send(code, {"id": item, "v": len(item)} if code == 200 else {"error": "down"})


class OutageAPI:
    """The API in a subprocess: `url`, `count()`, `set_up()`; a context manager."""

    def __init__(self, folder: Path) -> None:
        port_file = folder / "outage_api.port"
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.outage_api", str(port_file)])
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the outage API did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.load(r)

    def count(self) -> dict[str, int]:
        counts: dict[str, int] = self._get("/count")
        return counts

    def set_up(self) -> None:
        self._get("/mode?set=up")

    def __enter__(self) -> OutageAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> None:
    server = _Server()
    tmp = Path(sys.argv[1] + ".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.rename(sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
