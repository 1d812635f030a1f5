"""An `input: s3://bucket/key` (or a prefix of such objects), read as a stream (never whole in
memory).

`S3Input` is one object of the coordinator's input (`coordinator/inputs.py`, `InputFile`): its
size and ETag from one HEAD, its bytes read in chunks, its lines split from them. `list_s3_input`
turns a URL into its objects: the object itself, or every object under the prefix (a URL ending
in `/`, or naming no object), in key order. A stream that breaks (timeout, connection reset)
carries on with a ranged GET from the byte it stopped at, on the same version of the object
(`If-Match` on the ETag the HEAD saw): an object replaced meanwhile is an error, never a mix of
two versions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from slurmctl.backends.aws.session import (
    AwsConnectionError,
    AwsTimeout,
    Service,
    error_code,
    jitter_sleep,
)
from slurmctl.backends.objectstore import CHUNK, lines_of
from slurmctl.errors import InputError

S3_URL = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>.+)$")
RESUMES = 5
"""How many times a broken stream is taken up again before the submission gives up."""


def parse_s3_url(url: str) -> tuple[str, str]:
    found = S3_URL.match(url)
    if found is None:
        raise InputError(f"{url}: expected s3://BUCKET/KEY")
    return found["bucket"], found["key"]


class S3Input:
    def __init__(self, s3: Service, url: str, *, chunk_size: int = CHUNK) -> None:
        self.s3 = s3
        self.name = url
        self.bucket, self.key = parse_s3_url(url)
        self.chunk_size = chunk_size
        self._head: tuple[int, str] | None = None

    def _error(self, e: Exception) -> InputError:
        code = error_code(e)
        if code in {"NoSuchKey", "404", "NotFound"}:
            why = "no such object"
        elif code == "NoSuchBucket":
            why = f"no such bucket {self.bucket!r}"
        elif code in {"403", "AccessDenied", "Forbidden"}:
            why = "access denied (the credentials of boto3's default chain may not read it)"
        elif code in {"412", "PreconditionFailed"}:
            why = "the object was replaced while it was being read; submit again"
        else:
            why = f"{code or type(e).__name__}: {' '.join(str(e).split())[:200]}"
        return InputError(f"{self.name}: cannot read input: {why}")

    def _stat(self) -> tuple[int, str]:
        if self._head is None:
            try:
                resp = self.s3.call("head_object", Bucket=self.bucket, Key=self.key)
            except self.s3.ClientError as e:
                raise self._error(e) from None
            self._head = (int(resp["ContentLength"]), str(resp.get("ETag", "")))
        return self._head

    def size(self) -> int:
        return self._stat()[0]

    def stamp(self) -> str | None:
        """The object's ETag: a new upload (of other bytes) always has another one."""
        etag = self._stat()[1]
        return f"etag:{etag}" if etag else None

    def _open(self, offset: int) -> Any:
        size, etag = self._stat()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if etag:
            kwargs["IfMatch"] = etag
        if offset:
            kwargs["Range"] = f"bytes={offset}-{size - 1}"
        try:
            return self.s3.call("get_object", **kwargs)["Body"]
        except self.s3.ClientError as e:
            raise self._error(e) from None

    def chunks(self) -> Iterator[bytes]:
        size = self.size()
        offset = 0
        resumes = 0
        while offset < size:
            body = self._open(offset)
            try:
                parts = body.iter_chunks(self.chunk_size)
                while True:
                    with self.s3.guard("GetObject"):
                        chunk = next(parts, None)
                    if chunk is None:
                        break
                    offset += len(chunk)
                    yield chunk
            except (AwsTimeout, AwsConnectionError):
                if resumes >= RESUMES:
                    raise
                jitter_sleep(resumes, base_s=0.2, cap_s=5.0)
                resumes += 1
                continue
            finally:
                body.close()
            if offset < size:  # the body ended early without an error: ask for the rest
                if resumes >= RESUMES:
                    raise InputError(f"{self.name}: cannot read input: the stream ended early")
                resumes += 1

    def lines(self) -> Iterator[bytes]:
        return lines_of(self.chunks())


def _hidden(key: str, prefix: str) -> bool:
    """A folder marker, or a file a tool leaves beside its data (`_SUCCESS`, `.crc`)."""
    rest = key[len(prefix) :]
    return key.endswith("/") or any(p.startswith(("_", ".")) for p in rest.split("/"))


def list_s3_input(s3: Service, url: str) -> list[S3Input]:
    """The objects of an input URL: the object it names, else (or when it ends in `/`) every
    object under it as a prefix, in key order, but `_`- and `.`-named ones."""
    bucket, key = parse_s3_url(url)
    if not key.endswith("/"):
        single = S3Input(s3, url)
        try:
            single.size()
            return [single]
        except InputError as e:
            if "no such object" not in str(e):
                raise
            key += "/"
    found: list[S3Input] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        try:
            page = s3.call("list_objects_v2", **kwargs)
        except s3.ClientError as e:
            raise S3Input(s3, url)._error(e) from None
        for obj in page.get("Contents", []):
            name = str(obj["Key"])
            if not _hidden(name, key):
                one = S3Input(s3, f"s3://{bucket}/{name}")
                one._head = (int(obj["Size"]), str(obj.get("ETag", "")))  # no HEAD each
                found.append(one)
        if not page.get("IsTruncated"):
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    if not found:
        raise InputError(f"{url}: cannot read input: no such object, and no object under {key!r}")
    return found
