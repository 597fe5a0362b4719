"""Uploads (``/upload``, ``/upload/sts``) and signed output downloads (``/outputs/…``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Response, UploadFile

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.facts import EXAMPLE_ID, JsonBody, declare
from easel.domain.errors import InvalidParameter, NotAllowed
from easel.domain.images import MAX_IMAGE_BYTES, MIME_TYPES
from easel.storage.objects import ObjectNotFound

router = APIRouter()


# Multipart framing around a 20 MB image stays well under this. easel.api.limits refuses a
# larger body (413 / 1004) before any route that declares it (an upload route) reads it.
MAX_UPLOAD_REQUEST_BYTES = MAX_IMAGE_BYTES + 256 * 1024
UPLOAD_FORMATS = ("png", "jpg", "jpeg", "webp")
# The body of the routes that prepare an upload elsewhere (/upload/sts/token, /v3/files/presign).
FORMAT_BODY = JsonBody(
    schema={
        "type": "object",
        "required": ["format"],
        "properties": {"format": {"type": "string", "enum": list(UPLOAD_FORMATS)}},
    },
    example={"format": "png"},
)
# An upload route: the image's own refusals, and its larger body limit.
UPLOAD = declare(
    errors=[1004, 2003, 2004],
    example={"image_token": EXAMPLE_ID},
    upload_limit=MAX_UPLOAD_REQUEST_BYTES,
)


async def read_upload(file: UploadFile | None) -> bytes:
    """The bytes of the multipart field ``file`` (at most one byte over the image limit, so
    the image check can refuse an oversized one)."""
    if file is None:
        raise InvalidParameter(
            "the multipart field 'file' is missing.",
            "Send multipart/form-data with the image in a field named 'file'.",
        )
    return await file.read(MAX_IMAGE_BYTES + 1)


async def _upload(
    caller: CallerDep, runtime: RuntimeDep, file: UploadFile | None
) -> dict[str, Any]:
    token = await runtime.service.upload(caller, await read_upload(file))
    return ok({"image_token": token})


@router.post(
    "/upload",
    summary="Upload an image (multipart field 'file')",
)
@UPLOAD
async def upload(
    caller: CallerDep, runtime: RuntimeDep, file: Annotated[UploadFile | None, File()] = None
) -> dict[str, Any]:
    return await _upload(caller, runtime, file)


@router.post(
    "/upload/sts",
    summary="Upload an image (multipart field 'file'; same as /upload)",
)
@UPLOAD
async def upload_sts(
    caller: CallerDep, runtime: RuntimeDep, file: Annotated[UploadFile | None, File()] = None
) -> dict[str, Any]:
    return await _upload(caller, runtime, file)


@router.get("/outputs/{key:path}", summary="Download an output image by its signed URL")
@declare(errors=[1004, 1005])  # 1004: expires is not an integer
async def download(
    key: str,
    runtime: RuntimeDep,
    expires: Annotated[int, Query()],
    signature: Annotated[str, Query()],
) -> Response:
    if not runtime.signer.verify(key, expires, signature):
        raise NotAllowed(
            "this download link is invalid or has expired.",
            "Get the task again for a fresh output.generated_image link.",
        )
    try:
        data = await runtime.objects.get(key)
    except ObjectNotFound:
        raise NotAllowed("the output image no longer exists.") from None
    ext = key.rsplit(".", 1)[-1]
    media_type = MIME_TYPES["jpeg" if ext == "jpg" else ext]
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=60"})
