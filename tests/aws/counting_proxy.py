"""An HTTP proxy in front of the moto server that records the SQS calls of one test's job.

The session's moto server is shared by every test, so a test that counts requests points its
job's `endpoint_url` at this proxy instead: every request is forwarded to moto as it came (a
real HTTP hop, threaded, so long polls do not hold up the others), and each SQS JSON request
(`X-Amz-Target: AmazonSQS.<Operation>`) is recorded with its body and moto's answer.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class SqsCall:
    operation: str
    request: dict[str, Any]
    response: dict[str, Any]


@dataclass
class Recorded:
    url: str
    calls: list[SqsCall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sqs(self, operation: str) -> list[SqsCall]:
        with self.lock:
            return [c for c in self.calls if c.operation == operation]


@contextmanager
def counting_proxy(upstream: str) -> Iterator[Recorded]:
    target = urlsplit(upstream)
    recorded = Recorded("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(size) if size else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn = http.client.HTTPConnection(target.netloc, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            finally:
                conn.close()
            self._record(self.headers.get("X-Amz-Target", ""), body, data)
            self.send_response(resp.status)
            for k, v in out:
                self.send_header(k, v)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self, amz_target: str, body: bytes, data: bytes) -> None:
            if not amz_target.startswith("AmazonSQS."):
                return
            try:
                req, resp = json.loads(body or b"{}"), json.loads(data or b"{}")
            except ValueError:
                req, resp = {}, {}
            with recorded.lock:
                recorded.calls.append(SqsCall(amz_target.split(".", 1)[1], req, resp))

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    recorded.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorded
    finally:
        server.shutdown()
        server.server_close()
