"""boto3, imported lazily, and one guarded client per AWS service.

Every call goes through `Service.call` (or `Service.guard`), which turns botocore's transport errors
into ours: an endpoint that cannot be reached on a service's FIRST call is `BackendUnavailable` (a
one-line user error naming the endpoint); later, timeouts are `AwsTimeout` (a `TimeoutError`) and
lost connections `AwsConnectionError` (a `ConnectionError`), so error classification sees them as
`timeout` / `network`. Service errors (`ClientError`) pass through for the caller to read its code.

Credentials come only from boto3's default chain. The endpoint is the `endpoint_url` argument, else
what botocore reads itself: `AWS_ENDPOINT_URL_<SERVICE>`, then `AWS_ENDPOINT_URL`, then the config
file, then AWS's own endpoint for the region.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from slurmctl.errors import BackendUnavailable, SlurmctlError, UserError

INSTALL_HINT = "the aws backend needs boto3: pip install 'slurmctl[aws]'"


class AwsTimeout(SlurmctlError, TimeoutError):
    """An AWS call timed out (the request may or may not have been applied)."""


class AwsConnectionError(SlurmctlError, ConnectionError):
    """An AWS endpoint that answered before stopped answering (connection refused, reset...)."""


def boto3_module() -> Any:
    try:
        import boto3
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return boto3


def error_code(exc: BaseException) -> str:
    """The service error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def jitter_sleep(attempt: int, base_s: float = 0.01, cap_s: float = 1.0) -> None:
    """Full-jitter exponential backoff."""
    time.sleep(random.uniform(0, min(cap_s, base_s * (2**attempt))))


def _reason(exc: BaseException) -> str:
    """A short, one-line reason: 'Connection refused', 'connect timeout after 5s', ..."""
    text = str(getattr(exc, "kwargs", {}).get("error", "") or exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    return " ".join(text.split())[:200] or type(exc).__name__


@dataclass(frozen=True)
class AwsSettings:
    region: str | None = None
    endpoint_url: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 10
    max_pool_connections: int = 32


class Service:
    """One service's client (adaptive retries) and a probe client (few retries) for first calls.

    The probe makes a wrong endpoint fail in about a second instead of after ten backed-off
    attempts; once a call has gone through, the patient client takes over.
    """

    PROBE_ATTEMPTS = 2

    def __init__(self, name: str, client: Any, make_probe: Callable[[], Any]) -> None:
        self.name = name
        self.client = client
        self._make_probe = make_probe
        self._probe: Any = None
        self._probe_lock = threading.Lock()  # clients are thread-safe, making them is not
        self.reached = False
        self.endpoint = str(client.meta.endpoint_url)
        boto3_module()
        import botocore.exceptions as exc

        self.ClientError: type[Exception] = exc.ClientError
        self._connect = (exc.EndpointConnectionError, exc.ConnectTimeoutError)
        self._timeout = (exc.ReadTimeoutError,)
        self._lost = (
            exc.ConnectionError,
            exc.HTTPClientError,
            exc.ResponseStreamingError,
            exc.IncompleteReadError,
        )
        self._no_creds = (exc.NoCredentialsError, exc.PartialCredentialsError)

    @property
    def current(self) -> Any:
        if self.reached:
            return self.client
        with self._probe_lock:
            if self._probe is None:
                self._probe = self._make_probe()
            return self._probe

    @contextmanager
    def guard(self, op: str) -> Iterator[None]:
        """Map transport errors of whatever runs inside (a call, a stream, a transfer)."""
        try:
            yield
        except self.ClientError:
            self.reached = True  # the service answered, if only with an error
            raise
        except self._no_creds as e:
            raise UserError(
                f"no AWS credentials for {self.name} (boto3's default chain: environment, "
                f"~/.aws, instance or container role): {_reason(e)}"
            ) from e
        except self._connect as e:
            if not self.reached:
                raise BackendUnavailable(
                    f"cannot reach {self.name} at {self.endpoint}: {_reason(e)}"
                ) from e
            raise AwsConnectionError(f"{self.name} {op} at {self.endpoint}: {_reason(e)}") from e
        except self._timeout as e:
            raise AwsTimeout(f"{self.name} {op} at {self.endpoint}: {_reason(e)}") from e
        except self._lost as e:
            raise AwsConnectionError(f"{self.name} {op} at {self.endpoint}: {_reason(e)}") from e
        self.reached = True

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        with self.guard(op):
            out: dict[str, Any] = getattr(self.current, op)(**kwargs)
        return out

    def close(self) -> None:
        for client in (self.client, self._probe):
            close = getattr(client, "close", None)
            if client is not None and close is not None:
                close()


class AwsSession:
    """A boto3 session and the settings every client of a backend shares."""

    def __init__(self, settings: AwsSettings) -> None:
        boto3 = boto3_module()
        self.settings = settings
        self.session = boto3.session.Session(region_name=settings.region)
        region = settings.region or self.session.region_name
        if not region:
            raise UserError(
                "no AWS region: set aws.region in the job definition, or AWS_REGION in the "
                "environment"
            )
        self.region: str = region

    def _config(self, attempts: int, mode: str, read_timeout: float) -> Any:
        from botocore.config import Config

        s = self.settings
        return Config(
            region_name=self.region,
            retries={"mode": mode, "max_attempts": attempts},
            connect_timeout=s.connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=s.max_pool_connections,
        )

    def service(self, name: str, *, extra_read_s: float = 0.0) -> Service:
        """A guarded client; extra_read_s lengthens the read timeout (SQS long polls)."""
        s = self.settings
        read = s.read_timeout + extra_read_s
        kwargs: dict[str, Any] = {}
        if s.endpoint_url:
            kwargs["endpoint_url"] = s.endpoint_url
        client = self.session.client(
            name, config=self._config(s.max_attempts, "adaptive", read), **kwargs
        )
        probe_attempts = min(s.max_attempts, Service.PROBE_ATTEMPTS)

        def probe() -> Any:
            config = self._config(probe_attempts, "standard", read)
            return self.session.client(name, config=config, **kwargs)

        return Service(name, client, probe)
