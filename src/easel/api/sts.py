"""``POST /upload/sts/token``: temporary S3 credentials for one upload.

The credentials come from :mod:`easel.services.upload_tokens`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.tasks import json_body

router = APIRouter()


@router.post(
    "/upload/sts/token",
    summary="Temporary S3 credentials to upload one image (JSON {'format': 'png'})",
)
async def upload_sts_token(
    request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    body = await json_body(request)  # any JSON value: a wrong one is 1004 naming the formats
    tokens = runtime.upload_tokens
    return ok(await tokens.issue(caller, body))
