from __future__ import annotations

import socket
import urllib.error
from dataclasses import dataclass
from email.message import Message

import pytest

from slurmctl.errors import PermanentError, TransientError
from slurmctl.worker.classify import classify, signature


def _http(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://x/users/1", code, "msg", Message(), None)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_http(429), "throttled"),
        (_http(503), "server"),
        (_http(500), "server"),
        (_http(404), "not_found"),
        (_http(410), "not_found"),
        (_http(400), "client"),
        (_http(408), "timeout"),
        (ConnectionRefusedError(111, "refused"), "network"),
        (ConnectionResetError(104, "reset"), "network"),
        (socket.gaierror(-2, "Name or service not known"), "network"),
        (urllib.error.URLError(ConnectionRefusedError(111, "refused")), "network"),
        (urllib.error.URLError(TimeoutError("timed out")), "timeout"),
        (TimeoutError("slow"), "timeout"),
        (PermanentError("bad item"), "validation"),
        (TransientError("try later"), "unknown"),
        (ValueError("bug or bad item"), "unknown"),
        (RuntimeError("???"), "unknown"),
    ],
)
def test_default_rules(exc: BaseException, kind: str) -> None:
    assert classify(exc).type == kind


@dataclass
class R:
    type: str
    exception: str | None = None
    message: str | None = None
    status: int | None = None


def test_job_rules_come_first_and_all_conditions_must_match() -> None:
    rules = [R("throttled", exception="RuntimeError", message="quota"), R("client", status=503)]
    assert classify(RuntimeError("quota exceeded"), rules).type == "throttled"
    assert classify(RuntimeError("other"), rules).type == "unknown"
    assert classify(_http(503), rules).type == "client"
    assert (
        classify(KeyError("x"), [R("validation", exception="builtins.LookupError")]).type
        == "validation"
    )


def test_signature_normalises_ids_and_numbers() -> None:
    a = signature("HTTPError", "user 12345 at 0xdeadbeef took 1.5s: 'abc'")
    b = signature("HTTPError", "user 99 at 0x1 took 20s: 'zzz'")
    assert a == b == "HTTPError: user N at N took Ns: '…'"
    assert classify(PermanentError("user 17 gone")).permanent
