"""Small units: ids, the input scanner, the checkpoint, handler metrics, handler loading."""

from __future__ import annotations

import io
import json
import pickle
import sqlite3
from pathlib import Path

import pytest

from slurmctl import fastjson
from slurmctl.coordinator.scan import InputScanner
from slurmctl.errors import HandlerImportError, UserError
from slurmctl.ids import batch_id, id_width, task_id, validate_job_id
from slurmctl.worker.checkpoint import Checkpoint, CheckpointRefused, Stamp, to_table
from slurmctl.worker.classify import PERMANENT
from slurmctl.worker.context import Metrics
from slurmctl.worker.handler import load_handler


def test_ids_are_phase_qualified_and_wide_enough() -> None:
    assert task_id("initial", 42) == "task-000042"
    assert batch_id("retry_1", 3) == "r1-batch-000003"
    assert id_width(1_000_000) == 6 and id_width(1_000_001) == 7
    assert task_id("initial", 5, id_width(20_000_000)) == "task-00000005"


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 65, "a b", "é"])
def test_job_id_validation_refuses_escapes(bad: str) -> None:
    with pytest.raises(UserError, match="expected letters, digits"):
        validate_job_id(bad)
    assert validate_job_id("backfill-2025.04_12") == "backfill-2025.04_12"


@pytest.mark.parametrize("child_index", [False, True], ids=["in-process", "child-process"])
def test_scanner_streams_and_quarantines(tmp_path: Path, child_index: bool) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b'{"id": 1}\n\n{"id": "1"}\n{"id": 2, "x": [1]}\n{bad\n"str"\n{"id": null}\n\xff\xfe\n'
        + b"".join(b'{"id": %d}\n' % i for i in range(3, 5003))
    )
    quarantine = io.BytesIO()
    scanner = InputScanner(src, "id", tmp_path / "work", quarantine, child_index=child_index)
    items = list(scanner.items())
    assert len(items) == 2 + 5000 and items[0] == b'{"id": 1}'
    assert scanner.stats.lines == 7 + 5000 and scanner.stats.quarantined == 5
    got = [json.loads(x) for x in quarantine.getvalue().splitlines()]
    assert [(q["line"], q["reason"].split(":")[0]) for q in got] == [
        (3, "duplicate id"),  # in line order, although found when its chunk is checked
        (5, "invalid JSON"),
        (6, "not a JSON object"),
        (7, "missing id"),
        (8, "invalid JSON"),
    ]
    assert "first seen on line 1" in got[0]["reason"]
    assert not (tmp_path / "work" / "ids.sqlite").exists()


@pytest.mark.parametrize("child_index", [False, True], ids=["in-process", "child-process"])
def test_scanner_finds_duplicates_across_and_within_chunks(
    tmp_path: Path, child_index: bool
) -> None:
    """Ids repeated 3 chunks later (the index answers behind the scan) and inside one chunk."""
    ids = [str(i) for i in range(10_000)] + ["42", "9999", "x", "x", "7"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "n": n}) + "\n" for n, i in enumerate(ids)))
    quarantine = io.BytesIO()
    scanner = InputScanner(src, "id", tmp_path / "work", quarantine, child_index=child_index)
    kept = [json.loads(x)["n"] for x in scanner.items()]
    assert kept == [*range(10_000), 10_002]  # the first of each id, in input order
    got = [json.loads(x) for x in quarantine.getvalue().splitlines()]
    assert [(q["line"], q["reason"]) for q in got] == [
        (10_001, "duplicate id: '42' first seen on line 43"),
        (10_002, "duplicate id: '9999' first seen on line 10000"),
        (10_004, "duplicate id: 'x' first seen on line 10003"),
        (10_005, "duplicate id: '7' first seen on line 8"),
    ]
    assert scanner.stats.items == 10_001 and scanner.stats.quarantined == 4


def test_checkpoint_keeps_rows_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c" / "checkpoint.sqlite"
    stamp = Stamp("1.5", "ab" * 32, "tok1")
    ckpt = Checkpoint(path, stamp)
    big = 2**63 - 1
    ckpt.write(
        [
            (0, "a", True, [{"id": "a", "v": big, "f": 0.1}], None, None, None),
            (2, "c", False, None, "server", "m", "s"),
        ]
    )
    ckpt.close()
    again = Checkpoint(path, stamp)
    assert again.done() == {0, 2}
    assert list(again.rows()) == [
        (0, "a", True, [{"id": "a", "v": big, "f": 0.1}], None, None, None),
        (2, "c", False, None, "server", "m", "s"),
    ]
    snap = again.snapshot(tmp_path / "snap.sqlite")
    assert (
        oct(snap.stat().st_mode & 0o777) == "0o600" and oct(path.stat().st_mode & 0o777) == "0o600"
    )
    with pytest.raises(CheckpointRefused, match="not Stamp"):
        Checkpoint(snap, Stamp("1.5", "ab" * 32, "tok2"))  # another attempt's own file
    mine = Checkpoint(tmp_path / "d" / "checkpoint.sqlite", Stamp("1.5", "ab" * 32, "tok2"))
    assert mine.adopt(snap) and mine.done() == {0, 2}  # taken over explicitly: allowed
    other_job = Checkpoint(tmp_path / "e" / "checkpoint.sqlite", Stamp("2.5", "ab" * 32, "t3"))
    assert not other_job.adopt(snap) and other_job.done() == set()
    garbage = tmp_path / "g" / "checkpoint.sqlite"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(CheckpointRefused, match="not a checkpoint"):
        Checkpoint(garbage, stamp)
    assert not Checkpoint(tmp_path / "h" / "c.sqlite", stamp).adopt(garbage)
    other_batch = Checkpoint(tmp_path / "f" / "checkpoint.sqlite", Stamp("1.5", "cd" * 32, "t3"))
    assert not other_batch.adopt(snap) and other_batch.done() == set()


def test_checkpoint_refuses_a_pickle_and_fails_unstorable_values_as_schema(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE chunks (first INTEGER PRIMARY KEY, rows BLOB)")
    conn.execute("INSERT INTO chunks VALUES (0, ?)", (pickle.dumps([(0, "a", True, None)]),))
    conn.commit()
    conn.close()
    ckpt = Checkpoint(tmp_path / "new" / "checkpoint.sqlite", Stamp("1", "ab", "t"))
    assert not ckpt.adopt(old)  # an unstamped (pickled) checkpoint is never read
    recorded = ckpt.write(
        [
            (0, "a", True, [{"id": "a", "v": 1}], None, None, None),
            (1, "b", True, [{"id": "b", "v": object()}], None, None, None),
            (2, "c", True, [{"id": "c", "v": "text"}], None, None, None),
            (3, "d", True, [{"id": "d", "v": 2**64}], None, None, None),
        ]
    )
    # alone, b and d fit no column; c fits one, a string column beside a's integers: kept here,
    # the output decides for the whole task (the first item of a column sets its type)
    assert [(r[1], r[2], r[4]) for r in recorded] == [
        ("a", True, None),
        ("b", False, "schema"),
        ("c", True, None),
        ("d", False, "schema"),
    ]
    assert list(ckpt.rows())[2] == (2, "c", True, [{"id": "c", "v": "text"}], None, None, None)
    table, outcomes = to_table(list(ckpt.rows()))
    assert table.to_pylist() == [{"id": "a", "v": 1}]
    assert [(r[1], r[4]) for r in outcomes if not r[2]] == [
        ("b", "schema"),
        ("c", "schema"),
        ("d", "schema"),
    ]
    assert "schema" in PERMANENT


def test_metrics_counters_and_timers() -> None:
    m = Metrics()
    m.incr("api")
    m.incr("api", 2)
    with m.timer("call"):
        pass
    snap = m.snapshot()
    assert snap["counters"] == {"api": 3, "call.calls": 1}
    assert snap["timers_s"]["call"] >= 0


def test_handler_loading_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "h_ok.py").write_text("def process(item, ctx):\n    return item\n")
    (tmp_path / "h_boom.py").write_text("import os\nraise RuntimeError('no config')\n")
    (tmp_path / "h_dep.py").write_text("import not_installed_pkg\n")
    assert load_handler("h_ok:process", tmp_path).setup is None
    with pytest.raises(HandlerImportError, match="has no function 'proc'"):
        load_handler("h_ok:proc", tmp_path)
    with pytest.raises(HandlerImportError, match=r"cannot import handler module 'h_missing'"):
        load_handler("h_missing:process", tmp_path)
    with pytest.raises(HandlerImportError, match=r"h_boom.py:2: RuntimeError: no config"):
        load_handler("h_boom:process", tmp_path)
    with pytest.raises(HandlerImportError, match=r"No module named 'not_installed_pkg'"):
        load_handler("h_dep:process", tmp_path)


@pytest.mark.parametrize(
    "value", [2**63 - 1, 2**63, 2**64 - 1, 2**64 + 1, -(2**63) - 1, 10**30, -(10**40)]
)
def test_fastjson_keeps_integers_beyond_64_bits_exact(value: int) -> None:
    line = json.dumps({"id": value, "x": [value, 1.5]})
    for data in (line, line.encode()):
        got = fastjson.loads(data)
        assert got == {"id": value, "x": [value, 1.5]} and type(got["id"]) is int


def test_fastjson_long_digit_strings_and_floats_decode_as_before() -> None:
    assert fastjson.loads(b'{"phone": "12345678901234567890", "f": 0.12345678901234567891}') == {
        "phone": "12345678901234567890",
        "f": 0.12345678901234567891,
    }
    assert fastjson.loads(b'{"a": 1, "s": "\\ud800"}') == {"a": 1, "s": "\ud800"}


def test_scanner_keeps_integer_ids_beyond_64_bits_distinct(tmp_path: Path) -> None:
    big = [2**64 + k for k in range(1, 6)]
    src = tmp_path / "in.jsonl"
    lines = [{"id": b} for b in big] + [{"id": str(big[2])}, {"id": -(2**63) - 1}, {"id": 1e20}]
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    quarantine = io.BytesIO()
    scanner = InputScanner(src, "id", tmp_path / "work", quarantine, child_index=False)
    kept = [json.loads(x)["id"] for x in scanner.items()]
    assert kept == [*big, -(2**63) - 1]
    got = [json.loads(x) for x in quarantine.getvalue().splitlines()]
    assert [(q["line"], q["reason"]) for q in got] == [
        (6, f"duplicate id: '{big[2]}' first seen on line 3"),
        (8, "bad id: 'id' is a float (1e+20); ids are strings or integers"),
    ]


def test_history_lines_appended_by_threads_of_one_process_are_all_kept(tmp_path: Path) -> None:
    """A streaming submit records `submit` from one thread while its executor records `workers`
    from another: each append is a read-modify-write of one object, and none may be lost."""
    import threading

    from slurmctl.backends import open_local
    from slurmctl.jobs import append_history
    from slurmctl.layout import JobLayout

    backend = open_local(tmp_path / "root")
    try:
        start = threading.Barrier(4)

        def writer(n: int) -> None:
            start.wait()
            for i in range(10):
                append_history(backend, "t1", "workers", writer=n, i=i)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lines = backend.objects.get_bytes(JobLayout("t1").history).decode().splitlines()
    finally:
        backend.close()
    seen = sorted((e["writer"], e["i"]) for e in map(json.loads, lines))
    assert seen == [(n, i) for n in range(4) for i in range(10)]
