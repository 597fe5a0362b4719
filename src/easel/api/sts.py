"""``POST /upload/sts/token``: temporary S3 credentials for one upload.

The credentials come from :mod:`easel.services.upload_tokens`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.facts import EXAMPLE_ID, declare
from easel.api.files import FORMAT_BODY
from easel.api.tasks import json_body

router = APIRouter()


@router.post(
    "/upload/sts/token",
    summary="Temporary S3 credentials to upload one image (JSON {'format': 'png'})",
)
@declare(
    errors=[1003, 1004, 1005],
    example={
        "s3_host": "s3.us-west-2.amazonaws.com",
        "resource_bucket": "easel-uploads",
        "resource_uri": f"prefix/uploads/acct/{EXAMPLE_ID}.png",
        "session_token": "FwoG…",
        "sts_ak": "ASIA…",
        "sts_sk": "wJal…",
    },
    body=FORMAT_BODY,
)
async def upload_sts_token(
    request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    body = await json_body(request)  # any JSON value: a wrong one is 1004 naming the formats
    tokens = runtime.upload_tokens
    return ok(await tokens.issue(caller, body))
