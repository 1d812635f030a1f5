from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.errors import IntegrityError


def test_put_get_head_roundtrip(backend: Backend) -> None:
    info = backend.objects.put_bytes("jobs/j1/a.json", b"hello")
    assert info is not None
    assert info.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert info.size == 5
    assert backend.objects.get_bytes("jobs/j1/a.json") == b"hello"
    head = backend.objects.head("jobs/j1/a.json")
    assert head == info
    assert backend.objects.head("jobs/j1/missing") is None


def test_put_replaces_and_if_absent_does_not(backend: Backend) -> None:
    backend.objects.put_bytes("k/x", b"one")
    backend.objects.put_bytes("k/x", b"two")
    assert backend.objects.get_bytes("k/x") == b"two"
    assert backend.objects.put_bytes("k/x", b"three", if_absent=True) is None
    assert backend.objects.get_bytes("k/x") == b"two"
    assert backend.objects.put_bytes("k/y", b"new", if_absent=True) is not None


def test_get_verifies_expected_sha(backend: Backend) -> None:
    info = backend.objects.put_bytes("k/z", b"data")
    assert info is not None
    assert backend.objects.get_bytes("k/z", sha256=info.sha256) == b"data"
    with pytest.raises(IntegrityError, match="does not match"):
        backend.objects.get_bytes("k/z", sha256="0" * 64)


def test_missing_object_raises(backend: Backend, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        backend.objects.get_bytes("nope/x")
    with pytest.raises(ObjectNotFound):
        backend.objects.get_file("nope/x", tmp_path / "dest")


def test_files_roundtrip_and_list(backend: Backend, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 3_000_000)
    info = backend.objects.put_file("jobs/j/results/t/1.parquet", src)
    assert info is not None and info.size == 3_000_000
    dest = tmp_path / "out" / "copy.bin"
    got = backend.objects.get_file("jobs/j/results/t/1.parquet", dest, sha256=info.sha256)
    assert got.sha256 == info.sha256
    assert dest.read_bytes() == src.read_bytes()
    backend.objects.put_bytes("jobs/j/a", b"1")
    backend.objects.put_bytes("jobs/k/a", b"1")
    assert list(backend.objects.list("jobs/j/")) == ["jobs/j/a", "jobs/j/results/t/1.parquet"]
    backend.objects.delete("jobs/j/a")
    backend.objects.delete("jobs/j/a")
    assert list(backend.objects.list("jobs/j/")) == ["jobs/j/results/t/1.parquet"]


def test_json_helpers(backend: Backend) -> None:
    backend.objects.put_json("m.json", {"b": 1, "a": [1, 2]})
    assert backend.objects.get_json("m.json") == {"a": [1, 2], "b": 1}


def test_delete_many_removes_listed_keys_only(backend: Backend) -> None:
    keys = [f"jobs/j1/results/task-{i:06d}/t.parquet" for i in range(1003)]
    for key in keys:
        backend.objects.put_bytes(key, b"x")
    backend.objects.put_bytes("jobs/j1/final/manifest.json", b"{}")
    # more than one S3 batch (1,000 keys); an absent key is not an error
    backend.objects.delete_many([*keys[:1001], "jobs/j1/results/absent"])
    left = list(backend.objects.list("jobs/j1/"))
    assert left == ["jobs/j1/final/manifest.json", *keys[1001:]]
    backend.objects.delete_many([])
    assert backend.objects.head("jobs/j1/final/manifest.json") is not None


def test_get_range_reads_only_the_region_and_verifies_it(backend: Backend) -> None:
    """The ranged read a packed batch is read by: exactly the region, checked against the
    region's own sha256 (the stored one covers the whole object)."""
    data = b"".join(f"line {i:04d}\n".encode() for i in range(1000))  # 10,000 bytes
    backend.objects.put_bytes("jobs/j/batches/pack.jsonl", data)
    start, length = 4990, 30
    region = data[start : start + length]
    sha = hashlib.sha256(region).hexdigest()
    got = backend.objects.get_range("jobs/j/batches/pack.jsonl", start, length, sha256=sha)
    assert got == region == b"line 0499\nline 0500\nline 0501\n"
    assert backend.objects.get_range("jobs/j/batches/pack.jsonl", 0, 10) == b"line 0000\n"
    assert backend.objects.get_range("jobs/j/batches/pack.jsonl", 9990, 10) == b"line 0999\n"
    url = backend.objects.url("jobs/j/batches/pack.jsonl")
    with pytest.raises(IntegrityError) as wrong:
        backend.objects.get_range("jobs/j/batches/pack.jsonl", start + 1, length, sha256=sha)
    actual = hashlib.sha256(data[start + 1 : start + 1 + length]).hexdigest()
    assert str(wrong.value) == (
        f"{url} bytes 4991-5020: sha256 {actual} does not match recorded {sha}"
    )
    for begin in (9995, 10_000, 20_000):  # ends too early, or starts past the end
        with pytest.raises(IntegrityError) as short:
            backend.objects.get_range("jobs/j/batches/pack.jsonl", begin, 10)
        assert str(short.value) == (
            f"{url} bytes {begin}-{begin + 9}: the object is shorter than that"
        )
    with pytest.raises(ObjectNotFound):
        backend.objects.get_range("jobs/j/batches/gone.jsonl", 0, 10)
