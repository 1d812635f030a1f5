"""The SQS queue service: one standard queue per job, a hint of which task ids to try.

Names derive from the job id: `slurmctl-<job_id, dots as '-'>-<8 hex of sha256(job_id)>`, at most
80 characters (the job id part is cut to fit; the hash keeps cut names apart). Retention is 14 days
(SQS's maximum). Sends and deletes go in batches of 10; receives long-poll (at most 20 s a call).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from slurmctl.backends.aws.session import Service, error_code, jitter_sleep
from slurmctl.backends.queue import Message, QueueService
from slurmctl.errors import SlurmctlError

log = logging.getLogger(__name__)

NAME_MAX = 80
RETENTION_S = 14 * 24 * 3600
BATCH = 10
LONG_POLL_MAX_S = 20
VISIBILITY_MAX_S = 12 * 3600
DELAY_MAX_S = 900
NO_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
DELETED_RECENTLY = {"AWS.SimpleQueueService.QueueDeletedRecently", "QueueDeletedRecently"}
RECREATE_WAIT_S = 65
"""SQS refuses to re-create a queue name for 60 s after deleting it."""
RESEND_ATTEMPTS = 5
VALID_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def queue_name(job_id: str, prefix: str = "slurmctl-") -> str:
    if not VALID_PREFIX.match(prefix):
        raise SlurmctlError(f"invalid SQS queue name prefix {prefix!r}")
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
    root = re.sub(r"[^A-Za-z0-9_-]", "-", job_id)
    room = NAME_MAX - len(prefix) - 1 - len(digest)
    return f"{prefix}{root[:room]}-{digest}"


class SQSQueue(QueueService):
    def __init__(
        self, sqs: Service, poll: Service | None = None, prefix: str = "slurmctl-"
    ) -> None:
        """poll: the client for long polls (its read timeout outlasts a 20 s poll); sqs for the
        rest, so a dead endpoint shows within the normal timeout."""
        self.sqs = sqs
        self.poll = poll or sqs
        self.prefix = prefix
        self._urls: dict[str, str] = {}

    def close(self) -> None:
        self.sqs.close()
        if self.poll is not self.sqs:
            self.poll.close()

    def name(self, job_id: str) -> str:
        return queue_name(job_id, self.prefix)

    def _url(self, job_id: str) -> str | None:
        url = self._urls.get(job_id)
        if url is None:
            try:
                url = str(self.sqs.call("get_queue_url", QueueName=self.name(job_id))["QueueUrl"])
            except self.sqs.ClientError as e:
                if error_code(e) in NO_QUEUE:
                    return None
                raise
            self._urls[job_id] = url
        return url

    def _require(self, job_id: str) -> str:
        url = self._url(job_id)
        if url is None:
            raise SlurmctlError(f"no queue for job {job_id} (SQS queue {self.name(job_id)})")
        return url

    def _gone(self, job_id: str, e: Exception) -> SlurmctlError:
        self._urls.pop(job_id, None)
        return SlurmctlError(f"no queue for job {job_id} (SQS queue {self.name(job_id)}): {e}")

    def create_queue(self, job_id: str) -> None:
        name = self.name(job_id)
        attrs = {"MessageRetentionPeriod": str(RETENTION_S)}
        deadline = time.monotonic() + RECREATE_WAIT_S
        while True:
            try:
                url = self.sqs.call("create_queue", QueueName=name, Attributes=attrs)["QueueUrl"]
                break
            except self.sqs.ClientError as e:
                code = error_code(e)
                if code == "QueueAlreadyExists":  # exists with other attributes: use it as it is
                    url = self.sqs.call("get_queue_url", QueueName=name)["QueueUrl"]
                    break
                if code in DELETED_RECENTLY and time.monotonic() < deadline:
                    log.warning("SQS queue %s was deleted less than 60 s ago: waiting", name)
                    time.sleep(5)
                    continue
                raise
        self._urls[job_id] = str(url)

    def delete_queue(self, job_id: str) -> None:
        url = self._url(job_id)
        self._urls.pop(job_id, None)
        if url is None:
            return
        try:
            self.sqs.call("delete_queue", QueueUrl=url)
        except self.sqs.ClientError as e:
            if error_code(e) not in NO_QUEUE:
                raise

    def send(self, job_id: str, bodies: Sequence[str], *, delay_s: int = 0) -> None:
        if not bodies:
            return
        url = self._require(job_id)
        delay = max(0, min(int(delay_s), DELAY_MAX_S))
        for start in range(0, len(bodies), BATCH):
            entries = [
                {"Id": str(i), "MessageBody": body, "DelaySeconds": delay}
                for i, body in enumerate(bodies[start : start + BATCH])
            ]
            self._send_batch(job_id, url, entries)

    def _send_batch(self, job_id: str, url: str, entries: list[dict[str, Any]]) -> None:
        for attempt in range(RESEND_ATTEMPTS):
            try:
                resp = self.sqs.call("send_message_batch", QueueUrl=url, Entries=entries)
            except self.sqs.ClientError as e:
                if error_code(e) in NO_QUEUE:
                    raise self._gone(job_id, e) from e
                raise
            failed = resp.get("Failed", [])
            if not failed:
                return
            fatal = [f for f in failed if f.get("SenderFault")]
            if fatal:
                f = fatal[0]
                raise SlurmctlError(
                    f"SQS refused {len(fatal)} message(s) for job {job_id}: "
                    f"{f.get('Code')}: {f.get('Message')}"
                )
            again = {f["Id"] for f in failed}
            entries = [e for e in entries if e["Id"] in again]
            jitter_sleep(attempt, base_s=0.05)
        raise SlurmctlError(f"SQS kept failing to take {len(entries)} message(s) for job {job_id}")

    def receive(
        self, job_id: str, *, max_messages: int = 1, visibility_s: int = 30, wait_s: float = 0.0
    ) -> list[Message]:
        deadline = time.monotonic() + max(0.0, wait_s)
        url = self._url(job_id)
        if url is None:  # as the embedded queue: nothing to receive (after waiting, as asked)
            time.sleep(max(0.0, min(wait_s, LONG_POLL_MAX_S)))
            return []
        while True:
            remaining = deadline - time.monotonic()
            wait = min(LONG_POLL_MAX_S, math.ceil(remaining)) if remaining >= 0.5 else 0
            try:
                resp = self.poll.call(
                    "receive_message",
                    QueueUrl=url,
                    MaxNumberOfMessages=max(1, min(int(max_messages), BATCH)),
                    VisibilityTimeout=max(0, min(int(visibility_s), VISIBILITY_MAX_S)),
                    WaitTimeSeconds=wait,
                )
            except self.poll.ClientError as e:
                if error_code(e) in NO_QUEUE:
                    self._urls.pop(job_id, None)
                    return []
                raise
            msgs = resp.get("Messages", [])
            if msgs:
                return [Message(body=m["Body"], receipt=m["ReceiptHandle"]) for m in msgs]
            if deadline - time.monotonic() < 0.5:
                return []

    def delete(self, job_id: str, receipts: Sequence[str]) -> None:
        if not receipts:
            return
        url = self._url(job_id)
        if url is None:
            return
        for start in range(0, len(receipts), BATCH):
            entries = [
                {"Id": str(i), "ReceiptHandle": r}
                for i, r in enumerate(receipts[start : start + BATCH])
            ]
            for attempt in range(RESEND_ATTEMPTS):
                try:
                    resp = self.sqs.call("delete_message_batch", QueueUrl=url, Entries=entries)
                except self.sqs.ClientError as e:
                    if error_code(e) in NO_QUEUE:
                        self._urls.pop(job_id, None)
                        return
                    raise
                # Sender faults are stale or invalid receipts: the message comes back later,
                # which costs time, never correctness. Retry only the service's own failures.
                again = {f["Id"] for f in resp.get("Failed", []) if not f.get("SenderFault")}
                if not again:
                    break
                entries = [e for e in entries if e["Id"] in again]
                jitter_sleep(attempt, base_s=0.05)

    def approximate_count(self, job_id: str) -> int:
        url = self._url(job_id)
        if url is None:
            return 0
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        try:
            attrs = self.sqs.call("get_queue_attributes", QueueUrl=url, AttributeNames=names)
        except self.sqs.ClientError as e:
            if error_code(e) in NO_QUEUE:
                self._urls.pop(job_id, None)
                return 0
            raise
        return sum(int(attrs.get("Attributes", {}).get(n, 0)) for n in names)
