"""The queue interface: a hint telling workers which task ids to try.

The state store owns the truth; a lost, duplicated or late message costs time, never correctness.
One queue per job: SQS (created by submit, deleted when the job ends) or a SQLite table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    body: str
    receipt: str


class QueueService(ABC):
    @abstractmethod
    def create_queue(self, job_id: str) -> None:
        """Create the job's queue (idempotent)."""

    @abstractmethod
    def delete_queue(self, job_id: str) -> None:
        """Delete the job's queue and its messages (idempotent)."""

    @abstractmethod
    def send(self, job_id: str, bodies: Sequence[str], *, delay_s: int = 0) -> None:
        """Send in batches; delay_s (at most 900) hides the messages that long."""

    @abstractmethod
    def receive(
        self, job_id: str, *, max_messages: int = 1, visibility_s: int = 30, wait_s: float = 0.0
    ) -> list[Message]:
        """Up to max_messages visible messages, hidden for visibility_s; waits up to wait_s."""

    @abstractmethod
    def delete(self, job_id: str, receipts: Sequence[str]) -> None:
        """Delete received messages (a stale receipt is not an error)."""

    @abstractmethod
    def approximate_count(self, job_id: str) -> int:
        """Visible plus in-flight messages, for display only."""
