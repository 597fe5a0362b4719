"""``POST /task/{task_id}/cancel`` (an extension)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.facts import declare
from easel.api.tasks import TASK
from easel.domain.errors import TaskNotFound

router = APIRouter()


@router.post(
    "/task/{task_id}/cancel",
    summary="Cancel a task",
    description="A queued task ends `cancelled` at once with a refund; a running one stops at "
    "its backend's next checkpoint (then ends `cancelled` with a refund); a final task is "
    "answered unchanged. Idempotent. Answers the task object.",
)
@declare(errors=[2001], example=TASK | {"status": "cancelled", "consumed_credit": 0})
async def cancel_task(
    task_id: str, request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    task = await runtime.service.cancel(caller, task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} not found.")
    return ok(await runtime.service.render(task, str(request.base_url)))
