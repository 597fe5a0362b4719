"""Hostile strings and numbers, one case each, on SQLite and PostgreSQL: text that cannot be
stored (lone surrogates, NUL), integers past 64 bits, odd digits in ``Last-Event-ID`` and
unbounded ``Host`` headers get 400 / 1004 in the envelope, move no credit and store nothing;
a task that holds such text from before the rules can still be read.

Requests go through ``asgi_raw``: an HTTP client would refuse to send most of them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from apptools import engine_of, png
from asgi_raw import Answer, connect
from easel.config import Settings
from easel.domain.text import decode_json
from easel.store.records import NewTask
from easel.store.tables import webhooks
from hostile_app import Served, serve

TASK = "/v2/openapi/task"
WEBHOOKS = "/v2/openapi/webhooks"
HOOK_URL = "http://127.0.0.1:9/hook"  # loopback is allowed by ``serve``; nothing listens


@pytest.fixture
async def served(database_url: str) -> AsyncIterator[Served]:
    async with serve(database_url) as found:
        yield found


def assert_1004(answer: Answer, names: str = "") -> dict[str, Any]:
    assert answer.raised is None, repr(answer.raised)
    assert answer.status == 400, (answer.status, answer.body[:300])
    body: dict[str, Any] = answer.json()
    assert body["code"] == 1004 and body["suggestion"], body
    assert body["message"].startswith(names), body
    return body


async def post_json(served: Served, path: str, body: Any) -> Answer:
    """``body`` as ``json.dumps`` writes it: a lone surrogate becomes its ``\\ud800`` escape."""
    return await served.call("POST", path, body=json.dumps(body).encode(), json_body=True)


# -- text that cannot be stored, in a JSON body -------------------------------------------------


def bodies(flawed: str, token: str) -> list[tuple[str, dict[str, Any], str]]:
    """(route, body, the field the refusal names) for every string field of every JSON route."""
    task: dict[str, Any] = {"type": "generate_image", "prompt": "a fox"}
    return [
        (TASK, {**task, "file": {"file_token": flawed}}, "file.file_token"),
        (TASK, {**task, "file": {"type": flawed, "file_token": token}}, "file.type"),
        (TASK, {**task, "files": [{"file_token": token}, {"url": flawed}]}, "files[1].url"),
        (TASK, {**task, "file": {"object": {"bucket": "easel", "key": flawed}}}, "file.object.key"),
        (TASK, {**task, "prompt": f"a {flawed} fox"}, "prompt"),
        (TASK, {**task, "model_version": flawed}, "model_version"),
        (TASK, {**task, "template": flawed}, "template"),
        (TASK, {**task, f"extra{flawed}": 1}, "a key of the request body"),
        ("/v3/generation/image-to-image", {"prompt": "x", "input": flawed}, "input"),
        ("/v3/generation/image-to-image", {"prompt": "x", "inputs": [token, flawed]}, "inputs[1]"),
        ("/v3/generation/text-to-image", {"prompt": "x", "model": flawed}, "model"),
        ("/v3/tasks/list", {"task_ids": [flawed]}, "task_ids[0]"),
        (WEBHOOKS, {"url": HOOK_URL + flawed, "events": ["task.success"]}, "url"),
        (WEBHOOKS, {"url": HOOK_URL, "events": [flawed]}, "events[0]"),
        ("/v2/openapi/upload/sts/token", {"format": flawed}, "format"),
        ("/v3/files/presign", {"format": flawed}, "format"),
    ]


@pytest.mark.parametrize(
    "flawed",
    [chr(0xD800), chr(0xDFFF), f"x{chr(0xDC80)}y", "\x00"],  # chr(): ruff reads "\ud800" as U+FFFD
    ids=["high-surrogate", "low-surrogate", "inside-text", "nul"],
)
async def test_text_that_cannot_be_stored_is_1004_naming_its_field_and_charges_nothing(
    served: Served, flawed: str
) -> None:
    """Lone surrogates gave 500 in file_token, v3 input/inputs/task_ids; in ``file.type`` the
    task was accepted and charged, and then could not be read (500 on every read)."""
    token = await served.runtime.service.upload(served.caller, png())
    before = await served.state()
    for path, body, field in bodies(flawed, token):
        answer = await post_json(served, path, body)
        message = assert_1004(answer, field)["message"]
        assert "NUL" in message if flawed == "\x00" else "surrogate" in message, message
        assert await served.state() == before, (path, body)


async def test_utf8_encoded_surrogates_are_not_json_text(served: Served) -> None:
    """``json.loads`` of bytes decodes with ``surrogatepass``: the bytes ED A0 80 became a
    lone surrogate and reached the store."""
    before = await served.state()
    raw = b'{"type": "generate_image", "prompt": "x", "file": {"file_token": "\xed\xa0\x80"}}'
    answer = await served.call("POST", TASK, body=raw, json_body=True)
    assert (answer.status, answer.json()["code"]) == (400, 1003), answer
    assert await served.state() == before


async def test_a_task_stored_with_a_lone_surrogate_before_the_rule_is_still_readable(
    served: Served,
) -> None:
    """Defence in depth: what the store holds from before the door checked is scrubbed on
    the way out (U+FFFD), so every read of the task answers."""
    task_id = str(uuid.uuid4())
    echo = {"prompt": "x", "files": [{"type": "\ud800", "file_token": "t"}], "\udfff": "\x00"}
    await served.runtime.store.tasks.submit(
        served.caller,
        NewTask(task_id, "generate_image", "flux.1_kontext_pro", echo, "x", (), 5),
        max_unfinished=10,
        retry_after_s=1,
    )
    reads = [
        await served.call("GET", f"{TASK}/{task_id}"),
        await served.call("GET", f"/v3/tasks/{task_id}"),
        await post_json(served, "/v3/tasks/list", {"task_ids": [task_id]}),
        await served.call("POST", f"{TASK}/{task_id}/cancel"),
    ]
    for answer in reads:
        assert (answer.status, answer.raised) == (200, None), answer
    scrubbed = {"prompt": "x", "files": [{"type": "\ufffd", "file_token": "t"}], "\ufffd": "\ufffd"}
    assert reads[0].json()["data"]["input"] == scrubbed
    assert reads[3].json()["data"]["status"] == "cancelled"


async def test_every_json_body_of_the_document_is_read_by_the_one_decoder(served: Served) -> None:
    """Every operation documented with a JSON body applies the text rules before its own: no
    route lets FastAPI decode a body past them (as POST /webhooks did)."""
    document = served.app.openapi()
    routes = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert len(routes) >= 7, routes
    for method, path in routes:
        answer = await served.call(method, path, body=b'{"x": "\\ud800"}', json_body=True)
        assert_1004(answer, "x holds a lone UTF-16 surrogate")


# -- numbers --------------------------------------------------------------------------------------

HUGE = ["1" * 5000, "-" + "9" * 5000, str(2**63), str(-(2**63) - 1), str(2**64)]


@pytest.mark.parametrize(
    "digits", HUGE, ids=["5000-digits", "-5000-digits", "2^63", "-2^63-1", "2^64"]
)
@pytest.mark.parametrize(
    ("path", "template", "field"),
    [
        (TASK, '{"type": "generate_image", "prompt": "x", "t_pose": %s}', "t_pose"),
        (TASK, '{"type": "generate_image", "prompt": "x", "files": [{"url": %s}]}', "files[0].url"),
        ("/v3/generation/text-to-image", '{"prompt": "x", "n": %s}', "n"),
        ("/v3/tasks/list", '{"task_ids": [%s]}', "task_ids[0]"),
        (WEBHOOKS, '{"url": "http://127.0.0.1:9/", "events": ["task.success"], "x": %s}', "x"),
        ("/v2/openapi/upload/sts/token", '{"format": %s}', "format"),
    ],
    ids=["t_pose", "files-url", "v3-unknown-field", "task_ids", "webhook-unknown-field", "format"],
)
async def test_an_integer_past_64_bits_in_a_json_body_is_1004_naming_its_field(
    served: Served, path: str, template: str, field: str, digits: str
) -> None:
    """5,000 digits passed Python's int-string limit inside ``json.loads``: a 500."""
    before = await served.state()
    answer = await served.call("POST", path, body=(template % digits).encode(), json_body=True)
    assert "beyond 64 bits" in assert_1004(answer, field)["message"]
    assert await served.state() == before


def test_the_largest_64_bit_integers_are_numbers_like_any_other() -> None:
    assert decode_json(b"[9223372036854775807, -9223372036854775808]") == [2**63 - 1, -(2**63)]
    assert decode_json('{"ü": "\\ud83d\\ude00 ²"}'.encode()) == {"ü": "😀 ²"}  # a pair is text


# -- Last-Event-ID --------------------------------------------------------------------------------

ODD_EVENT_IDS = [
    b"\xb2",  # "²": str.isdigit() is true, int() raises
    "٣".encode(),  # Arabic-Indic three, as its UTF-8 bytes (read as Latin-1: "Ù£")
    b"9" * 5000,
    str(2**63).encode(),
    str(2**64).encode(),
    b"-1",
    b"12abc",
]


@pytest.mark.parametrize("value", ODD_EVENT_IDS)
async def test_an_odd_last_event_id_is_1004_before_the_stream_starts(
    served: Served, value: bytes
) -> None:
    """Non-ASCII digits and 5,000 digits gave 500; past 2^63 the stream started and its query
    failed inside it (an unretrieved task exception)."""
    created = await post_json(served, TASK, {"type": "generate_image", "prompt": "x"})
    task_id = created.json()["data"]["task_id"]
    for path in ("/v2/openapi/events", f"{TASK}/{task_id}/events"):
        answer = await served.call("GET", path, headers=[(b"last-event-id", value)])
        assert "Last-Event-ID" in assert_1004(answer)["message"]


async def test_a_last_event_id_of_the_server_resumes_the_stream(served: Served) -> None:
    for value in (b"0", b" 42 ", str(2**63 - 1).encode(), b""):
        answer = await served.call("GET", "/v2/openapi/events", headers=[(b"last-event-id", value)])
        assert (answer.status, answer.raised) == (200, None), (value, answer)


# -- Host, and the URLs built from it -------------------------------------------------------------

BAD_HOSTS = [b"a" * 600, b"evil.example/x?y#", b"user@evil.example", b"", b"h\xe9te", b"a b"]


@pytest.mark.parametrize(
    "host", BAD_HOSTS, ids=["600-chars", "path", "userinfo", "empty", "latin-1", "space"]
)
async def test_a_host_that_is_not_a_host_is_1004_and_stores_no_webhook(
    served: Served, host: bytes
) -> None:
    """A 600-character Host was stored as the webhook's base URL: 500 on PostgreSQL
    (varchar(512)), and a link to anywhere on SQLite."""
    before = await served.state()
    body = json.dumps({"url": HOOK_URL, "events": ["task.success"]}).encode()
    answer = await served.call(
        "POST", WEBHOOKS, body=body, json_body=True, headers=[(b"host", host)]
    )
    assert "Host" in assert_1004(answer)["message"]
    assert await served.state() == before


@pytest.mark.parametrize(
    "host", [b"images.example.com", b"127.0.0.1:8000", b"[::1]:8443", b"a" * 253]
)
async def test_a_host_name_or_address_is_served(served: Served, host: bytes) -> None:
    answer = await served.call("GET", WEBHOOKS, headers=[(b"host", host)])
    assert answer.status == 200, answer


async def test_a_webhook_stores_public_url_when_it_is_set_whatever_the_host(
    database_url: str,
) -> None:
    async with serve(database_url, public_url="https://images.example.com") as served:
        body = json.dumps({"url": HOOK_URL, "events": ["task.success"]}).encode()
        answer = await served.call(
            "POST", WEBHOOKS, body=body, json_body=True, headers=[(b"host", b"evil.example")]
        )
        assert answer.status == 200, answer
        async with engine_of(served.runtime.store).connect() as conn:
            stored = await conn.scalar(select(webhooks.c.base_url))
        assert stored == "https://images.example.com"


# -- path, query and headers at the door ---------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "names"),
    [
        ([(b"idempotency-key", b"a\x00b")], "the idempotency-key header"),
        ([(b"idempotency-key", b"a\nb")], "the idempotency-key header"),
        ([(b"x-anything", b"\x1b[31m")], "the x-anything header"),
        ([(b"content-length", b"\xb2")], "the Content-Length header"),
        ([(b"content-length", b"9" * 5000)], "the Content-Length header"),
    ],
)
async def test_a_header_that_is_not_text_is_1004(
    served: Served, headers: list[tuple[bytes, bytes]], names: str
) -> None:
    """A NUL in Idempotency-Key reached PostgreSQL (500); "²" as Content-Length passed
    ``str.isdigit`` and ``int()`` raised (500)."""
    before = await served.state()
    body = json.dumps({"type": "generate_image", "prompt": "x"}).encode()
    answer = await served.call("POST", TASK, body=body, json_body=True, headers=headers)
    assert_1004(answer, names)
    assert await served.state() == before


async def test_a_nul_in_a_query_parameter_is_1004_naming_it(served: Served) -> None:
    answer = await served.call("GET", "/v3/account/usage", query=b"limit=1&offset=%00")
    assert assert_1004(answer, "query parameter 'offset'")["request_id"]


@pytest.mark.parametrize("path", [f"{TASK}/\ud800", f"{TASK}/a\x00b/cancel", "/v3/tasks/\udfff"])
async def test_a_path_that_is_not_text_is_1004(served: Served, path: str) -> None:
    assert_1004(await served.call("POST" if path.endswith("cancel") else "GET", path), "the path")


async def test_a_websocket_with_a_host_that_is_not_a_host_is_closed_with_1004(
    served: Served,
) -> None:
    closed = await connect(
        served.app, "/v2/openapi/task/watch/all", headers=[served.auth, (b"host", b"a" * 600)]
    )
    assert (closed.accepted, closed.code, closed.raised) == (False, 1008, None)
    assert closed.reason.startswith("1004: the Host header")


@pytest.mark.parametrize(
    "url", ["ftp://images.example.com", "https://", "https://a.b/?q=1", "https://a.b/" + "x" * 250]
)
def test_public_url_is_a_bounded_http_url(url: str) -> None:
    """It is stored (a webhook's base of output links) and starts every output URL."""
    with pytest.raises(ValueError, match="is not an http\\(s\\) URL of at most 256 characters"):
        Settings(public_url=url)
    assert Settings(public_url="https://images.example.com/easel").public_url is not None
    assert Settings(public_url="").public_url is None
