"""``POST /task`` and ``GET /task/{task_id}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from easel.api.deps import CallerDep, RuntimeDep
from easel.api.envelope import ok
from easel.api.facts import EXAMPLE_ID, JsonBody, declare
from easel.domain.catalog import DEFAULT_MODEL
from easel.domain.errors import MalformedBody, TaskNotFound, UnsupportedContentType
from easel.domain.multiview import EDIT_MULTIVIEW, GENERATE_MULTIVIEW, VIEWS
from easel.domain.parsing import MAX_NEGATIVE_PROMPT_CHARS, TASK_TYPE, TEXT_TO_IMAGE
from easel.domain.prompts import MAX_PROMPT_CHARS
from easel.domain.task_types import TASK_TYPES
from easel.domain.text import decode_json

router = APIRouter()

# The prompts of a multiview edit, on v2 (edit_multiview_image) and v3 (edit-multiview).
VIEW_PROMPTS: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "maxItems": len(VIEWS),
    "items": {
        "type": "object",
        "required": ["view", "prompt"],
        "properties": {
            "view": {"type": "string", "enum": list(VIEWS)},
            "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        },
    },
}

TASK = {  # a task as GET /task/{task_id} answers it
    "task_id": EXAMPLE_ID,
    "type": TASK_TYPE,
    "status": "success",
    "input": {
        "prompt": "a red fox",
        "model_version": "flux.1_kontext_pro",
        "t_pose": False,
        "sketch_to_render": False,
    },
    "output": {
        "generated_image": f"https://easel.example/v2/openapi/outputs/outputs/{EXAMPLE_ID}.png"
        "?expires=1709052533&signature=5ac5…"
    },
    "progress": 100,
    "create_time": 1709048933,
    "consumed_credit": 5,
    "queuing_num": -1,
    "running_left_time": -1,
    "attempts": [
        {
            "backend": "bfl",
            "claim": 1,
            "started_at": 1709048934.1,
            "ended_at": 1709048939.8,
            "outcome": "success",
            "error": None,
            "served_by": "bfl flux-kontext-pro",
        }
    ],
    "served_by": "bfl flux-kontext-pro",
}

# The rules themselves are easel.domain.parsing's; this describes them.
FILE_SCHEMA = {
    "type": "object",
    "description": "Exactly one of file_token, url or object.",
    "properties": {
        "type": {"type": "string", "description": "advisory; the format is read from the bytes"},
        "file_token": {"type": "string"},
        "url": {"type": "string", "format": "uri"},
        "object": {
            "type": "object",
            "properties": {"bucket": {"type": "string"}, "key": {"type": "string"}},
        },
    },
}
TASK_BODY = JsonBody(
    name="GenerateImage",
    schema={
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": list(TASK_TYPES)},
            "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
            "model_version": {"type": "string", "default": DEFAULT_MODEL},
            "file": {"$ref": "#/components/schemas/File"},
            "files": {"type": "array", "items": {"$ref": "#/components/schemas/File"}},
            "template": {"type": "string"},
            "t_pose": {"type": "boolean", "default": False},
            "sketch_to_render": {"type": "boolean", "default": False},
            "negative_prompt": {
                "type": "string",
                "maxLength": MAX_NEGATIVE_PROMPT_CHARS,
                "description": "text_to_image only.",
            },
            "style_image": {
                "$ref": "#/components/schemas/File",
                "description": "text_to_image only: an image whose style the result takes.",
            },
            "original_task_id": {
                "type": "string",
                "description": "edit_multiview_image only: the multiview task whose views to edit.",
            },
            "prompts": {
                **VIEW_PROMPTS,
                "description": "edit_multiview_image only: one prompt per edited view.",
            },
        },
    },
    components={"File": FILE_SCHEMA},
    examples={
        "text": {"summary": "Text only", "value": {"type": TASK_TYPE, "prompt": "a small cat"}},
        "references": {
            "summary": "Two references named with image[N]",
            "value": {
                "type": TASK_TYPE,
                "model_version": "gemini_2.5_flash_image_preview",
                "prompt": "Use the style of image[1] with colors from image[2]",
                "files": [
                    {"type": "png", "file_token": "ce85f375-3ccc-440b-b847-571588872ec2"},
                    {"type": "jpg", "url": "https://example.com/b.jpg"},
                ],
            },
        },
        "text_to_image": {
            "summary": "Basic text to image (5 credits), with a negative prompt",
            "value": {
                "type": TEXT_TO_IMAGE,
                "prompt": "a lighthouse at dusk",
                "negative_prompt": "people, text",
            },
        },
        "multiview": {
            "summary": "Four views (front, left, back, right) of one image (10 credits)",
            "value": {
                "type": GENERATE_MULTIVIEW,
                "file": {"type": "png", "file_token": "ce85f375-3ccc-440b-b847-571588872ec2"},
            },
        },
        "edit_multiview": {
            "summary": "Edit views of a multiview task (5 credits per view)",
            "value": {
                "type": EDIT_MULTIVIEW,
                "original_task_id": EXAMPLE_ID,
                "prompts": [{"view": "back", "prompt": "add a small backpack"}],
            },
        },
        "template": {
            "summary": "A template with an uploaded object",
            "value": {
                "type": TASK_TYPE,
                "template": "t_pose",
                "file": {"type": "png", "object": {"bucket": "easel", "key": "uploads/…"}},
            },
        },
    },
)


async def json_body(request: Request) -> Any:
    """The request body decoded as JSON (any value): 1003 when it is not JSON, 1004 when a
    string or number in it breaks the text rules (``easel.domain.text``). Every JSON body of the API
    is read here: no route lets FastAPI decode one."""
    return decode_json(await request.body())


JSON = "application/json"


def check_content_type(request: Request, media_type: str, what: str) -> None:
    """1003 (HTTP 415) for a body declared as something other than ``media_type`` (a JSON
    body may also be ``…+json``); a body with no ``Content-Type`` is read as the route reads
    it. v3 routes check it; v2 never did."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    kind = declared.partition(";")[0].strip().lower()
    if kind != media_type and not (media_type == JSON and kind.endswith("+json")):
        raise UnsupportedContentType(
            f"this route reads {what} ({media_type}), and the body is {declared[:100]!r}."
        )


async def json_object(
    request: Request, what: str = "with a 'type'", *, typed: bool = False
) -> dict[str, Any]:
    """The request body as a JSON object, or 1003; ``typed`` (v3): also 1003 for a body
    declared as another media type (:func:`check_content_type`)."""
    if typed:
        check_content_type(request, JSON, "a JSON object")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise MalformedBody(f"the request body must be a JSON object {what}.")
    return body


@router.post(
    "/task",
    summary="Submit a task: generate_image, text_to_image, generate_multiview_image or "
    "edit_multiview_image",
)
@declare(
    errors=[1003, 1004, 2001, 2002, 2003, 2004, 2009, 2010, 2017, 2019, 2000],
    example={"task_id": EXAMPLE_ID},
    body=TASK_BODY,
)
async def create_task(request: Request, caller: CallerDep, runtime: RuntimeDep) -> dict[str, Any]:
    body = await json_object(request)
    task_id = await runtime.service.submit(
        caller, body, idempotency_key=request.headers.get("idempotency-key")
    )
    return ok({"task_id": task_id})


@router.get("/task/{task_id}", summary="Get a task")
@declare(errors=[2001], example=TASK)
async def get_task(
    task_id: str, request: Request, caller: CallerDep, runtime: RuntimeDep
) -> dict[str, Any]:
    view = await runtime.service.view(caller, task_id, str(request.base_url))
    if view is None:
        raise TaskNotFound(f"task {task_id} not found.")
    return ok(view)
