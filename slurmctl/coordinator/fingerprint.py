"""What a job was submitted with, so a second `submit` (or a `resume`) can tell it is the same.

Stored once, when the job is created (`jobs/<id>/input.json`): the input's reference, size and
modification stamp, and the id width every task id of the job uses; the input's full sha256,
its line and batch counts are added when the submission finishes (the digest is computed on the
bytes the scan reads anyway, so it costs no second read).

Comparing is cheap for huge inputs: a different size is a change; the same size and the same
stamp (a local file's mtime) is the same input, without reading it; the same size with another
stamp (a copy, a `touch`, an S3 object) is settled by the full digest, one streaming read, and
only when the first submission recorded one. An unfinished submission has no digest yet: its
batches are checked one by one against the ones already stored instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slurmctl.backends import Backend
from slurmctl.backends.objectstore import ObjectNotFound
from slurmctl.config import JobDefinition
from slurmctl.coordinator.inputs import Part, Tap
from slurmctl.coordinator.scan import FileSource, InputSource
from slurmctl.errors import UserError
from slurmctl.layout import JobLayout


class ResubmissionRefused(UserError):
    """`submit` of an existing job_id with another definition or input."""


@dataclass
class InputFingerprint:
    ref: str
    size: int
    stamp: str | None
    width: int
    """The digits of the job's task and batch ids, fixed at the first submit."""
    sha256: str | None = None
    lines: int | None = None
    batches: int | None = None


def key(job_id: str) -> str:
    return JobLayout(job_id).root + "input.json"


def stamp(source: InputSource) -> str | None:
    """A cheap change marker: a local file's mtime in ns, an S3 object's ETag, a digest of the
    names, sizes and stamps of several files (None for a stream without one)."""
    if isinstance(source, FileSource):
        try:
            return f"mtime_ns:{source.path.stat().st_mtime_ns}"
        except OSError:
            return None
    of = getattr(source, "stamp", None)
    if of is None:
        return None
    try:
        found: str | None = of()
    except UserError:
        return None
    return found


def load(backend: Backend, job_id: str) -> InputFingerprint | None:
    try:
        doc: Any = backend.objects.get_json(key(job_id))
    except ObjectNotFound:
        return None
    return InputFingerprint(**doc) if isinstance(doc, dict) else None


def store(backend: Backend, job_id: str, fp: InputFingerprint) -> None:
    backend.objects.put_json(key(job_id), asdict(fp))


class HashingSource:
    """An input source whose raw bytes feed a sha256 as the scan reads them."""

    def __init__(self, source: InputSource) -> None:
        self.source = source
        self.name = source.name
        self.digest = hashlib.sha256()
        self.files: list[object] = list(getattr(source, "files", ()))

    def parts(self, work_dir: Path, id_field: str, tap: Tap | None = None) -> Iterator[Part]:
        """The source's parts (an `inputs.Input`), or its lines as one JSON Lines part."""
        update = self.digest.update
        both: Tap = update if tap is None else (lambda raw: (update(raw), tap(raw)))
        of = getattr(self.source, "parts", None)
        if of is not None:
            parts: Iterator[Part] = of(work_dir, id_field, both)
            return parts
        return iter([Part(self.name, "line", lines=_tapped(self.source.lines(), both))])

    def size(self) -> int:
        return self.source.size()

    def scan_size(self) -> int:
        of = getattr(self.source, "scan_size", self.source.size)
        found: int = of()
        return found

    def lines(self) -> Iterator[bytes]:
        update = self.digest.update
        raws = self.source.lines()
        try:
            for raw in raws:
                update(raw)
                yield raw
        finally:
            close = getattr(raws, "close", None)
            if close is not None:
                close()


def _tapped(lines: Iterator[bytes], tap: Tap) -> Iterator[bytes]:
    try:
        for raw in lines:
            tap(raw)
            yield raw
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()


def full_digest(source: InputSource) -> str:
    h = hashlib.sha256()
    raws = source.lines()
    try:
        for raw in raws:
            h.update(raw)
    finally:
        close = getattr(raws, "close", None)
        if close is not None:
            close()
    return h.hexdigest()


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def first_difference(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
) -> tuple[str, Any, Any] | None:
    """The first field (dotted, in the definition's order) whose value differs."""
    for name in list(old) + [n for n in new if n not in old]:
        a, b = old.get(name), new.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found = first_difference(a, b, f"{prefix}{name}.")
            if found is not None:
                return found
        elif a != b:
            return f"{prefix}{name}", a, b
    return None


def check_definition(job_id: str, stored: Mapping[str, Any], definition: JobDefinition) -> None:
    try:  # read as this slurmctl reads it: fields it added since take their defaults
        old: Mapping[str, Any] = JobDefinition.model_validate_json(
            json.dumps(stored)
        ).to_stored_dict()
    except ValueError:
        old = stored
    diff = first_difference(old, definition.to_stored_dict())
    if diff is not None:
        name, old, new = diff
        raise ResubmissionRefused(
            f"job {job_id} exists with {name} {_show(old)}, this definition says {_show(new)}; "
            "use another job_id"
        )


def check_input(
    job_id: str, stored: InputFingerprint, ref: str, source: InputSource, size: int
) -> None:
    """Raise ResubmissionRefused when the input is not the one the job was submitted with."""
    where = f"job {job_id} exists with input {stored.ref}"
    if ref != stored.ref:
        raise ResubmissionRefused(f"{where}, this definition reads {ref}; use another job_id")
    if size != stored.size:
        raise ResubmissionRefused(
            f"{where} of {stored.size} bytes, it now has {size} bytes; use another job_id"
        )
    now = stamp(source)
    if stored.sha256 is None or (now is not None and now == stored.stamp):
        return
    digest = full_digest(source)
    if digest != stored.sha256:
        raise ResubmissionRefused(
            f"{where} of sha256 {stored.sha256[:12]}…, it now has sha256 {digest[:12]}… "
            "(same size); use another job_id"
        )
