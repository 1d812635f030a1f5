"""Failure manifests: the items whose story ended in a phase, one JSON record per line.

A phase's manifest is `failures/<phase>.jsonl` (one record per item: item_id, index, task_id,
batch_id, phase, error_type, permanent, message, signature, attempt, reason, and the input
`item` of a permanent failure), then `failures/<phase>.summary.json`, written after it, naming
the records' key, their sha256 and the counts. The summary is the commit point: a reader reads
it first and verifies the records against its sha256, and a rewrite (an operator's retry taking
entries out) writes the records under a new key before the summary moves to it, so a crash at
any point leaves the old manifest or the new one, never a half of either.

Every reader streams: the records are read line by line from a local file (read in place on the
embedded backend, downloaded and verified from S3), so millions of failures never sit in memory
at once. A job whose manifests were written in the old form (one JSON document per phase,
`failures/<phase>.json` with `{"items": [...]}`) still reads, as one document; the next rewrite
stores it in the new form.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from slurmctl import fastjson
from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.errors import IntegrityError
from slurmctl.ids import phase_name, phase_number
from slurmctl.layout import JobLayout

FORMAT = "jsonl"


@dataclass(frozen=True)
class FailureManifest:
    job_id: str
    phase: str
    key: str
    """The records' key (the legacy document's, for a manifest of the old form)."""
    sha256: str | None
    count: int
    retried: int
    """Items of the phase that went on to a later phase (the planner's or an operator's)."""
    legacy: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "phase": self.phase,
            "format": FORMAT,
            "key": self.key,
            "sha256": self.sha256,
            "count": self.count,
            "retried": self.retried,
        }


class FailureWriter:
    """The records of one manifest, streamed to a local file, one line per item."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.f: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by close()

    def add(self, entry: dict[str, Any], reason: str | None = None) -> None:
        if reason is not None:
            entry = {**entry, "reason": reason}
        self.f.write(json.dumps(entry, sort_keys=True).encode() + b"\n")
        self.count += 1

    def close(self) -> None:
        self.f.close()


def store(
    backend: Backend, job_id: str, phase: str, path: Path, count: int, retried: int
) -> FailureManifest:
    """Put the records of `path` as the phase's manifest, then its summary. The first write of
    a phase goes under `failures/<phase>.jsonl`: written again after a crash, the same bytes."""
    layout = JobLayout(job_id)
    current = read(backend, job_id, phase)
    key = layout.failures(phase)
    if current is not None and current.key == key and not current.legacy:
        key = layout.failures(phase, secrets.token_hex(4))  # a rewrite: never over the live one
    info = backend.objects.put_file(key, path)
    assert info is not None
    manifest = FailureManifest(job_id, phase, key, info.sha256, count, retried)
    backend.objects.put_json(layout.failures_summary(phase), manifest.summary())
    if current is not None and current.key != key:
        backend.objects.delete(current.key)  # the old records (or the legacy document)
    return manifest


def read(backend: Backend, job_id: str, phase: str) -> FailureManifest | None:
    """The phase's manifest (None when the phase wrote none, e.g. it has not ended)."""
    layout = JobLayout(job_id)
    try:
        doc: Any = backend.objects.get_json(layout.failures_summary(phase))
    except ObjectNotFound:
        return _legacy(backend, job_id, phase)
    except ValueError:
        raise IntegrityError(f"{layout.failures_summary(phase)}: not a JSON document") from None
    return FailureManifest(
        job_id,
        phase,
        str(doc["key"]),
        doc.get("sha256"),
        int(doc["count"]),
        int(doc.get("retried", 0)),
    )


def _legacy(backend: Backend, job_id: str, phase: str) -> FailureManifest | None:
    key = JobLayout(job_id).legacy_failures(phase)
    info = backend.objects.head(key)
    if info is None:
        return None
    doc = _legacy_doc(backend, key)
    count = int(doc.get("count", len(doc["items"])))
    return FailureManifest(
        job_id, phase, key, info.sha256, count, int(doc.get("retried", 0)), legacy=True
    )


def _legacy_doc(backend: Backend, key: str) -> dict[str, Any]:
    try:
        doc: Any = backend.objects.get_json(key)
    except ValueError:
        raise IntegrityError(f"{backend.objects.url(key)}: not a failure manifest") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise IntegrityError(
            f"{backend.objects.url(key)}: a failure manifest of the old form must be a JSON "
            'object with an "items" list'
        )
    return doc


def entries(backend: Backend, manifest: FailureManifest) -> Iterator[dict[str, Any]]:
    """The manifest's records, one at a time, verified against the summary's sha256."""
    if manifest.legacy:
        yield from _legacy_doc(backend, manifest.key)["items"]
        return
    with tempfile.TemporaryDirectory(prefix="slurmctl-failures-") as tmp:
        path = backend.objects.verify(manifest.key, manifest.sha256)
        if path is None:  # remote: fetched, verified while it is written
            path = Path(tmp) / "failures.jsonl"
            backend.objects.get_file(manifest.key, path, sha256=manifest.sha256)
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield fastjson.loads(line)
                    except ValueError:
                        raise IntegrityError(
                            f"{backend.objects.url(manifest.key)}: line {n} is not JSON"
                        ) from None


def manifests(backend: Backend, job_id: str, last_phase: str) -> Iterator[FailureManifest]:
    """The manifests of every phase up to last_phase, in phase order."""
    for number in range(phase_number(last_phase) + 1):
        found = read(backend, job_id, phase_name(number))
        if found is not None:
            yield found


def all_entries(
    backend: Backend, job_id: str, last_phase: str
) -> Iterator[tuple[FailureManifest, dict[str, Any]]]:
    for manifest in manifests(backend, job_id, last_phase):
        for entry in entries(backend, manifest):
            yield manifest, entry


def remove(
    backend: Backend, manifest: FailureManifest, drop: Callable[[dict[str, Any]], bool]
) -> int:
    """Rewrite the manifest without the records `drop` picks (they moved to a later phase);
    the removed ones count as retried. Returns how many; nothing is written when none."""
    with tempfile.TemporaryDirectory(prefix="slurmctl-failures-") as tmp:
        writer = FailureWriter(Path(tmp) / "kept.jsonl")
        removed = 0
        try:
            for entry in entries(backend, manifest):
                if drop(entry):
                    removed += 1
                else:
                    writer.add(entry)
        finally:
            writer.close()
        if removed or manifest.legacy:  # the old form is stored in the new one on any rewrite
            store(
                backend,
                manifest.job_id,
                manifest.phase,
                writer.path,
                writer.count,
                manifest.retried + removed,
            )
    return removed
