"""``POST /task`` and ``GET /task/{task_id}``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.errors import MalformedBody, TaskNotFound

router = APIRouter()


@router.post("/task", summary="Submit a generate_image task")
async def create_task(request: Request, caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedBody("the request body must be a JSON object with a 'type'.")
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
