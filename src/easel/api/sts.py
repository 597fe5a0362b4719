"""``POST /upload/sts/token``: temporary S3 credentials for one upload (see ``easel.sts``)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.errors import MalformedBody
from easel.sts import UploadTokens

router = APIRouter()


@router.post(
    "/upload/sts/token",
    summary="Temporary S3 credentials to upload one image (JSON {'format': 'png'})",
)
async def upload_sts_token(
    request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. 100000 levels of [[[…]]]
        raise MalformedBody("the request body nests JSON too deeply.") from None
    tokens = UploadTokens(runtime.settings, runtime.objects, runtime.store.files)
    return ok(await tokens.issue(caller, body))
