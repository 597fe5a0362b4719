"""Fuzz the HTTP API from its own OpenAPI document with schemathesis, in process on SQLite.

Every operation of ``/openapi.json`` gets generated requests, sent with a real key: schema-valid
ones ("positive") and, where the operation has input that can be broken, schema-violating ones
("negative"). Each answer must

* never be a server error (5xx), nor an exception out of the app,
* keep the envelope: ``{"code": 0, "data": …}`` on success, ``{"code", "message",
  "suggestion"}`` with a protocol code that goes with the HTTP status on errors (``/v3`` adds
  ``status`` to both, ``request_id`` to errors, and has v3's codes), except the routes
  documented as plain HTTP (probes, metrics, and on success the signed output download and the
  event streams),
* use a documented status code (where the operation documents its errors) and content type,
  and refuse schema-violating input with a 4xx.

A stateful run follows links added to a copy of the document (submit → get, cancel, events;
webhook → delete, deliveries), so generated sequences also reach tasks and webhooks that exist.

``positive_data_acceptance`` stays off: the document is deliberately looser than the rules (a
prompt *or* a template; the multipart ``file`` field is optional so that a missing one gets a
1004 that names it), so a schema-valid request may be refused with a 4xx by design.

Example counts are bounded and derandomized: CI sees the same cases on every run.
``EASEL_FUZZ_SCALE=10`` runs ten times as many (a deeper, slower run).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import itertools
import json
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    status_code_conformance,
)

from apptools import ALL_MODELS, Api, png, running_api, settings_for, statuses_of
from easel.api.app import create_app
from easel.api.envelope import TRACE_HEADER
from easel.domain.webhooks import EVENT_TYPES
from easel.storage.signing import UrlSigner
from easel.store import open_store

AnyCase = Case[Any]
SCALE = int(os.environ.get("EASEL_FUZZ_SCALE", "1"))
EXAMPLES = {GenerationMode.POSITIVE: 100 * SCALE, GenerationMode.NEGATIVE: 100 * SCALE}
SEQUENCES = 40 * SCALE
STEPS_PER_SEQUENCE = 15
STREAM_TIMEOUT_S = 1.0  # an event stream may never end: keep what it sent by then
REQUEST_TIMEOUT_S = 30.0  # generous: the worker shares the SQLite file and the cores

# Documented as plain HTTP, not the envelope.
PLAIN_ROUTES = {"GET /healthz", "GET /readyz", "GET /metrics"}
EVENT_STREAMS = {"GET /v2/openapi/events", "GET /v2/openapi/task/{task_id}/events"}
PLAIN_ON_SUCCESS = {
    "GET /v2/openapi/outputs/{key}": "image/",
    **dict.fromkeys(EVENT_STREAMS, "text/event-stream"),
}


def _document() -> dict[str, Any]:
    """The document as the app serves it (building it opens no database)."""
    document: dict[str, Any] = create_app(settings_for("sqlite+aiosqlite:///unopened.db")).openapi()
    return document


DOCUMENT = _document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config())


def _operations() -> dict[str, APIOperation[Any, Any, Any, Any]]:
    operations = {}
    for result in SCHEMA.get_all_operations():
        assert isinstance(result, Ok), result  # an operation schemathesis cannot read
        operations[result.ok().label] = result.ok()
    return operations


OPERATIONS = _operations()


def _operation(case: AnyCase) -> dict[str, Any]:
    operation: dict[str, Any] = DOCUMENT["paths"][case.operation.path][
        case.operation.method.lower()
    ]
    return operation


def _can_be_negated(label: str) -> bool:
    """Whether the operation has input that a negative case can break (a body or a query
    parameter); a plain string path parameter alone cannot be made schema-invalid."""
    method, path = label.split(" ", 1)
    operation = DOCUMENT["paths"][path][method.lower()]
    parameters = operation.get("parameters", [])
    return "requestBody" in operation or any(p["in"] != "path" for p in parameters)


# -- checks ---------------------------------------------------------------------------------------


def envelope_conformance(ctx: CheckContext, response: Response, case: AnyCase) -> bool | None:
    """The protocol envelope and the trace id, on every answer not documented as plain HTTP."""
    label = case.operation.label
    content_type = (response.headers.get("content-type") or [""])[0]
    assert response.headers.get(TRACE_HEADER.lower()), f"{label}: no {TRACE_HEADER} header"
    if label in PLAIN_ROUTES:
        return None
    if response.status_code < 400 and label in PLAIN_ON_SUCCESS:
        expected = PLAIN_ON_SUCCESS[label]
        assert content_type.startswith(expected), f"{label}: {content_type!r} on success"
        return None
    assert content_type.startswith("application/json"), f"{label}: {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict), f"{label}: the body is not an object: {body!r}"
    on_v3 = case.operation.path.startswith("/v3/")
    if response.status_code < 400:
        keys = {"code", "status", "data"} if on_v3 else {"code", "data"}
        assert set(body) == keys and body["code"] == 0, f"{label}: {body!r}"
        assert not on_v3 or body["status"] == "success", f"{label}: {body!r}"
        return True
    keys = {"code", "message", "suggestion"} | ({"status", "request_id"} if on_v3 else set())
    assert set(body) == keys, f"{label}: not the error envelope: {body!r}"
    assert not on_v3 or body["status"] == "error", f"{label}: {body!r}"
    assert isinstance(body["message"], str) and body["message"].strip(), f"{label}: {body!r}"
    assert isinstance(body["suggestion"], str) and body["suggestion"].strip(), f"{label}: {body!r}"
    assert response.status_code in statuses_of(body["code"], case.operation.path), (
        f"{label}: code {body['code']!r} does not go with HTTP {response.status_code}: {body!r}"
    )
    return True


def status_code_conformance_where_documented(
    ctx: CheckContext, response: Response, case: AnyCase
) -> bool | None:
    """Every status must be documented, on operations that document their errors at all."""
    if not any(status[0] in "45" for status in _operation(case)["responses"]):
        return None
    return status_code_conformance(ctx, response, case)


CHECKS = [
    not_a_server_error,
    envelope_conformance,
    status_code_conformance_where_documented,
    content_type_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


# -- the app under test ---------------------------------------------------------------------------


@dataclass
class Served:
    app: FastAPI
    keys: list[str]  # keys[0] for the stateless runs; one more per stateful sequence

    def headers(self, key: str | None = None) -> dict[str, str]:
        """Fresh each time: schemathesis adds its own headers to the dict it is given."""
        return {"Authorization": f"Bearer {key or self.keys[0]}"}


async def _new_keys(database_url: str, count: int) -> list[str]:
    store = await open_store(database_url)
    try:
        return [await store.accounts.create_key(f"fuzz{i}", 1_000_000) for i in range(count)]
    finally:
        await store.close()


_real_getaddrinfo = socket.getaddrinfo


def _numeric_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    """Resolve IP literals only. Generated URLs (``files[].url``, webhook URLs) name arbitrary
    hosts; a test must send no DNS queries, so every name fails as an unknown one does."""
    name = host.decode() if isinstance(host, bytes) else host
    try:
        ipaddress.ip_address(name)
    except ValueError:
        raise socket.gaierror(socket.EAI_NONAME, f"{name!r}: names do not resolve here") from None
    return _real_getaddrinfo(host, port, *args, **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One real app on a SQLite file with a placeholder backend, and keys made beforehand in
    the same file. schemathesis runs the app, lifespan included (worker, dispatcher,
    janitor), on its own event loop thread."""
    path: Path = tmp_path_factory.mktemp("fuzz") / "easel.db"
    url = f"sqlite+aiosqlite:///{path}"
    keys = asyncio.run(_new_keys(url, 1 + 2 * SEQUENCES))
    # No rate limit: this fuzzes the routes, not the limiter (and stays deterministic).
    # Loopback is allowed so that the stateful run can register a webhook.
    settings = settings_for(url, rate_limit_per_s=0, allow_outbound_cidrs=["127.0.0.0/8"])
    app = create_app(settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", _numeric_getaddrinfo)
        try:
            yield Served(app, keys)
        finally:
            asgi.shutdown_lifespans()


def _timeout(case: AnyCase) -> float:
    return STREAM_TIMEOUT_S if case.operation.label in EVENT_STREAMS else REQUEST_TIMEOUT_S


CASES_RUN: Counter[str] = Counter()


@pytest.mark.parametrize(
    ("label", "mode"),
    [
        (label, mode)
        for label in sorted(OPERATIONS)
        for mode in GenerationMode
        if mode is GenerationMode.POSITIVE or _can_be_negated(label)
    ],
)
def test_generated_requests_get_enveloped_documented_answers(
    label: str, mode: GenerationMode, served: Served
) -> None:
    @given(case=OPERATIONS[label].as_strategy(mode))
    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: AnyCase) -> None:
        CASES_RUN[f"{label} {mode.value}"] += 1
        headers = served.headers()
        response = case.call(app=served.app, headers=headers, timeout=_timeout(case))
        case.validate_response(response, checks=CHECKS, headers=served.headers())

    run()
    assert CASES_RUN[f"{label} {mode.value}"] > 0


# -- stateful: submit → get / cancel / events, webhook → delete / deliveries ----------------------

TASK = "/v2/openapi/task/{task_id}"
HOOK = "/v2/openapi/webhooks/{webhook_id}"
LINKS: dict[tuple[str, str], tuple[str, list[tuple[str, str, str]]]] = {
    # source operation: (the data field it answers, [(method, target path, parameter)])
    ("post", "/v2/openapi/task"): (
        "task_id",
        [
            ("get", TASK, "path.task_id"),
            ("post", TASK + "/cancel", "path.task_id"),
            ("get", TASK + "/events", "path.task_id"),
            ("get", "/v3/tasks/{task_id}", "path.task_id"),
        ],
    ),
    ("post", "/v2/openapi/webhooks"): (
        "id",
        [("delete", HOOK, "path.webhook_id"), ("get", HOOK + "/deliveries", "path.webhook_id")],
    ),
}
HOOK_URL = "http://127.0.0.1:9/hook"  # loopback, allowed above; nothing listens there


def _linked_document() -> dict[str, Any]:
    """A copy of the document with OpenAPI links, and request bodies narrowed to what a
    well-behaved client sends, so that sequences create tasks and webhooks to follow."""
    document = copy.deepcopy(DOCUMENT)
    paths = document["paths"]
    for (method, path), (field, targets) in LINKS.items():
        links = paths[path][method]["responses"]["200"].setdefault("links", {})
        for target_method, target, parameter in targets:
            if target in paths:
                pointer = target.replace("~", "~0").replace("/", "~1")
                links[f"{target_method} {target}"] = {
                    "operationRef": f"#/paths/{pointer}/{target_method}",
                    "parameters": {parameter: f"$response.body#/data/{field}"},
                }
    schemas = document["components"]["schemas"]
    schemas["GenerateImage"] = {
        "type": "object",
        "required": ["type", "prompt"],
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "enum": ["generate_image"]},
            "prompt": {"type": "string", "pattern": "^[a-z]{1,10}( [a-z]{1,10}){0,3}$"},
            "model_version": {"type": "string", "enum": list(ALL_MODELS)},
            "t_pose": {"type": "boolean"},
            "sketch_to_render": {"type": "boolean"},
        },
    }
    schemas["NewWebhook"] = {
        "type": "object",
        "required": ["url", "events"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "enum": [HOOK_URL]},
            "events": {
                "type": "array",
                "items": {"type": "string", "enum": list(EVENT_TYPES)},
                "minItems": 1,
            },
        },
    }
    return document


# The narrowed bodies are the test's, not the server's rules: a body outside them may well be
# valid, so refusing schema-violating input is checked by the stateless run only.
SEQUENCE_CHECKS = [check for check in CHECKS if check is not negative_data_rejection]


def test_linked_sequences_get_enveloped_documented_answers(served: Served) -> None:
    schema = schemathesis.openapi.from_dict(_linked_document(), config=schemathesis.Config())
    fresh_keys = itertools.cycle(served.keys[1:])
    steps: Counter[str] = Counter()

    class Sequences(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # A key of its own per sequence: what one sequence sees does not depend on what
            # earlier ones left behind, so hypothesis generates consistently.
            self.key = next(fresh_keys)

        def get_call_kwargs(self, case: AnyCase) -> dict[str, Any]:
            return {
                "app": served.app,
                "headers": served.headers(self.key),
                "timeout": _timeout(case),
            }

        def validate_response(
            self,
            response: Response,
            case: AnyCase,
            additional_checks: list[Any] | None = None,
            **kwargs: Any,
        ) -> None:
            steps[f"{case.operation.label} {response.status_code}"] += 1
            case.validate_response(
                response, checks=SEQUENCE_CHECKS, headers=served.headers(self.key)
            )

    Sequences.run(
        settings=settings(
            max_examples=SEQUENCES,
            stateful_step_count=STEPS_PER_SEQUENCE,
            # The server's state outlives a sequence, so a failing one cannot be replayed
            # and shrunk faithfully: report it as found.
            phases=[Phase.generate],
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # The links were followed: sequences reached tasks and webhooks that they had created.
    assert steps[f"GET {TASK} 200"] > 0
    assert steps[f"GET {TASK}/events 200"] > 0
    assert steps[f"DELETE {HOOK} 200"] > 0


# -- regressions: what the fuzzing found ----------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}")) as api:
        yield api


def assert_error(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "suggestion"} and body["code"] == code, body


@pytest.mark.parametrize("signature", ["é" * 64, "\u00a0", "0" * 63 + "\U0001f600"])
async def test_a_signature_with_non_ascii_characters_is_refused_not_a_crash(
    api: Api, signature: str
) -> None:
    """``hmac.compare_digest`` raises TypeError for non-ASCII text: this was a 500."""
    assert not UrlSigner("secret", 60).verify("outputs/a.png", 2**40, signature, now=0)
    query: dict[str, str | int] = {"expires": int(time.time()) + 3600, "signature": signature}
    download = await api.client.get("/v2/openapi/outputs/outputs/a.png", params=query)
    assert_error(download, 403, 1005)
    upload = await api.client.put("/v3/files/upload/acct/tok", params=query, content=png())
    assert upload.status_code == 403 and upload.json()["code"] == 1005, upload.text


async def test_a_usage_offset_past_a_64_bit_integer_is_refused_not_a_crash(api: Api) -> None:
    """SQLite cannot bind an integer above 2**63 - 1 (OverflowError): this was a 500."""
    await api.submit(prompt="a red fox")
    too_far = await api.client.get("/v3/account/usage", params={"offset": 2**63})
    assert too_far.status_code == 400 and too_far.json()["code"] == 1004, too_far.text
    farthest = await api.client.get("/v3/account/usage", params={"offset": 2**63 - 1})
    assert farthest.status_code == 200, farthest.text
    assert farthest.json()["data"]["items"] == []


async def test_an_event_stream_whose_client_leaves_while_it_waits_ends_cleanly(
    tmp_path: Path,
) -> None:
    """A client leaving an idle stream cancels it while the next event is awaited in a task;
    closing the event generator under that task raised "aclose(): asynchronous generator is
    already running" out of the app."""
    app = create_app(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}"))
    async with app.router.lifespan_context(app):
        key = await app.state.runtime.store.accounts.create_key("sse", 10)
        requested, started, left = False, asyncio.Event(), asyncio.Event()
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
                started.set()

        async def leave_once_waiting() -> None:
            await started.wait()
            await asyncio.sleep(0.3)  # the stream now waits for the event log's next event
            left.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v2/openapi/events",
            "raw_path": b"/v2/openapi/events",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {key}".encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        leaving = asyncio.create_task(leave_once_waiting())
        async with asyncio.timeout(10):
            await app(scope, receive, send)  # raised RuntimeError before the fix
        await leaving
        assert statuses == [200]


def test_the_document_names_plain_content_types_and_the_400_of_validated_parameters() -> None:
    """Found by content-type and status-code conformance: /metrics and the event streams
    were documented as JSON, and parameters FastAPI validates (400 / 1004) had no 400."""
    paths = DOCUMENT["paths"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    for stream in ("/v2/openapi/events", "/v2/openapi/task/{task_id}/events"):
        assert list(paths[stream]["get"]["responses"]["200"]["content"]) == ["text/event-stream"]
    validated = [
        f"{method} {path}"
        for path, item in paths.items()
        for method, operation in item.items()
        if any(p["in"] == "query" for p in operation.get("parameters", []))
    ]
    assert validated, "no operation with query parameters left to check"
    for label in validated:
        method, path = label.split(" ", 1)
        examples = paths[path][method]["responses"]["400"]["content"]["application/json"]
        assert any(name.startswith("1004 ") for name in examples["examples"]), label
