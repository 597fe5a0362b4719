"""A key's event log as streams read it: what came after a number, where the log ends now,
and a replay of each task's latest event since a time (the WebSocket ``since`` option)."""

from __future__ import annotations

from easel.domain.accounts import Caller
from easel.domain.events import Event
from easel.store.ports import EventsPort

REPLAY_LIMIT = 100_000  # events read for one replay


class EventFeed:
    def __init__(self, store: EventsPort) -> None:
        self._store = store

    async def after(
        self, caller: Caller, after_seq: int, *, task_id: str | None = None
    ) -> list[Event]:
        """The caller's next events numbered above ``after_seq`` (of one task, if given)."""
        return await self._store.after(caller.account_id, caller.key_id, after_seq, task_id=task_id)

    async def last_seq(self, caller: Caller) -> int:
        """The number of the account's newest event: a stream from now starts after it."""
        return await self._store.last_seq(caller.account_id)

    async def latest_since(self, caller: Caller, since: float) -> list[Event]:
        """Each task's newest event among the caller's events from time ``since`` on."""
        start = await self._store.last_seq_before(caller.account_id, since)
        latest: dict[str, Event] = {}
        for event in await self._store.after(
            caller.account_id, caller.key_id, start, limit=REPLAY_LIMIT
        ):
            latest[event.task_id] = event
        return list(latest.values())
