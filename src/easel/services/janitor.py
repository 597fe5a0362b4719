"""The janitor: expires tasks that waited too long, deletes outputs past retention, and
forgets what would otherwise pile up forever: webhook deliveries long done (their log), old
task events (the log that watch and SSE replay), and STS uploads announced but never made.

It runs in every ``easel serve`` and ``easel worker`` process; running it in several at once
is safe (expiry is fenced on the queued status, deletions are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from easel.config import Settings
from easel.storage.objects import ObjectStore
from easel.store import Store, is_outage

log = logging.getLogger("easel.services.janitor")
# An STS upload may arrive until its credentials expire; after that and this margin, a row
# whose object never came is an upload the client abandoned.
ABANDONED_AFTER_S = 3600.0


class Janitor:
    def __init__(self, store: Store, objects: ObjectStore, settings: Settings) -> None:
        self.store, self.objects, self.settings = store, objects, settings
        self.webhooks = store.webhooks

    async def sweep(self) -> tuple[int, int]:
        """One pass: (tasks expired, outputs deleted)."""
        expired = await self.store.queue.expire_queued(self.settings.queue_timeout_s)
        if expired:
            log.warning(
                "expired %d task(s) that waited over %.0f s", expired, self.settings.queue_timeout_s
            )
        deleted = 0
        for task_id, keys in await self.store.tasks.outputs_past(self.settings.output_retention_s):
            for key in keys:
                await self.objects.delete(key)
            await self.store.tasks.mark_output_deleted(task_id)
            deleted += 1
        if deleted:
            log.info("deleted %d output(s) past their retention", deleted)
        return expired, deleted

    async def prune(self) -> tuple[int, int, int]:
        """One pass: (webhook deliveries, abandoned STS uploads, events) forgotten."""
        now = time.time()
        deliveries = await self.webhooks.prune(now - self.settings.delivery_log_retention_s)
        if deliveries:
            log.info("forgot %d webhook deliveries past the log's retention", deliveries)
        forgotten_events = await self.store.events.prune(now - self.settings.event_log_retention_s)
        if forgotten_events:
            log.info("forgot %d task events past the log's retention", forgotten_events)
        abandoned = 0
        cutoff = now - self.settings.sts_duration_s - ABANDONED_AFTER_S
        for stored in await self.store.files.pending_before(cutoff):
            if await self.objects.exists(stored.key):
                continue  # it arrived: inspected when a task first uses it
            await self.store.files.forget_pending(stored.token)
            abandoned += 1
        if abandoned:
            log.info("forgot %d STS upload(s) that never arrived", abandoned)
        return deliveries, abandoned, forgotten_events

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
                await self.prune()
            except Exception as exc:
                if not is_outage(exc):  # a bug: show it; the next pass may still do the rest
                    log.exception("janitor pass failed; trying again later")
                else:
                    log.warning("janitor pass failed (%s); trying again later", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.janitor_interval_s)
