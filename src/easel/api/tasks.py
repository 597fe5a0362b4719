"""``POST /task`` and ``GET /task/{task_id}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.domain.errors import MalformedBody, TaskNotFound
from easel.domain.text import decode_json

router = APIRouter()


async def json_body(request: Request) -> Any:
    """The request body decoded as JSON (any value): 1003 when it is not JSON, 1004 when a
    string or number in it breaks the text rules (``easel.domain.text``). Every JSON body of the API
    is read here: no route lets FastAPI decode one."""
    return decode_json(await request.body())


async def json_object(request: Request, what: str = "with a 'type'") -> dict[str, Any]:
    """The request body as a JSON object, or 1003."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise MalformedBody(f"the request body must be a JSON object {what}.")
    return body


@router.post("/task", summary="Submit a generate_image task")
async def create_task(request: Request, caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    body = await json_object(request)
    task_id = await runtime.service.submit(
        caller, body, idempotency_key=request.headers.get("idempotency-key")
    )
    return ok({"task_id": task_id})


@router.get("/task/{task_id}", summary="Get a task")
async def get_task(
    task_id: str, request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    view = await runtime.service.view(caller, task_id, str(request.base_url))
    if view is None:
        raise TaskNotFound(f"task {task_id} not found.")
    return ok(view)
