"""A task's event as the watch protocol and webhooks see it: numbered per account."""

from __future__ import annotations

from dataclasses import dataclass

from easel.domain.tasks import FINAL, Status


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    task_id: str
    status: Status
    progress: int
    created_at: float

    @property
    def kind(self) -> str:
        """``finalized`` for a final status, else ``update`` (the watch protocol's names)."""
        return "finalized" if self.status in FINAL else "update"
