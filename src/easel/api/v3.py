"""The Tripo API v3 image routes (``/v3/…``), served from the same tasks, credits and files.

``tripo3d`` 1.x clients point ``v3_base_url`` at this server. Requests become the same
validated tasks as ``POST /v2/openapi/task`` (``text_to_image``, ``generate_image`` and the
multiview types, see :mod:`easel.domain.v3`), so a task is readable through either version.
Answers are v3's envelopes (``status``; on errors v3's codes and ``request_id``:
``easel.api.envelope``). The routes of Tripo's other v3 families (3D generation, meshes,
animation) answer 501 "not supported by this server"; a path of no family 404 / 4001.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, UploadFile

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok_v3 as ok
from easel.api.facts import EXAMPLE_ID, JsonBody, declare
from easel.api.files import FORMAT_BODY, MAX_UPLOAD_REQUEST_BYTES, UPLOAD_FORMATS, read_upload
from easel.api.tasks import VIEW_PROMPTS, check_content_type, json_object
from easel.domain import v3
from easel.domain.catalog import DEFAULT_MODEL
from easel.domain.errors import InvalidParameter, NotAllowed, RouteNotSupported, TaskNotFound
from easel.domain.options import (
    ASPECT_RATIOS,
    BACKGROUNDS,
    EXTRA_RATIOS,
    OUTPUT_FORMATS,
    QUALITIES,
)
from easel.domain.parsing import MAX_NEGATIVE_PROMPT_CHARS
from easel.domain.prompts import MAX_PROMPT_CHARS, V3_MAX_PROMPT_CHARS
from easel.storage.signing import upload_key

router = APIRouter(prefix="/v3", tags=["v3"])

UPLOAD_URL_TTL_S = 900
# The route families of Tripo's v3 API of which this server serves only the image routes (its
# SDKs' paths); their other routes answer 501, a path of no family 404 / 4001.
TRIPO_FAMILIES = ("generation", "models", "mesh", "animations")

TASK = {  # a task as GET /v3/tasks/{task_id} answers it
    "task_id": EXAMPLE_ID,
    "type": "image_to_image",
    "status": "success",
    "progress": 100,
    "input": {
        "prompt": "a red fox",
        "model_version": "flux.1_kontext_pro",
        "files": [{"file_token": EXAMPLE_ID}],
        "t_pose": False,
        "sketch_to_render": False,
    },
    "output": {
        "generated_image_url": f"https://easel.example/v2/openapi/outputs/outputs/{EXAMPLE_ID}.png"
        "?expires=1709052533&signature=5ac5…"
    },
    "model": "flux.1_kontext_pro",
    "credits_consumed": 5.0,
    "created_at": "2024-02-27T15:48:53Z",
    "completed_at": "2024-02-27T15:48:59Z",
    "running_left_time": -1,
    "queuing_num": -1,
    "served_by": "bfl flux-kontext-pro",
}
# The rules themselves are easel.domain.v3's and easel.domain.parsing's; this describes them.
GENERATION_SCHEMA = {
    "type": "object",
    "description": "v3 generation options. The image options (size … negative_prompt) are "
    "honoured where the model takes them and refused (1004, naming the accepted values) "
    "where it does not; docs/protocol.md has the table per model.",
    "properties": {
        "prompt": {"type": "string", "maxLength": V3_MAX_PROMPT_CHARS},
        "negative_prompt": {"type": "string", "maxLength": MAX_NEGATIVE_PROMPT_CHARS},
        "size": {
            "type": "string",
            "pattern": r"^([124][kK]|[1-9][0-9]{1,4}[xX×*][1-9][0-9]{1,4})$",
            "description": "a tier (1K, 2K, 4K) or WxH pixels such as 1536x1024",
        },
        "aspect_ratio": {"type": "string", "enum": [*ASPECT_RATIOS, *EXTRA_RATIOS]},
        "quality": {"type": "string", "enum": list(QUALITIES)},
        "background": {"type": "string", "enum": list(BACKGROUNDS)},
        "output_format": {"type": "string", "enum": [*OUTPUT_FORMATS, "jpg"]},
        "watermark": {"type": "boolean"},
        "model": {"type": "string", "default": DEFAULT_MODEL},
        "input": {"type": "string", "description": "image-to-image: a file_token, URL or task_id"},
        "inputs": {"type": "array", "items": {"type": "string"}},
        "template": {"type": "string"},
        "t_pose": {"type": "boolean", "default": False},
        "sketch_to_render": {"type": "boolean", "default": False},
    },
}
GENERATE_ERRORS = [1003, 1004, 2003, 2004, 2009, 2010, 2017, 2019, 2000]
TEXT_BODY = JsonBody(
    name="V3Generation",
    schema=GENERATION_SCHEMA,
    examples={
        "text": {"summary": "A prompt", "value": {"prompt": "a small cat", "model": "banana"}}
    },
)
IMAGE_BODY = JsonBody(
    name="V3Generation",
    schema=GENERATION_SCHEMA,
    examples={
        "references": {
            "summary": "An upload and an earlier task's image, named with image[N]",
            "value": {
                "prompt": "Put the cat of image[1] in the scene of image[2]",
                "model": "flux.1_kontext_pro",
                "inputs": ["ce85f375-3ccc-440b-b847-571588872ec2", EXAMPLE_ID],
            },
        },
        "template": {
            "summary": "A template",
            "value": {"template": "t_pose", "input": "https://example.com/a.png"},
        },
    },
)
MULTIVIEW_ERRORS = [1003, 1004, 2003, 2004, 2009, 2010, 2019, 2000]
MULTIVIEW_BODY = JsonBody(
    name="V3ImageToMultiview",
    schema={
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {"type": "string", "description": "a file_token, URL or task_id"},
            "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        },
    },
    example={"input": "ce85f375-3ccc-440b-b847-571588872ec2"},
)
EDIT_BODY = JsonBody(
    name="V3EditMultiview",
    schema={
        "type": "object",
        "required": ["input", "prompts"],
        "properties": {
            "input": {"type": "string", "description": "the task_id of a multiview task"},
            "prompts": VIEW_PROMPTS,
        },
    },
    example={"input": EXAMPLE_ID, "prompts": [{"view": "left", "prompt": "make it red"}]},
)
TASK_IDS_BODY = JsonBody(
    schema={
        "type": "object",
        "required": ["task_ids"],
        "properties": {
            "task_ids": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "maxItems": v3.MAX_LISTED_TASKS,
            }
        },
    },
    example={"task_ids": [EXAMPLE_ID]},
)


async def _submit(
    request: Request, caller: CallerDep, runtime: RuntimeDep, route: v3.Route
) -> dict[str, Any]:
    options = await json_object(request, "of generation options", typed=True)
    body = v3.to_generate_image(options, route, runtime.settings.catalog)
    task_id = await runtime.service.submit(
        caller, body, idempotency_key=request.headers.get("idempotency-key"), v3=True
    )
    return ok({"task_id": task_id})


@router.post("/generation/text-to-image", summary="v3: generate an image from a prompt")
@declare(errors=GENERATE_ERRORS, example={"task_id": EXAMPLE_ID}, body=TEXT_BODY)
async def text_to_image(request: Request, caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    return await _submit(request, caller, runtime, "text-to-image")


@router.post("/generation/image-to-image", summary="v3: generate an image from references")
@declare(errors=GENERATE_ERRORS, example={"task_id": EXAMPLE_ID}, body=IMAGE_BODY)
async def image_to_image(
    request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    return await _submit(request, caller, runtime, "image-to-image")


async def _submit_multiview(
    request: Request, caller: CallerDep, runtime: RuntimeDep, route: v3.MultiviewRoute
) -> dict[str, Any]:
    options = await json_object(request, "with an input", typed=True)
    body = v3.to_multiview(options, route)
    task_id = await runtime.service.submit(
        caller, body, idempotency_key=request.headers.get("idempotency-key")
    )
    return ok({"task_id": task_id})


@router.post(
    "/generation/image-to-multiview",
    summary="v3: four views (front, left, back, right) of one image",
)
@declare(errors=MULTIVIEW_ERRORS, example={"task_id": EXAMPLE_ID}, body=MULTIVIEW_BODY)
async def image_to_multiview(
    request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    return await _submit_multiview(request, caller, runtime, "image-to-multiview")


@router.post("/generation/edit-multiview", summary="v3: edit views of a multiview task")
@declare(errors=[*MULTIVIEW_ERRORS, 2001], example={"task_id": EXAMPLE_ID}, body=EDIT_BODY)
async def edit_multiview(
    request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    return await _submit_multiview(request, caller, runtime, "edit-multiview")


@router.get("/tasks/{task_id}", summary="v3: get a task")
@declare(errors=[2001], example=TASK)
async def get_task(
    task_id: str, request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    found = await runtime.service.view_task(caller, task_id, str(request.base_url))
    if found is None:
        raise TaskNotFound(f"task {task_id} not found.")
    return ok(v3.render_task(*found))


@router.post(
    "/tasks/list",
    summary="v3: get several tasks",
    description="`tasks` is keyed by task id, or a list in the order asked for the official Go, "
    "JS and Rust SDKs (User-Agent `tripo3d-sdk-go`, `@vastai/tripo-sdk`, `tripo3d-sdk-rust`).",
)
@declare(
    errors=[1003, 1004],
    example={"tasks": {EXAMPLE_ID: TASK}, "missed": ["0f5e…"]},
    body=TASK_IDS_BODY,
)
async def list_tasks(request: Request, caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    ids = (await json_object(request, "with task_ids", typed=True)).get("task_ids")
    if (
        not isinstance(ids, list)
        or not 0 < len(ids) <= v3.MAX_LISTED_TASKS
        or not all(isinstance(i, str) for i in ids)
    ):
        raise InvalidParameter(
            f"task_ids must be a list of 1 to {v3.MAX_LISTED_TASKS} task ids.",
            "Send {'task_ids': ['…', '…']}.",
        )
    found: dict[str, Any] = {}
    missed: list[str] = []
    for task_id in dict.fromkeys(ids):
        view = await runtime.service.view_task(caller, task_id, str(request.base_url))
        if view is None:
            missed.append(task_id)
        else:
            found[task_id] = v3.render_task(*view)
    as_array = v3.wants_task_array(request.headers.get("user-agent"))
    return ok(v3.task_list(found, missed, as_array=as_array))


@router.get("/account/balance", summary="v3: credits available and held")
@declare(example={"balance": 95.0, "frozen": 5.0})
async def balance(caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    current = await runtime.accounts.balance(caller)
    return ok({"balance": float(current.balance), "frozen": float(current.frozen)})


@router.get("/account/usage", summary="v3: the key's tasks and their cost, newest first")
@declare(
    errors=[1004],
    example={
        "items": [
            {
                "task_id": EXAMPLE_ID,
                "type": "image_to_image",
                "status": "success",
                "model": "flux.1_kontext_pro",
                "created_at": "2024-02-27T15:48:53Z",
                "credits_consumed": 5.0,
            }
        ],
        "limit": 50,
        "offset": 0,
    },
)
async def usage(
    caller: CallerDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # a 64-bit SQL integer
) -> dict[str, Any]:
    tasks = await runtime.service.recent(caller, limit, offset)
    return ok({"items": [v3.usage_item(task) for task in tasks], "limit": limit, "offset": offset})


@router.post(
    "/files",
    summary="v3: upload an image (multipart field 'file')",
)
@declare(
    errors=[1003, 1004, 2003, 2004],
    example={"file_token": EXAMPLE_ID},
    upload_limit=MAX_UPLOAD_REQUEST_BYTES,
)
async def upload(
    request: Request,
    caller: CallerDep,
    runtime: RuntimeDep,
    file: Annotated[UploadFile | None, File()] = None,
) -> dict[str, Any]:
    check_content_type(request, "multipart/form-data", "a form with the image as 'file'")
    token = await runtime.service.upload(caller, await read_upload(file))
    return ok({"file_token": token})


@router.post("/files/presign", summary="v3: a presigned PUT URL for one upload")
@declare(
    errors=[1003, 1004],
    example={
        "file_token": EXAMPLE_ID,
        "presigned_url": f"https://easel.example/v3/files/upload/acct/{EXAMPLE_ID}"
        "?expires=1709049833&signature=9f2c…",
        "expires_in": UPLOAD_URL_TTL_S,
    },
    body=FORMAT_BODY,
)
async def presign(request: Request, caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    fmt = (await json_object(request, "with a format", typed=True)).get("format")
    if not isinstance(fmt, str) or fmt.lower().lstrip(".") not in UPLOAD_FORMATS:
        raise InvalidParameter(
            f"format must be one of {', '.join(UPLOAD_FORMATS)}, not {fmt!r}.",
            "This server takes PNG, JPEG and WebP images.",
        )
    token = v3.new_file_token()
    base_url = runtime.settings.public_url or str(request.base_url)
    url = runtime.signer.sign_upload(base_url, caller.account_id, token, UPLOAD_URL_TTL_S)
    return ok({"file_token": token, "presigned_url": url, "expires_in": UPLOAD_URL_TTL_S})


@router.put("/files/upload/{account_id}/{token}", summary="v3: the presigned upload itself")
@declare(
    errors=[1004, 1005, 2003, 2004],
    example={"file_token": EXAMPLE_ID},
    upload_limit=MAX_UPLOAD_REQUEST_BYTES,
)
async def presigned_put(
    account_id: str,
    token: str,
    request: Request,
    runtime: RuntimeDep,
    expires: Annotated[int, Query()],
    signature: Annotated[str, Query()],
) -> dict[str, Any]:
    if not runtime.signer.verify(upload_key(account_id, token), expires, signature):
        raise NotAllowed(
            "this upload URL is invalid or has expired.",
            "Ask POST /v3/files/presign for a new one.",
        )
    # The body is bounded before it is read (easel.api.limits: its upload_limit), and the
    # image's own 20 MB limit is checked with its bytes (easel.domain.images.inspect_image).
    await runtime.service.upload_as(account_id, token, await request.body())
    return ok({"file_token": token})


async def not_supported(path: str, request: Request) -> None:
    raise RouteNotSupported(
        f"{request.method} {request.url.path} is not supported by this server.",
        "This server generates images only: use /v3/generation/text-to-image, "
        "/v3/generation/image-to-image, /v3/generation/image-to-multiview or "
        "/v3/generation/edit-multiview, /v3/tasks, /v3/files and /v3/account.",
    )


for _family in TRIPO_FAMILIES:  # after the routes served, which match first
    router.add_api_route(
        f"/{_family}/{{path:path}}", not_supported, methods=["POST"], include_in_schema=False
    )
