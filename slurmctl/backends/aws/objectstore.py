"""The S3 object store: keys under a prefix, each object's sha256 in its user metadata.

`x-amz-meta-sha256` is written with every object and checked on every read (against the caller's
sha256 when given, else against the metadata). Single PUTs also carry `ChecksumSHA256`, so real S3
refuses bytes that changed on the way. Put-if-absent is a conditional PUT (`If-None-Match: *`).
Checkpoints (`jobs/<job_id>/checkpoints/...`) are tagged `slurmctl-class=checkpoint` so the
bucket's lifecycle rule can expire them (lifecycle filters take no wildcard inside a prefix).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slurmctl.backends.aws.session import Service, error_code, jitter_sleep
from slurmctl.backends.objectstore import (
    CHUNK,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    check_range,
)
from slurmctl.errors import IntegrityError, SlurmctlError, UserError

META_SHA = "sha256"
SINGLE_PUT_MAX = 64 << 20
"""Files up to this size go in one PUT (with a checksum S3 verifies); larger ones in parts."""
PUT_MAX = 5 << 30
"""S3's limit for one PUT: the most a put-if-absent can write."""
CHECKPOINT_KEY = re.compile(r"^jobs/[^/]+/checkpoints/")
CHECKPOINT_TAG = "slurmctl-class=checkpoint"
INTERMEDIATE_KEY = re.compile(r"^jobs/[^/]+/(batches|results|aggregate)/")
INTERMEDIATE_TAG = "slurmctl-class=intermediate"
"""Batches, per-task results and aggregation levels: what the job's final output and manifests
no longer need once it is COMPLETED. Lifecycle filters take no wildcard (jobs/*/batches/), so
these objects carry a tag and `init --expire-intermediates-days` expires the tag."""
MISSING = {"NoSuchKey", "404", "NotFound"}
CONFLICT_RETRIES = 5


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts):
        raise SlurmctlError(f"invalid object key {key!r}")
    return key


def _b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


class S3ObjectStore(ObjectStore):
    def __init__(self, s3: Service, bucket: str, prefix: str = "slurmctl/") -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix

    def close(self) -> None:
        self.s3.close()

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _bucket_error(self, e: Exception) -> None:
        if error_code(e) == "NoSuchBucket":
            raise UserError(
                f"S3 bucket {self.bucket!r} does not exist at {self.s3.endpoint}: "
                "create it with `slurmctl init`"
            ) from e

    def _extra(self, key: str, sha: str) -> dict[str, Any]:
        extra: dict[str, Any] = {"Metadata": {META_SHA: sha}}
        if CHECKPOINT_KEY.match(key):
            extra["Tagging"] = CHECKPOINT_TAG
        elif INTERMEDIATE_KEY.match(key):
            extra["Tagging"] = INTERMEDIATE_TAG
        return extra

    def _put(self, key: str, body: Any, sha: str, size: int, if_absent: bool) -> ObjectInfo | None:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "ChecksumSHA256": _b64(sha),
            **self._extra(key, sha),
        }
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        for attempt in range(CONFLICT_RETRIES):
            if hasattr(body, "seek"):
                body.seek(0)
            try:
                self.s3.call("put_object", Body=body, **kwargs)
                return ObjectInfo(key, size, sha)
            except self.s3.ClientError as e:
                code = error_code(e)
                if code == "PreconditionFailed":
                    return None
                if code == "ConditionalRequestConflict" and attempt + 1 < CONFLICT_RETRIES:
                    jitter_sleep(attempt, base_s=0.05)  # another conditional write in flight
                    continue
                self._bucket_error(e)
                raise
        raise AssertionError("unreachable")

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo | None:
        return self._put(key, data, hashlib.sha256(data).hexdigest(), len(data), if_absent)

    def put_file(
        self, key: str, path: Path, *, if_absent: bool = False, move: bool = False
    ) -> ObjectInfo | None:
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
        sha = h.hexdigest()
        if size <= SINGLE_PUT_MAX or if_absent:
            if size > PUT_MAX:
                raise SlurmctlError(f"{path}: {size} bytes is more than one conditional PUT takes")
            with open(path, "rb") as f:
                return self._put(key, f, sha, size, if_absent)
        # Large and unconditional: a parallel multipart upload (no server-side sha256 check on the
        # whole object, but the metadata sha256 is checked by every reader).
        # First-call probe, fast failure: a list under our prefix (HeadBucket would need
        # s3:ListBucket on the whole bucket, which `slurmctl iam-policy` does not grant).
        try:
            self.s3.call("list_objects_v2", Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except self.s3.ClientError as e:
            self._bucket_error(e)
            raise
        try:
            with self.s3.guard("UploadFile"):
                self.s3.client.upload_file(
                    str(path), self.bucket, self._key(key), ExtraArgs=self._extra(key, sha)
                )
        except self.s3.ClientError as e:
            self._bucket_error(e)
            raise
        return ObjectInfo(key, size, sha)

    def _get(self, key: str) -> dict[str, Any]:
        try:
            return self.s3.call("get_object", Bucket=self.bucket, Key=self._key(key))
        except self.s3.ClientError as e:
            if error_code(e) in MISSING:
                raise ObjectNotFound(key) from None
            self._bucket_error(e)
            raise

    def _verify(self, key: str, actual: str, given: str | None, meta: dict[str, str]) -> None:
        expected = given or meta.get(META_SHA)
        if expected is not None and actual != expected:
            raise IntegrityError(
                f"{self.url(key)}: sha256 {actual} does not match recorded {expected}"
            )

    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        # Body and metadata come from one GET: they belong to the same version of the object.
        resp = self._get(key)
        with self.s3.guard("GetObject"):
            data: bytes = resp["Body"].read()
        self._verify(key, hashlib.sha256(data).hexdigest(), sha256, resp.get("Metadata", {}))
        return data

    def get_range(self, key: str, start: int, length: int, *, sha256: str | None = None) -> bytes:
        """One ranged GET; a region starting beyond the object's end (S3 answers 416) is an
        object that ends too early, as a short answer is."""
        if length <= 0:
            return check_range(self.url(key), start, length, b"", sha256)
        try:
            resp = self.s3.call(
                "get_object",
                Bucket=self.bucket,
                Key=self._key(key),
                Range=f"bytes={start}-{start + length - 1}",
            )
        except self.s3.ClientError as e:
            code = error_code(e)
            if code in MISSING:
                raise ObjectNotFound(key) from None
            if code == "InvalidRange":
                return check_range(self.url(key), start, length, b"", sha256)
            self._bucket_error(e)
            raise
        with self.s3.guard("GetObject"):
            data: bytes = resp["Body"].read()
        return check_range(self.url(key), start, length, data, sha256)

    def get_file(self, key: str, dest: Path, *, sha256: str | None = None) -> ObjectInfo:
        resp = self._get(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, self.s3.guard("GetObject"):
                for chunk in resp["Body"].iter_chunks(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            self._verify(key, h.hexdigest(), sha256, resp.get("Metadata", {}))
            os.replace(tmp, dest)
            tmp = ""
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return ObjectInfo(key, size, h.hexdigest())

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self.s3.call("head_object", Bucket=self.bucket, Key=self._key(key))
        except self.s3.ClientError as e:
            if error_code(e) in MISSING:
                return None
            self._bucket_error(e)
            raise
        recorded = resp.get("Metadata", {}).get(META_SHA)
        if recorded is None:  # written by something else: hash the bytes, as the folder store does
            try:
                data = self._get(key)
            except ObjectNotFound:
                return None
            h = hashlib.sha256()
            with self.s3.guard("GetObject"):
                for chunk in data["Body"].iter_chunks(CHUNK):
                    h.update(chunk)
            recorded = h.hexdigest()
        return ObjectInfo(key, int(resp["ContentLength"]), recorded)

    def delete(self, key: str) -> None:
        try:
            self.s3.call("delete_object", Bucket=self.bucket, Key=self._key(key))
        except self.s3.ClientError as e:
            self._bucket_error(e)
            raise

    def delete_many(self, keys: list[str]) -> None:
        """One DeleteObjects request per 1,000 keys instead of one request per key."""
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            try:
                resp = self.s3.call(
                    "delete_objects", Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True}
                )
            except self.s3.ClientError as e:
                self._bucket_error(e)
                raise
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise SlurmctlError(
                    f"{self.url(first['Key'][len(self.prefix) :])}: cannot delete: "
                    f"{first.get('Code')}: {first.get('Message')}"
                )

    def list(self, prefix: str) -> Iterator[str]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            try:
                page = self.s3.call("list_objects_v2", **kwargs)
            except self.s3.ClientError as e:
                self._bucket_error(e)
                raise
            # S3 lists in UTF-8 byte order, which is code point order: already sorted.
            for obj in page.get("Contents", []):
                yield str(obj["Key"])[len(self.prefix) :]
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"
