"""The OpenAPI document: FastAPI's, with what each route declares (:mod:`easel.api.facts`):
a success example, an example of each error it can answer, and the JSON body its handler
parses by hand. Here is only what every route shares: the error schema and one example
message per protocol code."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import RouteContext

from easel.api.envelope import is_v3
from easel.api.facts import EXAMPLE_ID, RouteFacts, declared, error_codes
from easel.domain import errors, v3

EXAMPLE_MESSAGES: dict[int, str] = {
    1000: "unexpected server error (trace 0b9d…)",
    1002: "Authentication failed: unknown or revoked API key.",
    1003: "the request body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
    1004: "prompt is 1100 characters long; the limit is 1024.",
    1005: "this download link is invalid or has expired.",
    1007: "this API key made more than 20 requests per second (bursts up to 40).",
    2000: "This key already has 10 unfinished tasks; the limit is 10.",
    2001: f"task {EXAMPLE_ID} not found.",
    2002: "task type 'text_to_model' is not supported.",
    2003: "the uploaded file is empty.",
    2004: "image[1] is WebP, which flux.1_kontext_pro does not accept.",
    2009: "prompt contains a character that is not allowed at position 6: U+1F431 (emoji).",
    2010: "flux.1_kontext_pro costs 5 credits; the balance is 2.",
    2017: "model_version 'flux.2' is not a valid version.",
    2019: "image[1]: file_token 'ce85f375-…' does not name a file uploaded by this account.",
}

ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "suggestion"],
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "suggestion": {"type": "string"},
        "status": {"type": "string", "enum": ["error"], "description": "v3 routes only."},
        "request_id": {
            "type": "string",
            "description": "v3 routes only: the request's X-Request-ID, else its trace id.",
        },
    },
}
# Refusals no operation documents: routing's (any path, any method) and the /v3 catch-all's.
_UNDOCUMENTED = (errors.RouteNotSupported, errors.MethodNotAllowed, errors.UnknownRoute)


def _error_classes(v3_route: bool) -> dict[int, list[type[errors.EaselError]]]:
    """The refusals of each documented code; v3's own (a body of another media type) on
    ``v3_route`` alone."""
    found: dict[int, list[type[errors.EaselError]]] = {}
    for cls in vars(errors).values():
        if (
            isinstance(cls, type)
            and issubclass(cls, errors.EaselError)
            and cls.code in (EXAMPLE_MESSAGES)
            and cls not in _UNDOCUMENTED
            and (v3_route or cls is not errors.UnsupportedContentType)
        ):
            found.setdefault(cls.code, []).append(cls)
    return found


def _add_errors(operation: dict[str, Any], codes: list[int], v3_route: bool) -> None:
    """An example of each refusal of ``codes`` (and 1000) under its HTTP status; on a /v3
    route in v3's envelope, with v3's code and status where they differ from v2's."""
    classes = _error_classes(v3_route)
    for code in [*codes, 1000]:
        for cls in classes[code]:
            shown, status = v3.error_code(cls) if v3_route else (code, cls.status)
            response = operation["responses"].setdefault(
                str(status),
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
            value: dict[str, Any] = {
                "code": shown,
                "message": EXAMPLE_MESSAGES[code],
                "suggestion": cls.default_suggestion,
            }
            if v3_route:
                value.update(status="error", request_id=EXAMPLE_ID)
            examples[f"{shown} {cls.__name__}"] = {"value": value}


def build_schema(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for item in schema["paths"].values():
        for operation in item.values():
            # Request validation errors answer 400 / 1004 in the envelope, never 422.
            operation["responses"].pop("422", None)
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for route, facts in declared(app.routes):
        for method in sorted(route.methods or ()):
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                _add_facts(operation, route, facts, components)
    schema["components"]["schemas"] = dict(sorted(components.items()))
    return schema


def _add_facts(
    operation: dict[str, Any], route: RouteContext, facts: RouteFacts, components: dict[str, Any]
) -> None:
    """What the route declared: its success example, its errors, its hand-parsed body."""
    v3_route = is_v3(route.path_format or "")
    if facts.example is not None:
        ok = operation["responses"].setdefault("200", {"description": "OK"})
        envelope = {"code": 0, "status": "success"} if v3_route else {"code": 0}
        ok.setdefault("content", {}).setdefault("application/json", {})["example"] = {
            **envelope,
            "data": facts.example,
        }
    _add_errors(operation, error_codes(route, facts), v3_route)
    if facts.body is not None:
        operation["requestBody"] = facts.body.request_body()
        components.update(facts.body.schemas())


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
