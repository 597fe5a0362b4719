"""The janitor: expires tasks that waited too long and deletes outputs past retention.

It runs in every ``easel serve`` and ``easel worker`` process; running it in several at once
is safe (expiry is fenced on the queued status, deletion is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from easel.config import Settings
from easel.storage import ObjectStore
from easel.store import TRANSIENT_ERRORS, Store

log = logging.getLogger("easel.janitor")


class Janitor:
    def __init__(self, store: Store, objects: ObjectStore, settings: Settings) -> None:
        self.store, self.objects, self.settings = store, objects, settings

    async def sweep(self) -> tuple[int, int]:
        """One pass: (tasks expired, outputs deleted)."""
        expired = await self.store.tasks.expire_queued(self.settings.queue_timeout_s)
        if expired:
            log.warning(
                "expired %d task(s) that waited over %.0f s", expired, self.settings.queue_timeout_s
            )
        deleted = 0
        for task_id, key in await self.store.tasks.outputs_past(self.settings.output_retention_s):
            await self.objects.delete(key)
            await self.store.tasks.mark_output_deleted(task_id)
            deleted += 1
        if deleted:
            log.info("deleted %d output(s) past their retention", deleted)
        return expired, deleted

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except TRANSIENT_ERRORS as exc:
                log.warning("janitor pass failed (%s); trying again later", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.janitor_interval_s)
