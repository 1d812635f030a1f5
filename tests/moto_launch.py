"""moto's server with one lock around every DynamoDB request (`python tests/moto_launch.py -p N`).

Why: moto checks a DynamoDB condition and then writes, without a lock, and its server runs each
request on its own thread. Two concurrent conditional writes on one item can therefore both pass
(two workers claiming the same task), which real DynamoDB never allows: each item write, and each
TransactWriteItems, is atomic there. Tests that run several workers against moto must not see such
double claims, so this launcher serialises DynamoDB requests (the `X-Amz-Target: DynamoDB_...`
header) and nothing else: S3 and SQS stay concurrent (a long-polling ReceiveMessage blocks its
thread for up to 20 s; under a global lock it would stall every other request).

Otherwise the same as `moto_server`: moto's own WSGI app and request handler, werkzeug's threaded
server, a real HTTP endpoint on the given host and port.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SERIALISED_TARGET = "DynamoDB_"


class SerialiseDynamoDB:
    """WSGI middleware: DynamoDB requests one at a time, the rest untouched."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith(SERIALISED_TARGET):
            return self.app(environ, start_response)  # type: ignore[return-value]
        with self.lock:
            # The body is produced under the lock too: a lazy response may still read state.
            body = self.app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)

    import os

    # Run as a script, this folder is first on sys.path: keep the tests' modules (aws/, slurm/...)
    # from shadowing anything moto imports.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    os.environ.setdefault("MOTO_PORT", str(args.port))
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    def stop(signum: int, frame: Any) -> None:
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        SerialiseDynamoDB(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
