"""The OpenAPI document: complete, with examples for every route and every error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from apptools import Api, running_api, settings_for
from easel.api.app import create_app
from easel.api.facts import declared, error_codes
from easel.domain import errors, v3

# The codes v3 answers for v2's, where they differ.
V3_CODES = {
    errors.AuthenticationFailed.code: v3.error_code(errors.AuthenticationFailed)[0],
    errors.FileNotFound.code: v3.error_code(errors.FileNotFound)[0],
}


def built_app() -> FastAPI:
    """An app that is built but not started (no database is opened)."""
    return create_app(settings_for("sqlite+aiosqlite:///unopened.db"))


async def document(api: Api) -> dict[str, Any]:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def test_every_v2_and_v3_route_is_documented_with_success_and_error_examples() -> None:
    app = built_app()
    doc = app.openapi()
    routes = {
        (method.lower(), route.path_format): (route, facts)
        for route, facts in declared(app.routes)
        for method in route.methods or ()
    }
    operations = {
        (method, path): op
        for path, item in doc["paths"].items()
        if path.startswith(("/v2/openapi", "/v3/"))
        for method, op in item.items()
    }
    assert set(operations) == set(routes), set(operations) ^ set(routes)
    for (method, path), op in operations.items():
        route, facts = routes[(method, path)]
        assert "422" not in op["responses"], path
        if facts.example is not None:
            assert "example" in op["responses"]["200"]["content"]["application/json"], path
        listed = {
            example["value"]["code"]
            for status, response in op["responses"].items()
            if status != "200"
            for example in response["content"]["application/json"]["examples"].values()
        }
        codes = {*error_codes(route, facts), 1000}
        if path.startswith("/v3/"):
            codes = {V3_CODES.get(code, code) for code in codes}
        assert listed == codes, (method, path, listed)


def test_v3_routes_document_v3_envelopes_and_codes() -> None:
    doc = built_app().openapi()
    operation = doc["paths"]["/v3/generation/text-to-image"]["post"]
    responses = operation["responses"]
    assert responses["200"]["content"]["application/json"]["example"]["status"] == "success"
    unauthorized = responses["401"]["content"]["application/json"]["examples"]
    assert [example["value"]["code"] for example in unauthorized.values()] == [2]
    for status, response in responses.items():
        if status == "200":
            continue
        for example in response["content"]["application/json"]["examples"].values():
            assert example["value"]["status"] == "error", (status, example)
            assert example["value"]["request_id"], (status, example)
    assert "415" in responses  # a body that is not JSON: 1003
    v2 = doc["paths"]["/v2/openapi/task"]["post"]["responses"]
    assert "415" not in v2
    for example in v2["401"]["content"]["application/json"]["examples"].values():
        assert set(example["value"]) == {"code", "message", "suggestion"}
        assert example["value"]["code"] == 1002


def test_a_route_that_authenticates_lists_1002_and_1007_without_declaring_them() -> None:
    doc = built_document()
    responses = doc["paths"]["/v2/openapi/user/balance"]["get"]["responses"]
    assert (
        "1002 AuthenticationFailed" in responses["401"]["content"]["application/json"]["examples"]
    )
    assert "1007 RateLimited" in responses["429"]["content"]["application/json"]["examples"]
    download = doc["paths"]["/v2/openapi/outputs/{key}"]["get"]["responses"]  # a signed URL
    assert "401" not in download and "429" not in download


async def test_the_task_body_is_described_with_examples(tmp_path: Any) -> None:
    async with running_api(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'o.db'}")) as api:
        doc = await document(api)
    body = doc["paths"]["/v2/openapi/task"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/GenerateImage"}
    assert {"text", "references", "template"} <= set(body["examples"])
    errors = doc["paths"]["/v2/openapi/task"]["post"]["responses"]
    assert (
        "2009 InvalidPromptCharacters" in errors["400"]["content"]["application/json"]["examples"]
    )
    assert "2000 TooManyUnfinishedTasks" in errors["429"]["content"]["application/json"]["examples"]


# -- the document, operation by operation -------------------------------------------------------

# What the routes declare, as the document showed it when their facts moved beside them; a
# change here is a change of the published API. After an intended one, rewrite the file with
# `python tests/test_openapi.py` and review its diff.
SNAPSHOT = Path(__file__).with_name("openapi_operations.json")


def built_document() -> dict[str, Any]:
    document: dict[str, Any] = built_app().openapi()
    return document


def operation_facts(doc: dict[str, Any]) -> dict[str, Any]:
    """Per operation: the error examples each status lists (in order), the success example
    and the request body; then the component schemas those refer to."""
    operations = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            success = responses.get("200", {}).get("content", {}).get("application/json", {})
            operations[f"{method.upper()} {path}"] = {
                "errors": {
                    status: list(response["content"]["application/json"]["examples"])
                    for status, response in responses.items()
                    if status != "200"
                },
                "example": success.get("example"),
                "body": op.get("requestBody"),
            }
    return {"operations": operations, "schemas": doc["components"]["schemas"]}


def test_every_operation_keeps_its_errors_examples_and_body() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    actual = operation_facts(built_document())
    assert actual["schemas"] == expected["schemas"]
    assert list(actual["operations"]) == list(expected["operations"])
    for name, facts in expected["operations"].items():
        assert actual["operations"][name] == facts, name


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(operation_facts(built_document()), indent=1) + "\n")
