"""`try` checks what `submit` and the workers would (the worker's own contract check and output
encoding), through the CLI: exact lines, exit codes."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import cli, make_job

MIXED = """
def process(item, ctx):
    i = int(item["id"])
    if i == 1:
        return "not a row"
    if i == 2:
        return {"tag": 97}
    if i == 3:
        return [{"tag": "x"}, 5]
    return {"tag": "t%d" % i, "v": 1 if i == 0 else 2.5}
"""
SYNC_RETURNING_A_COROUTINE = """
async def fetch(item):
    return {"id": item["id"]}

def process(item, ctx):  # not `async def`: nothing awaits what it returns
    return fetch(item)
"""
COROUTINE_LINE = (
    "validation (permanent)\tContractViolation: handler returned a coroutine (coroutine): "
    "process must be a plain function returning a dict, a list of dicts or None, not async"
)


def _lines(out: str) -> list[str]:
    return out.strip().splitlines()


def test_try_checks_returns_and_column_types(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 10, handler=MIXED)
    run = cli(tmp_path / "root", "try", str(config), "--items", "5")
    assert run.returncode == 1, run.stderr
    assert _lines(run.stdout)[:5] == [
        '0\tok\t{"tag": "t0", "v": 1}',
        "1\tvalidation (permanent)\tContractViolation: handler returned str 'not a row', "
        "expected a dict, a list of dicts or None",
        "2\tschema (permanent)\toutput field 'tag': column is string (fixed by item 0), got int 97",
        "3\tvalidation (permanent)\tContractViolation: handler returned a list holding int 5, "
        "expected dicts only",
        '4\tok\t{"tag": "t4", "v": 2.5}',  # int64 widens to float64: no conflict
    ]
    assert _lines(run.stdout)[5].startswith("2 ok, 3 failed; metrics ")
    assert "Traceback" not in run.stderr and "never awaited" not in run.stderr
    assert not (tmp_path / "root").exists(), "try writes no state"


def test_try_refuses_a_coroutine_from_a_sync_handler(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 3, handler=SYNC_RETURNING_A_COROUTINE)
    run = cli(tmp_path / "root", "try", str(config))
    assert run.returncode == 1, run.stderr
    assert _lines(run.stdout) == [f"{i}\t{COROUTINE_LINE}" for i in range(3)] + [
        '0 ok, 3 failed; metrics {"counters": {}, "timers_s": {}}'
    ]
    assert "never awaited" not in run.stderr and "Traceback" not in run.stderr


def test_try_with_a_wrong_id_field_is_an_error(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 3)
    config.write_text(config.read_text().replace("id_field: id", "id_field: user_id"))
    run = cli(tmp_path / "root", "try", str(config))
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr == (
        f"error: {config}: id_field: no usable 'user_id' field in the first 3 input lines "
        "(the first line has id, n)\n"
    )


def test_try_with_an_unset_secret_is_an_error(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 3, extra='params: {api_token: "${TRY_UNSET_TOKEN}"}\n')
    run = cli(tmp_path / "root", "try", str(config))
    assert run.returncode == 2
    assert run.stderr == (
        f"error: {config}: params.api_token: environment variable TRY_UNSET_TOKEN is not set "
        "(needed by ${TRY_UNSET_TOKEN})\n"
    )


def test_try_all_ok_exits_zero(tmp_path: Path) -> None:
    config = make_job(tmp_path / "job", 10)
    run = cli(tmp_path / "root", "try", str(config), "--items", "3")
    assert run.returncode == 0, run.stderr
    assert _lines(run.stdout)[:3] == [
        f'{i}\tok\t{{"id": "{i}", "double": {2 * i}}}' for i in range(3)
    ]
