"""Webhooks as a key's owner manages them: register, list, delete, read the delivery log,
redeliver. A webhook belongs to the API key that made it: another key is told it does not
exist (2001), as for tasks. Delivery itself is :mod:`easel.services.webhooks`."""

from __future__ import annotations

import time

from easel.domain.accounts import Caller
from easel.domain.errors import InvalidParameter, TaskNotFound
from easel.domain.webhooks import EVENT_TYPES, Delivery, Webhook
from easel.outbound import OutboundPolicy
from easel.outbound.fetch import check_url
from easel.services.webhooks import new_secret
from easel.store.ports import WebhooksPort

_PRIVATE_HINT = (
    "Use a publicly reachable http(s) URL; to let a private address through, the server's "
    "operator adds its network to allow_outbound_cidrs."
)


class WebhookRegistry:
    def __init__(self, store: WebhooksPort, policy: OutboundPolicy) -> None:
        self._store, self._policy = store, policy

    async def register(
        self, caller: Caller, url: str, events: list[str], base_url: str
    ) -> tuple[Webhook, str]:
        """A new webhook and its signing secret (shown to the caller this once). ``base_url``
        is the base of the output links its deliveries carry."""
        chosen = _event_types(events)
        checked = await self._checked_url(url.strip())
        secret = new_secret()
        hook = await self._store.create(
            caller, url=checked, event_types=chosen, secret=secret, base_url=base_url
        )
        return hook, secret

    async def of_caller(self, caller: Caller) -> list[Webhook]:
        return await self._store.of_key(caller.key_id)

    async def delete(self, caller: Caller, webhook_id: str) -> None:
        if not await self._store.delete(webhook_id, caller.key_id):
            raise _not_found(webhook_id)

    async def deliveries(self, caller: Caller, webhook_id: str, limit: int) -> list[Delivery]:
        await self._own(caller, webhook_id)
        return await self._store.deliveries(webhook_id, limit=limit)

    async def redeliver(self, caller: Caller, webhook_id: str, delivery_id: str) -> Delivery:
        """Queue a new attempt now, with a fresh retry window, also for a dead delivery."""
        await self._own(caller, webhook_id)
        if not await self._store.redeliver(webhook_id, delivery_id, time.time()):
            raise TaskNotFound(
                f"delivery {delivery_id} of webhook {webhook_id} not found.",
                "Take the delivery id from 'GET /v2/openapi/webhooks/{id}/deliveries'.",
            )
        return (await self._store.deliveries(webhook_id, delivery_id=delivery_id))[0]

    async def _own(self, caller: Caller, webhook_id: str) -> Webhook:
        found = await self._store.of_key(caller.key_id, webhook_id)
        if not found:
            raise _not_found(webhook_id)
        return found[0]

    async def _checked_url(self, url: str) -> str:
        """The URL, if the server may send to it under the outbound address rules (else 1004)."""
        try:
            await check_url(url, self._policy)
        except InvalidParameter as exc:
            raise InvalidParameter(exc.message, _PRIVATE_HINT) from exc
        return url


def _not_found(webhook_id: str) -> TaskNotFound:
    return TaskNotFound(
        f"webhook {webhook_id} not found.",
        "Check the webhook id; a webhook is visible only to the key that created it.",
    )


def _event_types(events: list[str]) -> list[str]:
    unknown = [e for e in events if e not in EVENT_TYPES]
    if not events or unknown:
        raise InvalidParameter(
            f"events: unknown event type(s) {', '.join(map(repr, unknown))}."
            if unknown
            else "events: name at least one event type.",
            f"Choose from {', '.join(EVENT_TYPES)}.",
        )
    return list(dict.fromkeys(events))
