"""The rate-limit tests: the moto server's session fixtures for the AWS variants."""

from __future__ import annotations

from tests.moto_server import moto_endpoint, moto_server  # noqa: F401  (session fixtures)
