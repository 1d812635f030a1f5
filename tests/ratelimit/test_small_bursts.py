"""Rate and burst are never exceeded, also where the API's bucket tolerates little or nothing
(issue 13, hole 14): a job that names no burst gets the default (3: two spare tokens absorb the
send jitter), and `burst: 1` is paced with slack (`gcra.paced_rate`). Real jobs of the CLI against
the strict API, judged from its request log."""

from __future__ import annotations

from pathlib import Path

from slurmctl.config import RateLimit
from tests.helpers import assert_exactly_once, cli, make_job
from tests.ratelimit.strict_api import HANDLER, OK, STRICT_429, RemoteAPI


def _run(tmp_path: Path, rate: float, burst: int | None, items: int, workers: int) -> RemoteAPI:
    api_burst = burst if burst is not None else RateLimit.model_fields["burst"].default
    with RemoteAPI(rate, api_burst, tmp_path) as api:
        limit = f"tokens_per_sec: {rate}" + (f", burst: {burst}" if burst is not None else "")
        extra = f"rate_limit: {{{limit}}}\nparams: {{base_url: '{api.url}'}}\n"
        config = make_job(
            tmp_path / "job", items, handler=HANDLER, extra=extra, batch_size=10, workers=workers
        )
        run = cli(tmp_path / "root", "submit", "--no-progress", str(config))
        assert run.returncode == 0, run.stderr
        assert_exactly_once(tmp_path / "root", "t1", items)
        log = api.log()
    assert [code for _, code in log].count(STRICT_429) == 0, "the API's bucket refused requests"
    assert [code for _, code in log].count(OK) == items
    assert api_burst == (burst or 3)
    return api


def test_the_default_burst_is_never_exceeded(tmp_path: Path) -> None:
    """No burst in the definition: the API's bucket of the default burst never refuses."""
    _run(tmp_path, rate=20.0, burst=None, items=80, workers=4)


def test_burst_1_is_sent_with_slack(tmp_path: Path) -> None:
    """An API that tolerates no burst at all: requests at least one interval apart on arrival."""
    _run(tmp_path, rate=5.0, burst=1, items=20, workers=3)
