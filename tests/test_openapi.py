"""The OpenAPI document: complete, with examples for every route and every error."""

from __future__ import annotations

from typing import Any

from apptools import Api, running_api, settings_for
from easel.api.openapi import ROUTES


async def document(api: Api) -> dict[str, Any]:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


async def test_every_v2_and_v3_route_is_documented_with_success_and_error_examples(
    tmp_path: Any,
) -> None:
    async with running_api(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'o.db'}")) as api:
        doc = await document(api)
    operations = {
        (method, path): op
        for path, item in doc["paths"].items()
        if path.startswith(("/v2/openapi", "/v3/"))
        for method, op in item.items()
    }
    assert set(operations) == set(ROUTES), set(operations) ^ set(ROUTES)
    for (method, path), op in operations.items():
        codes, data = ROUTES[(method, path)]
        assert "422" not in op["responses"], path
        if data is not None:
            assert "example" in op["responses"]["200"]["content"]["application/json"], path
        listed = {
            example["value"]["code"]
            for status, response in op["responses"].items()
            if status != "200"
            for example in response["content"]["application/json"]["examples"].values()
        }
        assert listed == {*codes, 1000}, (method, path, listed)


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
