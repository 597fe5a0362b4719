"""The OpenAPI document: every route with a success example and an example of each error it
can answer, and the ``generate_image`` request body the handler parses by hand."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from easel.api.webhooks import NewWebhook
from easel.domain import errors

P = "/v2/openapi"
TASK_ID = "ef731ad6-aeb0-4950-9a2e-2298359dfaf8"

EXAMPLE_MESSAGES: dict[int, str] = {
    1000: "unexpected server error (trace 0b9d…)",
    1002: "Authentication failed: unknown or revoked API key.",
    1003: "the request body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
    1004: "prompt is 1100 characters long; the limit is 1024.",
    1005: "this download link is invalid or has expired.",
    1007: "this API key made more than 20 requests per second (bursts up to 40).",
    2000: "This key already has 10 unfinished tasks; the limit is 10.",
    2001: f"task {TASK_ID} not found.",
    2002: "task type 'text_to_model' is not supported.",
    2003: "the uploaded file is empty.",
    2004: "image[1] is WebP, which flux.1_kontext_pro does not accept.",
    2009: "prompt contains a character that is not allowed at position 6: U+1F431 (emoji).",
    2010: "flux.1_kontext_pro costs 5 credits; the balance is 2.",
    2017: "model_version 'flux.2' is not a valid version.",
    2019: "image[1]: file_token 'ce85f375-…' does not name a file uploaded by this account.",
}

TASK = {
    "task_id": TASK_ID,
    "type": "generate_image",
    "status": "success",
    "input": {
        "prompt": "a red fox",
        "model_version": "flux.1_kontext_pro",
        "t_pose": False,
        "sketch_to_render": False,
    },
    "output": {
        "generated_image": f"https://easel.example{P}/outputs/outputs/{TASK_ID}.png"
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
        }
    ],
}

AUTH = [1002, 1007]  # every authenticated request counts against the key's rate limit
ROUTES: dict[tuple[str, str], tuple[list[int], Any]] = {
    ("post", f"{P}/task"): (
        [*AUTH, 1003, 1004, 2002, 2003, 2004, 2009, 2010, 2017, 2019, 2000],
        {"task_id": TASK_ID},
    ),
    ("get", f"{P}/task/{{task_id}}"): ([*AUTH, 2001], TASK),
    ("post", f"{P}/task/{{task_id}}/cancel"): (
        [*AUTH, 2001],
        TASK | {"status": "cancelled", "consumed_credit": 0},
    ),
    ("get", f"{P}/task/{{task_id}}/events"): ([*AUTH, 2001], None),
    ("get", f"{P}/events"): (AUTH, None),
    ("post", f"{P}/upload"): ([*AUTH, 1004, 2003, 2004], {"image_token": TASK_ID}),
    ("post", f"{P}/upload/sts"): ([*AUTH, 1004, 2003, 2004], {"image_token": TASK_ID}),
    ("post", f"{P}/upload/sts/token"): (
        [*AUTH, 1003, 1004, 1005],
        {
            "s3_host": "s3.us-west-2.amazonaws.com",
            "resource_bucket": "easel-uploads",
            "resource_uri": f"prefix/uploads/acct/{TASK_ID}.png",
            "session_token": "FwoG…",
            "sts_ak": "ASIA…",
            "sts_sk": "wJal…",
        },
    ),
    ("get", f"{P}/user/balance"): (AUTH, {"balance": 95, "frozen": 5}),
    ("get", f"{P}/models"): (
        AUTH,
        {
            "default": "flux.1_kontext_pro",
            "models": [
                {
                    "model_version": "flux.1_kontext_pro",
                    "description": "FLUX.1 Kontext [pro]",
                    "credits": 5,
                    "images": "accepts",
                    "max_files": 4,
                    "accepts_webp": False,
                    "served": True,
                    "reason": None,
                    "backends": [
                        {
                            "name": "bfl",
                            "kind": "bfl",
                            "ready": True,
                            "reason": None,
                            "load_state": "nothing to load",
                        }
                    ],
                }
            ],
        },
    ),
    ("get", f"{P}/outputs/{{key}}"): ([1004, 1005], None),  # 1004: expires not an integer
    ("post", f"{P}/webhooks"): ([*AUTH, 1004], {"id": "wh_…", "secret": "whsec_…"}),
    ("get", f"{P}/webhooks"): (AUTH, []),
    ("delete", f"{P}/webhooks/{{webhook_id}}"): ([*AUTH, 2001], {"deleted": True}),
    ("get", f"{P}/webhooks/{{webhook_id}}/deliveries"): ([*AUTH, 1004, 2001], []),  # limit
    ("post", f"{P}/webhooks/{{webhook_id}}/deliveries/{{delivery_id}}/redeliver"): (
        [*AUTH, 2001],
        {"delivery_id": "…", "status": "pending"},
    ),
}

V3_TASK = {
    "task_id": TASK_ID,
    "type": "image_to_image",
    "status": "success",
    "progress": 100,
    "input": {
        "prompt": "a red fox",
        "model_version": "flux.1_kontext_pro",
        "files": [{"file_token": TASK_ID}],
        "t_pose": False,
        "sketch_to_render": False,
    },
    "output": {
        "generated_image_url": f"https://easel.example{P}/outputs/outputs/{TASK_ID}.png"
        "?expires=1709052533&signature=5ac5…"
    },
    "model": "flux.1_kontext_pro",
    "credits_consumed": 5.0,
    "created_at": "2024-02-27T15:48:53Z",
    "completed_at": "2024-02-27T15:48:59Z",
    "running_left_time": -1,
    "queuing_num": -1,
}
V3_GENERATE = [*AUTH, 1003, 1004, 2003, 2004, 2009, 2010, 2017, 2019, 2000]
ROUTES.update(
    {
        ("post", "/v3/generation/text-to-image"): (V3_GENERATE, {"task_id": TASK_ID}),
        ("post", "/v3/generation/image-to-image"): (V3_GENERATE, {"task_id": TASK_ID}),
        ("get", "/v3/tasks/{task_id}"): ([*AUTH, 2001], V3_TASK),
        ("post", "/v3/tasks/list"): (
            [*AUTH, 1003, 1004],
            {"tasks": {TASK_ID: V3_TASK}, "missed": ["0f5e…"]},
        ),
        ("get", "/v3/account/balance"): (AUTH, {"balance": 95.0, "frozen": 5.0}),
        ("get", "/v3/account/usage"): (
            [*AUTH, 1004],
            {
                "items": [
                    {
                        "task_id": TASK_ID,
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
        ),
        ("post", "/v3/files"): ([*AUTH, 1004, 2003, 2004], {"file_token": TASK_ID}),
        ("post", "/v3/files/presign"): (
            [*AUTH, 1003, 1004],
            {
                "file_token": TASK_ID,
                "presigned_url": f"https://easel.example/v3/files/upload/acct/{TASK_ID}"
                "?expires=1709049833&signature=9f2c…",
                "expires_in": 900,
            },
        ),
        ("put", "/v3/files/upload/{account_id}/{token}"): (
            [1004, 1005, 2003, 2004],
            {"file_token": TASK_ID},
        ),
    }
)
V3_BODY_EXAMPLES = {
    "/v3/generation/text-to-image": {
        "text": {"summary": "A prompt", "value": {"prompt": "a small cat", "model": "banana"}}
    },
    "/v3/generation/image-to-image": {
        "references": {
            "summary": "An upload and an earlier task's image, named with image[N]",
            "value": {
                "prompt": "Put the cat of image[1] in the scene of image[2]",
                "model": "flux.1_kontext_pro",
                "inputs": ["ce85f375-3ccc-440b-b847-571588872ec2", TASK_ID],
            },
        },
        "template": {
            "summary": "A template",
            "value": {"template": "t_pose", "input": "https://example.com/a.png"},
        },
    },
}

TASK_BODY_EXAMPLES = {
    "text": {"summary": "Text only", "value": {"type": "generate_image", "prompt": "a small cat"}},
    "references": {
        "summary": "Two references named with image[N]",
        "value": {
            "type": "generate_image",
            "model_version": "gemini_2.5_flash_image_preview",
            "prompt": "Use the style of image[1] with colors from image[2]",
            "files": [
                {"type": "png", "file_token": "ce85f375-3ccc-440b-b847-571588872ec2"},
                {"type": "jpg", "url": "https://example.com/b.jpg"},
            ],
        },
    },
    "template": {
        "summary": "A template with an uploaded object",
        "value": {
            "type": "generate_image",
            "template": "t_pose",
            "file": {"type": "png", "object": {"bucket": "easel", "key": "uploads/…"}},
        },
    },
}

TASK_BODY_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["generate_image"]},
        "prompt": {"type": "string", "maxLength": 1024},
        "model_version": {"type": "string", "default": "flux.1_kontext_pro"},
        "file": {"$ref": "#/components/schemas/File"},
        "files": {"type": "array", "items": {"$ref": "#/components/schemas/File"}},
        "template": {"type": "string"},
        "t_pose": {"type": "boolean", "default": False},
        "sketch_to_render": {"type": "boolean", "default": False},
    },
}
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
V3_BODY_SCHEMA = {
    "type": "object",
    "description": "v3 generation options; options this server has no use for (size, "
    "aspect_ratio, quality, negative_prompt …) are accepted and ignored.",
    "properties": {
        "prompt": {"type": "string", "maxLength": 1024},
        "model": {"type": "string", "default": "flux.1_kontext_pro"},
        "input": {"type": "string", "description": "image-to-image: a file_token, URL or task_id"},
        "inputs": {"type": "array", "items": {"type": "string"}},
        "template": {"type": "string"},
        "t_pose": {"type": "boolean", "default": False},
        "sketch_to_render": {"type": "boolean", "default": False},
    },
}
FORMAT_BODY = {
    "type": "object",
    "required": ["format"],
    "properties": {"format": {"type": "string", "enum": ["png", "jpg", "jpeg", "webp"]}},
}
# The other routes whose JSON body the handler reads by hand (so FastAPI cannot describe it).
HAND_PARSED_BODIES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (f"{P}/upload/sts/token", FORMAT_BODY, {"format": "png"}),
    ("/v3/files/presign", FORMAT_BODY, {"format": "png"}),
    (
        "/v3/tasks/list",
        {
            "type": "object",
            "required": ["task_ids"],
            "properties": {
                "task_ids": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": 100,
                }
            },
        },
        {"task_ids": [TASK_ID]},
    ),
]
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "suggestion"],
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "suggestion": {"type": "string"},
    },
}


def _error_classes() -> dict[int, list[type[errors.EaselError]]]:
    found: dict[int, list[type[errors.EaselError]]] = {}
    for cls in vars(errors).values():
        if (
            isinstance(cls, type)
            and issubclass(cls, errors.EaselError)
            and cls.code in (EXAMPLE_MESSAGES)
            and cls is not errors.RouteNotSupported  # only the undocumented /v3 catch-all
        ):
            found.setdefault(cls.code, []).append(cls)
    return found


def _add_errors(operation: dict[str, Any], codes: list[int]) -> None:
    classes = _error_classes()
    for code in [*codes, 1000]:
        for cls in classes[code]:
            response = operation["responses"].setdefault(
                str(cls.status),
                {
                    "description": "Error",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"},
                            "examples": {},
                        }
                    },
                },
            )
            examples = (
                response.setdefault("content", {})
                .setdefault("application/json", {"schema": {"$ref": "#/components/schemas/Error"}})
                .setdefault("examples", {})
            )
            examples[f"{code} {cls.__name__}"] = {
                "value": {
                    "code": code,
                    "message": EXAMPLE_MESSAGES[code],
                    "suggestion": cls.default_suggestion,
                }
            }


def build_schema(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(
        {"Error": ERROR_SCHEMA, "File": FILE_SCHEMA, "GenerateImage": TASK_BODY_SCHEMA}
    )
    for item in schema["paths"].values():
        for operation in item.values():
            # Request validation errors answer 400 / 1004 in the envelope, never 422.
            operation["responses"].pop("422", None)
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for (method, path), (codes, data) in ROUTES.items():
        operation = schema["paths"].get(path, {}).get(method)
        if operation is None:
            continue
        if data is not None:
            ok = operation["responses"].setdefault("200", {"description": "OK"})
            ok.setdefault("content", {}).setdefault("application/json", {})["example"] = {
                "code": 0,
                "data": data,
            }
        _add_errors(operation, codes)
    task = schema["paths"][f"{P}/task"]["post"]
    task["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/GenerateImage"},
                "examples": TASK_BODY_EXAMPLES,
            }
        },
    }
    for path, examples in V3_BODY_EXAMPLES.items():
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/V3Generation"},
                    "examples": examples,
                }
            },
        }
    components["V3Generation"] = V3_BODY_SCHEMA
    components["NewWebhook"] = NewWebhook.model_json_schema()
    for path, body_schema, example in HAND_PARSED_BODIES:
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema, "example": example}},
        }
    return schema


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
