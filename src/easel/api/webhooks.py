"""Webhooks (an extension): register, list, delete, the delivery log and redelivery.

A webhook belongs to the API key that made it; another key gets 404 (2001) as for tasks.
Deliveries are signed by the Standard Webhooks scheme with the secret answered once, at
registration; see ``easel.services.webhooks`` for what is sent and when.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.tasks import json_object
from easel.domain.errors import InvalidParameter, TaskNotFound
from easel.outbound.fetch import check_url
from easel.runtime import Runtime
from easel.services.webhooks import new_secret, rfc3339
from easel.store.accounts import Caller
from easel.store.webhooks import EVENT_TYPES, Delivery, Webhook, WebhookStore

router = APIRouter()

_PRIVATE_HINT = (
    "Use a publicly reachable http(s) URL; to let a private address through, the server's "
    "operator adds its network to allow_outbound_cidrs."
)


class NewWebhook(BaseModel):  # the body of POST /webhooks (no docstring: it would be documented)
    url: str
    events: list[str]


async def new_webhook(request: Request) -> NewWebhook:
    """The body, decoded by the API's one JSON decoder (``easel.domain.text``: its text and number
    rules) rather than by FastAPI, then validated by the model; a model error reads as
    FastAPI's would ("body.url: Field required")."""
    body = await json_object(request, "with url and events")
    try:
        return NewWebhook.model_validate(body)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


# Documented as before; build_schema adds the NewWebhook schema the reference names.
NEW_WEBHOOK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewWebhook"}}},
    }
}


async def get_webhook_store(runtime: RuntimeDep) -> WebhookStore:
    return WebhookStore(runtime.store.engine)


StoreDep = Annotated[WebhookStore, Depends(get_webhook_store)]


def _view(hook: Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "url": hook.url,
        "events": list(hook.events),
        "created_at": rfc3339(hook.created_at),
    }


def _delivery_view(delivery: Delivery) -> dict[str, Any]:
    due = delivery.next_attempt_at if delivery.status == "pending" else None
    return {
        "id": delivery.id,
        "event": delivery.event_type,
        "task_id": delivery.task_id,
        "status": delivery.status,
        "created_at": rfc3339(delivery.created_at),
        "next_attempt_at": None if due is None else rfc3339(due),
        "attempts": [
            {
                "number": a.number,
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
                "time": rfc3339(a.created_at),
            }
            for a in delivery.attempts
        ],
    }


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


async def _checked_url(runtime: Runtime, url: str) -> str:
    """The URL, if the server may send to it under the outbound address rules (else 1004)."""
    try:
        await check_url(url, runtime.service.policy)
    except InvalidParameter as exc:
        raise InvalidParameter(exc.message, _PRIVATE_HINT) from exc
    return url


def _not_found(webhook_id: str) -> TaskNotFound:
    return TaskNotFound(
        f"webhook {webhook_id} not found.",
        "Check the webhook id; a webhook is visible only to the key that created it.",
    )


async def _own(store: WebhookStore, caller: Caller, webhook_id: str) -> Webhook:
    found = await store.of_key(caller.key_id, webhook_id)
    if not found:
        raise _not_found(webhook_id)
    return found[0]


@router.post("/webhooks", summary="Register a webhook", openapi_extra=NEW_WEBHOOK_BODY)
async def create_webhook(
    request: Request,
    caller: CallerDep,  # first: a body is read only for an authenticated caller
    runtime: RuntimeDep,
    store: StoreDep,
    body: Annotated[NewWebhook, Depends(new_webhook)],
) -> dict[str, Any]:
    """Answers the id and the signing secret (``whsec_…``); the secret is shown only here."""
    events = _event_types(body.events)
    url = await _checked_url(runtime, body.url.strip())
    secret = new_secret()
    # The base of the output links its deliveries carry: the configured public_url, else the
    # request's, whose Host the door bounded and checked (easel.api.door).
    base_url = runtime.settings.public_url or str(request.base_url)
    hook = await store.create(caller, url=url, event_types=events, secret=secret, base_url=base_url)
    return ok({**_view(hook), "secret": secret})


@router.get("/webhooks", summary="The key's webhooks")
async def list_webhooks(caller: CallerDep, store: StoreDep) -> dict[str, Any]:
    return ok([_view(hook) for hook in await store.of_key(caller.key_id)])


@router.delete("/webhooks/{webhook_id}", summary="Delete a webhook and its pending deliveries")
async def delete_webhook(webhook_id: str, caller: CallerDep, store: StoreDep) -> dict[str, Any]:
    if not await store.delete(webhook_id, caller.key_id):
        raise _not_found(webhook_id)
    return ok({"id": webhook_id, "deleted": True})


@router.get("/webhooks/{webhook_id}/deliveries", summary="The webhook's delivery log")
async def list_deliveries(
    webhook_id: str,
    caller: CallerDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Newest first, each with its attempts (number, HTTP status, latency, error, time)."""
    await _own(store, caller, webhook_id)
    deliveries = await store.deliveries(webhook_id, limit=limit)
    return ok([_delivery_view(d) for d in deliveries])


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    summary="Send a delivery again now",
)
async def redeliver(
    webhook_id: str, delivery_id: str, caller: CallerDep, store: StoreDep
) -> dict[str, Any]:
    """Queues a new attempt now, with a fresh retry window, also for a dead delivery."""
    await _own(store, caller, webhook_id)
    if not await store.redeliver(webhook_id, delivery_id, time.time()):
        raise TaskNotFound(
            f"delivery {delivery_id} of webhook {webhook_id} not found.",
            "Take the delivery id from 'GET /v2/openapi/webhooks/{id}/deliveries'.",
        )
    found = await store.deliveries(webhook_id, delivery_id=delivery_id)
    return ok(_delivery_view(found[0]))
