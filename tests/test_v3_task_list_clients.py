"""``POST /v3/tasks/list`` as each official Tripo v3 SDK sends it and decodes the answer.

The four SDKs send the same request, ``{"task_ids": […]}`` with ``Authorization: Bearer …``,
and differ in the answer they can read: ``tripo3d`` 1.x iterates ``data.tasks.items()``
(``BatchTaskResult.from_dict``), while the Go SDK decodes ``data`` into ``struct{ Tasks []Task }``,
the Rust SDK into ``TaskList { tasks: Vec<Task> }`` and the JS SDK declares
``Promise<{ tasks: Task[] }>``. Only their default User-Agents tell them apart.

Each SDK's decoder is written down below as a JSON Schema read from its source (types.go and
client.go of VAST-AI-Research/tripo-go-sdk, src/models.rs and src/client.rs of tripo-rust-sdk,
types/index.d.ts of tripo-js-sdk, tripo3d/models.py of ``tripo3d`` 1.0.0): a field the struct
declares must have the struct's type; a field it does not declare is ignored, as Go's
encoding/json and serde ignore unknown fields. Draft 4 is used because its ``integer`` refuses
``5.0``, as Go's ``int64`` and serde's ``i64`` do. ``tripo3d`` 1.0.0 itself runs against a live
server in ``test_e2e_sdk_v3``; the JS and Go SDKs are not on the registries reachable here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import pytest

from apptools import ALL_MODELS, Api, running_api, settings_for
from easel.domain import v3

MISSING = "00000000-0000-4000-8000-000000000000"
INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
STATUSES = ["queued", "running", "success", "failed", "cancelled", "unknown", "banned", "expired"]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A Go field: JSON null leaves the zero value and is no error."""
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


GO_STRING = _nullable({"type": "string"})
# types.go: Task and TaskOutput; client.go ListTasks: `var result struct{ Tasks []Task }`.
GO_OUTPUT = _object(
    {
        **{
            name: GO_STRING
            for name in (
                "model",
                "model_url",
                "base_model",
                "pbr_model",
                "rendered_image",
                "rendered_image_url",
                "generated_image_url",
                "rig_type",
            )
        },
        "model_urls": _nullable({"type": "array", "items": GO_STRING}),
        "riggable": _nullable({"type": "boolean"}),
    }
)
GO_TASK = _object(
    {
        "task_id": GO_STRING,
        "type": GO_STRING,
        "status": GO_STRING,  # TaskStatus is a string type: any value decodes
        "progress": _nullable(INT64),
        "output": _nullable(GO_OUTPUT),
        "credits_consumed": _nullable({"type": "number"}),
        "created_at": GO_STRING,
        "completed_at": GO_STRING,
        "running_left_time": _nullable(INT64),
        "queuing_num": _nullable(INT64),
        "error_code": _nullable(INT64),
        "error_message": GO_STRING,
    }
)
GO_LIST = _object({"tasks": _nullable({"type": "array", "items": GO_TASK})})

# src/models.rs: TaskList { #[serde(default)] tasks: Vec<Task> }; Task's three plain fields are
# required, every Option<…> takes null, TaskStatus is a closed lowercase enum.
RUST_STRING = _nullable({"type": "string"})
RUST_I64 = _nullable(INT64)
RUST_OUTPUT = _object(
    {
        **{
            name: RUST_STRING
            for name in (
                "model",
                "model_url",
                "base_model",
                "pbr_model",
                "rendered_image",
                "rendered_image_url",
                "rig_type",
            )
        },
        "model_urls": _nullable({"type": "array", "items": {"type": "string"}}),
        "riggable": _nullable({"type": "boolean"}),
    }
)
RUST_TASK = _object(
    {
        "task_id": {"type": "string"},
        "type": {"type": "string"},
        "status": {"enum": STATUSES},
        "progress": _nullable({"type": "integer", "minimum": 0, "maximum": 2**32 - 1}),
        "output": _nullable(RUST_OUTPUT),
        "create_time": RUST_I64,
        "running_left_time": RUST_I64,
        "queuing_num": RUST_I64,
        "error_code": RUST_I64,
        "error_msg": RUST_STRING,
    },
    required=("task_id", "type", "status"),
)
RUST_LIST = _object({"tasks": {"type": "array", "items": RUST_TASK}})

# types/index.d.ts: listTasks(taskIds): Promise<{ tasks: Task[] }>; optional (`?`) fields may
# be absent but not null.
JS_TASK = _object(
    {
        "task_id": {"type": "string"},
        "type": {"type": "string"},
        "status": {"enum": STATUSES},
        "progress": {"type": "number"},
        "input": {"type": "object"},
        "output": _object(
            {
                name: {"type": "string"}
                for name in ("model", "model_url", "generated_image_url", "rendered_image_url")
            }
        ),
        **{
            name: {"type": "number"}
            for name in ("credits_consumed", "running_left_time", "queuing_num", "error_code")
        },
        **{name: {"type": "string"} for name in ("created_at", "completed_at", "error_message")},
    },
    required=("task_id", "type", "status"),
)
JS_LIST = _object({"tasks": {"type": "array", "items": JS_TASK}}, required=("tasks",))

# tripo3d 1.0.0 BatchTaskResult.from_dict: `(data.get('tasks') or {}).items()`, keeping the
# values that are dicts; `list(data.get('missed') or [])`.
PYTHON_LIST = _object(
    {
        "tasks": {"type": "object", "additionalProperties": {"type": "object"}},
        "missed": {"type": "array", "items": {"type": "string"}},
    },
    required=("tasks",),
)


@dataclass(frozen=True)
class Sdk:
    name: str
    user_agent: str  # what the SDK sends when the app sets none
    schema: dict[str, Any]  # the list answer's `data` its decoder accepts

    def decode(self, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The tasks by id, as the SDK's caller gets them (in the answer's order)."""
        jsonschema_rs.Draft4Validator(self.schema).validate(data)
        tasks = data["tasks"]
        if isinstance(tasks, dict):
            return dict(tasks)
        return {task["task_id"]: task for task in tasks}


SDKS = [
    Sdk("go", "tripo3d-sdk-go/0.1.0", GO_LIST),
    Sdk("rust", "tripo3d-sdk-rust/0.1.0", RUST_LIST),
    Sdk("js", "@vastai/tripo-sdk/0.2.0", JS_LIST),
    Sdk("python", "tripo3d-python/1.0.0", PYTHON_LIST),
]


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    """Every model served by a placeholder, except ``gpt_4o``, whose backend always fails."""
    models: dict[str, Any] = {model: {"backends": ["dry"]} for model in ALL_MODELS}
    models["gpt_4o"] = {"backends": ["broken"]}
    backends = {"dry": {"kind": "placeholder"}, "broken": {"kind": "placeholder", "fail_rate": 1}}
    async with running_api(settings_for(database_url, backends=backends, models=models)) as api:
        yield api


async def finished_tasks(api: Api) -> tuple[str, str]:
    """A successful and a failed v3 task of the key: ``(success_id, failed_id)``."""
    ids = []
    for model in ("flux.1_dev", "gpt_4o"):
        response = await api.client.post(
            "/v3/generation/text-to-image", json={"prompt": "a kite", "model": model}
        )
        assert response.status_code == 200, response.text
        ids.append(response.json()["data"]["task_id"])
        await api.wait(ids[-1])
    return ids[0], ids[1]


async def listed(api: Api, user_agent: str, task_ids: list[str]) -> dict[str, Any]:
    response = await api.client.post(
        "/v3/tasks/list", json={"task_ids": task_ids}, headers={"User-Agent": user_agent}
    )
    assert response.status_code == 200, response.text
    assert response.json()["code"] == 0
    data: dict[str, Any] = response.json()["data"]
    return data


def without_links(task: dict[str, Any]) -> dict[str, Any]:
    """A task without its output links, whose signature carries the time they were made."""
    return {**task, "output": sorted(task["output"])}


@pytest.mark.parametrize("sdk", SDKS, ids=[sdk.name for sdk in SDKS])
async def test_every_official_sdk_decodes_the_list_it_gets(api: Api, sdk: Sdk) -> None:
    done, failed = await finished_tasks(api)
    data = await listed(api, sdk.user_agent, [failed, MISSING, done, failed])
    tasks = sdk.decode(data)
    assert list(tasks) == [failed, done]  # the order asked, each task once
    assert data["missed"] == [MISSING]
    assert tasks[done]["status"] == "success"
    assert tasks[failed]["status"] == "failed"
    assert isinstance(tasks[failed]["error_code"], int)
    assert tasks[failed]["error_message"]
    for task_id, task in tasks.items():  # the same v3 view as GET /v3/tasks/{id}
        alone = (await api.client.get(f"/v3/tasks/{task_id}")).json()["data"]
        assert without_links(task) == without_links(alone)


async def test_other_clients_get_hosted_tripos_keyed_object_which_go_cannot_decode(
    api: Api,
) -> None:
    done, _ = await finished_tasks(api)
    for user_agent in ("python-httpx/0.28.1", "curl/8.5.0", "Go-http-client/1.1"):
        data = await listed(api, user_agent, [done])
        assert list(data["tasks"]) == [done]
        assert data["tasks"][done]["task_id"] == done
    go = next(sdk for sdk in SDKS if sdk.name == "go")
    with pytest.raises(jsonschema_rs.ValidationError) as refused:
        go.decode(data)  # "cannot unmarshal object into … []tripo3d.Task"
    assert refused.value.instance_path == ["tasks"]


@pytest.mark.parametrize(
    ("user_agent", "as_array"),
    [
        ("tripo3d-sdk-go/0.1.0", True),
        ("@vastai/tripo-sdk/0.2.0", True),
        ("tripo3d-sdk-rust/0.1.0", True),
        ("my-app/2.1 tripo3d-sdk-go/0.1.0", True),  # an app's own token before the SDK's
        ("tripo3d-sdk-go", True),
        ("tripo3d-python/1.0.0", False),
        ("tripo3d-sdk-gopher/1.0", False),
        ("my-tripo3d-sdk-go/1.0", False),
        ("Mozilla/5.0 (X11; Linux x86_64) tripo3d-sdk-go-ish", False),
        ("", False),
        (None, False),
    ],
)
def test_the_array_goes_to_the_sdks_that_name_themselves(
    user_agent: str | None, as_array: bool
) -> None:
    assert v3.wants_task_array(user_agent) is as_array


async def test_the_list_routes_errors_are_the_other_v3_routes_errors(api: Api) -> None:
    no_key = {"Authorization": ""}
    refused = await api.client.post("/v3/tasks/list", json={"task_ids": [MISSING]}, headers=no_key)
    balance = await api.client.get("/v3/account/balance", headers=no_key)
    assert refused.status_code == balance.status_code
    assert refused.json()["code"] == balance.json()["code"]
    for response in (refused, await api.client.post("/v3/tasks/list", json={"task_ids": "x"})):
        body = response.json()
        assert set(body) == set(balance.json())
        assert body["request_id"] == response.headers["X-Tripo-Trace-ID"]
