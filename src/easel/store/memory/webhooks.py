"""Webhooks and their outbox, in memory (see :mod:`easel.store.webhooks` for the SQL twin;
:meth:`easel.store.memory.state.Memory.event` enqueues the deliveries)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from easel.domain.accounts import Caller
from easel.domain.webhooks import MAX_PER_KEY, Delivery, Due, LoggedAttempt, Webhook
from easel.store.memory.state import DeliveryRow, HookRow, Memory
from easel.store.refusals import too_many_webhooks


def _webhook(hook: HookRow) -> Webhook:
    return Webhook(hook.id, hook.url, hook.events, hook.created_at)


class MemoryWebhooks:
    def __init__(self, memory: Memory) -> None:
        self._m = memory

    async def create(
        self, caller: Caller, *, url: str, event_types: Sequence[str], secret: str, base_url: str
    ) -> Webhook:
        hook = HookRow(
            str(uuid.uuid4()),
            caller.account_id,
            caller.key_id,
            url,
            tuple(event_types),
            secret,
            base_url,
            time.time(),
        )
        async with self._m.lock:
            count = sum(1 for h in self._m.hooks.values() if h.api_key_id == caller.key_id)
            if count >= MAX_PER_KEY:
                raise too_many_webhooks(count)
            self._m.hooks[hook.id] = hook
        return _webhook(hook)

    async def of_key(self, key_id: str, webhook_id: str | None = None) -> list[Webhook]:
        async with self._m.lock:
            mine = [
                h
                for h in self._m.hooks.values()
                if h.api_key_id == key_id and webhook_id in (None, h.id)
            ]
        return [_webhook(h) for h in sorted(mine, key=lambda h: (h.created_at, h.id))]

    def _forget(self, delivery_ids: list[str]) -> None:
        for delivery_id in delivery_ids:
            del self._m.deliveries[delivery_id]
            self._m.delivery_log.pop(delivery_id, None)

    async def delete(self, webhook_id: str, key_id: str) -> bool:
        m = self._m
        async with m.lock:
            hook = m.hooks.get(webhook_id)
            if hook is None or hook.api_key_id != key_id:
                return False
            self._forget([d.id for d in m.deliveries.values() if d.webhook_id == webhook_id])
            del m.hooks[webhook_id]
            return True

    async def deliveries(
        self, webhook_id: str, *, delivery_id: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        async with self._m.lock:
            rows = [
                d
                for d in self._m.deliveries.values()
                if d.webhook_id == webhook_id and delivery_id in (None, d.id)
            ]
            rows.sort(key=lambda d: (d.created_at, d.id), reverse=True)
            return [
                Delivery(
                    d.id,
                    d.task_id,
                    d.event_type,
                    d.status,
                    d.next_attempt_at,
                    d.created_at,
                    tuple(self._m.delivery_log.get(d.id, ())),
                )
                for d in rows[:limit]
            ]

    async def redeliver(self, webhook_id: str, delivery_id: str, now: float) -> bool:
        async with self._m.lock:
            row = self._m.deliveries.get(delivery_id)
            if row is None or row.webhook_id != webhook_id:
                return False
            due = row.next_attempt_at is not None and row.next_attempt_at <= now
            if row.status != "pending" or row.claim_token is None or due:
                row.status, row.next_attempt_at, row.claim_token = "pending", now, None
                row.window_start, row.window_attempts = None, 0
            return True

    async def prune(self, before: float, limit: int = 1000) -> int:
        async with self._m.lock:
            done = [
                d.id
                for d in self._m.deliveries.values()
                if d.status in ("delivered", "dead") and d.created_at < before
            ][:limit]
            self._forget(done)
        return len(done)

    async def claim(self, now: float, lease_s: float, limit: int) -> list[Due]:
        token = uuid.uuid4().hex
        async with self._m.lock:
            due = [
                d
                for d in self._m.deliveries.values()
                if d.status == "pending"
                and d.next_attempt_at is not None
                and d.next_attempt_at <= now
            ]
            due.sort(key=lambda d: (d.next_attempt_at, d.id))
            claimed = []
            for row in due[:limit]:
                row.next_attempt_at, row.claim_token = now + lease_s, token
                claimed.append(self._due(row, token))
            return claimed

    def _due(self, row: DeliveryRow, token: str) -> Due:
        hook = self._m.hooks[row.webhook_id]
        return Due(
            row.id,
            token,
            hook.url,
            hook.secret,
            hook.base_url,
            row.task_id,
            row.event_type,
            row.progress,
            row.created_at,
            row.attempts,
            row.window_start,
            row.window_attempts,
        )

    async def finish(
        self, due: Due, attempt: LoggedAttempt, status: str, next_attempt_at: float | None
    ) -> bool:
        async with self._m.lock:
            row = self._m.deliveries.get(due.id)
            if row is None or row.claim_token != due.claim_token:
                return False
            row.status, row.next_attempt_at, row.claim_token = status, next_attempt_at, None
            row.attempts = due.attempts + 1
            row.window_start = attempt.created_at if due.window_start is None else due.window_start
            row.window_attempts = due.window_attempts + 1
            self._m.delivery_log.setdefault(due.id, []).append(attempt)
            return True
