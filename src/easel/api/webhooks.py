"""Webhooks (an extension): register, list, delete, the delivery log and redelivery.

A webhook belongs to the API key that made it; another key gets 404 (2001) as for tasks.
Deliveries are signed by the Standard Webhooks scheme with the secret answered once, at
registration; see ``easel.services.webhooks`` for what is sent and when.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.facts import JsonBody, declare
from easel.api.tasks import json_object
from easel.domain.webhooks import Delivery, Webhook
from easel.services.webhook_registry import WebhookRegistry
from easel.services.webhooks import rfc3339

router = APIRouter()


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


NEW_WEBHOOK_BODY = JsonBody(name="NewWebhook", schema=NewWebhook.model_json_schema())


async def get_registry(runtime: RuntimeDep) -> WebhookRegistry:
    return runtime.webhooks


RegistryDep = Annotated[WebhookRegistry, Depends(get_registry)]


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


@router.post("/webhooks", summary="Register a webhook")
@declare(errors=[1004], example={"id": "wh_…", "secret": "whsec_…"}, body=NEW_WEBHOOK_BODY)
async def create_webhook(
    request: Request,
    caller: CallerDep,  # first: a body is read only for an authenticated caller
    runtime: RuntimeDep,
    registry: RegistryDep,
    body: Annotated[NewWebhook, Depends(new_webhook)],
) -> dict[str, Any]:
    """Answers the id and the signing secret (``whsec_…``); the secret is shown only here."""
    # The base of the output links its deliveries carry: the configured public_url, else the
    # request's, whose Host the door bounded and checked (easel.api.door).
    base_url = runtime.settings.public_url or str(request.base_url)
    hook, secret = await registry.register(caller, body.url, body.events, base_url)
    return ok({**_view(hook), "secret": secret})


@router.get("/webhooks", summary="The key's webhooks")
@declare(example=[])
async def list_webhooks(caller: CallerDep, registry: RegistryDep) -> dict[str, Any]:
    return ok([_view(hook) for hook in await registry.of_caller(caller)])


@router.delete("/webhooks/{webhook_id}", summary="Delete a webhook and its pending deliveries")
@declare(errors=[2001], example={"deleted": True})
async def delete_webhook(
    webhook_id: str, caller: CallerDep, registry: RegistryDep
) -> dict[str, Any]:
    await registry.delete(caller, webhook_id)
    return ok({"id": webhook_id, "deleted": True})


@router.get("/webhooks/{webhook_id}/deliveries", summary="The webhook's delivery log")
@declare(errors=[1004, 2001], example=[])  # 1004: limit
async def list_deliveries(
    webhook_id: str,
    caller: CallerDep,
    registry: RegistryDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Newest first, each with its attempts (number, HTTP status, latency, error, time)."""
    return ok([_delivery_view(d) for d in await registry.deliveries(caller, webhook_id, limit)])


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    summary="Send a delivery again now",
)
@declare(errors=[2001], example={"delivery_id": "…", "status": "pending"})
async def redeliver(
    webhook_id: str, delivery_id: str, caller: CallerDep, registry: RegistryDep
) -> dict[str, Any]:
    """Queues a new attempt now, with a fresh retry window, also for a dead delivery."""
    return ok(_delivery_view(await registry.redeliver(caller, webhook_id, delivery_id)))
