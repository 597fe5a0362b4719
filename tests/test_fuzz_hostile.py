"""Property tests: hostile strings and numbers in every field, header and path parameter of the
task, upload, v3, webhook, event and account routes, on SQLite and PostgreSQL (hypothesis).

Each drawn request (``hostile_strategies``) goes to the real app in process (``asgi_raw``: it
sends what HTTP clients refuse to), and its answer must be:

* never a 5xx, nor an exception out of the app (nor out of a WebSocket);
* on refusal, the protocol envelope with a code that goes with the HTTP status, and 1004
  when the request holds unstorable text or an integer past 64 bits, or a header holds a
  control character (computed by the strategies, not by the server's code);
* a refusal moves no credit and stores nothing (balance, frozen credits, tasks, files,
  webhooks and ledger rows unchanged);
* an accepted task is readable (v2, v3, v3 list) and its cancellation refunds it in full:
  no paid task is left that cannot be read.

Derandomized with bounded examples; ``EASEL_FUZZ_SCALE=10`` runs ten times as many. Each test
prints its figures (requests sent, 5xx), quoted in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apptools import State, png, statuses_of
from asgi_raw import Answer, connect
from hostile_app import Served, numeric_dns_only, serve
from hostile_strategies import (
    BAD_HOSTS,
    HEADER_BYTES,
    HOSTS,
    ID,
    IDEMPOTENCY_KEYS,
    JSON_ROUTES,
    QUERY_VALUE,
    TASK_ID,
    TEXT,
    TOKEN,
    has_control,
    query,
    unstorable,
    write,
)

SCALE = int(os.environ.get("EASEL_FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=150 * SCALE,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


class Run:
    """One app on one database, driven from hypothesis' synchronous examples."""

    def __init__(self, runner: asyncio.Runner, served: Served, label: str) -> None:
        self.runner, self.served, self.label = runner, served, label
        self.sent: Counter[str] = Counter()
        self.substitutes = {TOKEN: "", TASK_ID: ""}
        self.before: State | None = None  # the state before the last request sent

    def __call__(self, check: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.runner.run(check())

    async def send(self, method: str, path: str, *, must_refuse: bool, **kw: Any) -> Answer:
        """Send, check the answer (module docstring), and that a refusal changed nothing."""
        before = self.before = await self.served.state()
        answer = await self.served.call(method, path, **kw)
        self.sent["requests"] += 1
        code = answer.json()["code"] if answer.status >= 400 else 0
        self.sent[f"{answer.status}/{code}"] += 1
        # 501 / 2002 is the documented answer of a v3 route this server does not serve.
        server_error = answer.status >= 500 and not _not_served(answer)
        self.sent["5xx"] += server_error
        assert answer.raised is None and not server_error, (method, path, kw, answer)
        if answer.status >= 400:
            body = answer.json()
            assert {"code", "message", "suggestion"} <= set(body), body
            assert answer.status in statuses_of(body["code"], path), body
            assert await self.served.state() == before, (method, path, kw, body)
        if must_refuse:
            assert (answer.status, answer.json()["code"]) == (400, 1004), (path, kw, answer)
        return answer

    async def readable(self, task_id: str) -> None:
        """An accepted task reads through every view, and cancelling it gives back all that
        its submission held."""
        for method, path, body in [
            ("GET", f"/v2/openapi/task/{task_id}", b""),
            ("GET", f"/v3/tasks/{task_id}", b""),
            ("POST", "/v3/tasks/list", b'{"task_ids": ["%s"]}' % task_id.encode()),
            ("POST", f"/v2/openapi/task/{task_id}/cancel", b""),
        ]:
            answer = await self.served.call(method, path, body=body, json_body=bool(body))
            assert (answer.status, answer.raised) == (200, None), (path, answer)
            answer.json()  # and it is JSON
        after, before = await self.served.state(), self.before
        assert before is not None and (after.balance, after.frozen) == (
            before.balance,
            before.frozen,
        ), (before, after)

    def report(self) -> None:
        """Print the figures; every example sent its request."""
        statuses = ", ".join(f"{k}: {n}" for k, n in sorted(self.sent.items()) if "/" in k)
        print(
            f"\n{self.label}: {self.sent['requests']} requests, {self.sent['5xx']} 5xx ({statuses})"
        )
        assert self.sent["requests"] >= FUZZ.max_examples and self.sent["5xx"] == 0


def _not_served(answer: Answer) -> bool:
    return answer.status == 501 and answer.json()["code"] == 2002


@pytest.fixture
def run(database_url: str, request: pytest.FixtureRequest) -> Iterator[Run]:
    """The app on ``database_url`` with an upload and a queued task of the key (what the
    sentinels TOKEN and TASK_ID stand for), in an event loop of its own that hypothesis'
    examples run on one at a time."""
    with asyncio.Runner() as runner, numeric_dns_only():
        context = serve(database_url)
        served = runner.run(context.__aenter__())
        try:
            found = Run(runner, served, request.node.name)
            found.substitutes[TOKEN] = runner.run(
                served.runtime.service.upload(served.caller, png())
            )
            submitted = runner.run(
                served.call(
                    "POST",
                    "/v2/openapi/task",
                    body=b'{"type": "generate_image", "prompt": "x"}',
                    json_body=True,
                )
            )
            found.substitutes[TASK_ID] = submitted.json()["data"]["task_id"]
            yield found
        finally:
            runner.run(context.__aexit__(None, None, None))


@FUZZ
@given(data=st.data())
def _json_body(run: Run, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(JSON_ROUTES)))
    raw, must_refuse = write(data.draw(JSON_ROUTES[path]), run.substitutes)
    idempotency = data.draw(IDEMPOTENCY_KEYS)
    headers = (
        []
        if idempotency is None
        else [(b"idempotency-key", idempotency.encode("utf-8", "surrogatepass"))]
    )

    async def check() -> None:
        answer = await run.send(
            "POST",
            path,
            body=raw,
            json_body=True,
            headers=headers,
            must_refuse=must_refuse or (idempotency is not None and has_control(headers[0][1])),
        )
        if answer.status == 200 and "task_id" in answer.json()["data"]:
            await run.readable(answer.json()["data"]["task_id"])
        if answer.status == 200 and path.endswith("webhooks"):
            hook = answer.json()["data"]["id"]
            await run.served.call("DELETE", f"/v2/openapi/webhooks/{hook}")

    run(check)


def test_any_json_body_is_answered_in_the_envelope(run: Run) -> None:
    _json_body(run)
    run.report()


# -- path parameters ------------------------------------------------------------------------------

PATHS = [
    ("GET", "/v2/openapi/task/{}"),
    ("POST", "/v2/openapi/task/{}/cancel"),
    ("GET", "/v2/openapi/task/{}/events"),
    ("GET", "/v3/tasks/{}"),
    ("GET", "/v2/openapi/outputs/{}"),
    ("PUT", "/v3/files/upload/{}/{}"),
    ("DELETE", "/v2/openapi/webhooks/{}"),
    ("GET", "/v2/openapi/webhooks/{}/deliveries"),
    ("POST", "/v2/openapi/webhooks/{}/deliveries/{}/redeliver"),
    ("POST", "/v3/{}"),
]


@FUZZ
@given(data=st.data())
def _path(run: Run, data: st.DataObject) -> None:
    method, template = data.draw(st.sampled_from(PATHS))
    ids = [data.draw(ID) for _ in range(template.count("{}"))]
    path = template.format(*(run.substitutes.get(i, i) for i in ids))
    q = b"expires=99999999999&signature=x" if "outputs" in path or "upload/" in path else b""

    async def check() -> None:
        await run.send(method, path, query=q, must_refuse=unstorable(path))

    run(check)


def test_any_path_parameter_is_answered_in_the_envelope(run: Run) -> None:
    _path(run)
    run.report()


# -- query parameters -----------------------------------------------------------------------------

QUERIES = [
    ("GET", "/v2/openapi/outputs/outputs/a.png", ("expires", "signature")),
    ("PUT", "/v3/files/upload/acct/tok", ("expires", "signature")),
    ("GET", "/v3/account/usage", ("limit", "offset")),
    ("GET", "/v2/openapi/webhooks/w/deliveries", ("limit",)),
]


@FUZZ
@given(data=st.data())
def _query(run: Run, data: st.DataObject) -> None:
    method, path, names = data.draw(st.sampled_from(QUERIES))
    pairs = [(name, data.draw(QUERY_VALUE)) for name in names if data.draw(st.booleans())]
    pairs += data.draw(st.lists(st.tuples(TEXT, QUERY_VALUE), max_size=1))
    # The query is read as UTF-8 with errors replaced: only a NUL survives as a flaw.
    nul = any("\x00" in name + value for name, value in pairs)

    async def check() -> None:
        await run.send(method, path, query=query(pairs), must_refuse=nul)

    run(check)


def test_any_query_parameter_is_answered_in_the_envelope(run: Run) -> None:
    _query(run)
    run.report()


# -- headers --------------------------------------------------------------------------------------

HEADER_ROUTES = [
    ("GET", "/v2/openapi/events", b""),
    ("GET", "/v2/openapi/task/{task}/events", b""),
    ("GET", "/v2/openapi/task/{task}", b""),
    ("POST", "/v2/openapi/task", b'{"type": "generate_image", "prompt": "a fox"}'),
    (
        "POST",
        "/v2/openapi/webhooks",
        b'{"url": "http://127.0.0.1:9/h", "events": ["task.success"]}',
    ),
    ("GET", "/v2/openapi/user/balance", b""),
    ("GET", "/v3/account/balance", b""),
]
HEADER_NAMES = [b"last-event-id", b"idempotency-key", b"content-type", b"authorization", b"x-any"]


@FUZZ
@given(data=st.data())
def _headers(run: Run, data: st.DataObject) -> None:
    method, template, body = data.draw(st.sampled_from(HEADER_ROUTES))
    path = template.replace("{task}", run.substitutes[TASK_ID])
    headers = [(name, data.draw(HEADER_BYTES)) for name in HEADER_NAMES if data.draw(st.booleans())]
    bad_host = data.draw(st.booleans())
    headers.append((b"host", data.draw(BAD_HOSTS if bad_host else HOSTS)))
    event_id = dict(headers).get(b"last-event-id", b"").decode("latin-1").strip()
    at_the_door = bad_host or any(has_control(value) for _, value in headers)  # before the key
    odd_event_id = "events" in path and event_id != "" and not _event_number(event_id)
    own_key = b"authorization" not in dict(headers)  # a drawn one is refused first (1002)

    async def check() -> None:
        answer = await run.send(
            method,
            path,
            body=body,
            json_body=bool(body),
            headers=headers,
            must_refuse=at_the_door or (odd_event_id and own_key),
        )
        if method == "POST" and answer.status == 200 and "task_id" in answer.json()["data"]:
            await run.readable(answer.json()["data"]["task_id"])
        if answer.status == 200 and path.endswith("webhooks"):
            await run.served.call("DELETE", f"/v2/openapi/webhooks/{answer.json()['data']['id']}")

    run(check)


def _event_number(text: str) -> bool:
    """The Last-Event-ID rule: ASCII digits of an event number below 2^63 (checking the
    length first: ``int`` of 5,000 digits raises here as it did in the server)."""
    return len(text) <= 19 and text.isascii() and text.isdigit() and int(text) < 2**63


def test_any_header_is_answered_in_the_envelope(run: Run) -> None:
    _headers(run)
    run.report()


# -- uploads --------------------------------------------------------------------------------------

UPLOADS = ["/v2/openapi/upload", "/v2/openapi/upload/sts", "/v3/files"]
RAW_TEXT = TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=16)


def _usually(sound: bytes, hostile: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.integers(0, 3).flatmap(lambda n: hostile if n == 0 else st.just(sound))


PART = st.tuples(
    _usually(b"file", RAW_TEXT),  # the field's name
    _usually(b"a.png", RAW_TEXT),  # its filename
    _usually(png(), st.just(png()[:100]) | st.binary(max_size=64)),  # its bytes
)


def multipart(parts: list[tuple[bytes, bytes, bytes]]) -> bytes:
    body = b""
    for name, filename, content in parts:
        disposition = b'form-data; name="%s"; filename="%s"' % (name, filename)
        body += b"--B\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + content + b"\r\n"
    return body + b"--B--\r\n"


@FUZZ
@given(path=st.sampled_from(UPLOADS), parts=st.lists(PART, min_size=1, max_size=2))
def _upload(run: Run, path: str, parts: list[tuple[bytes, bytes, bytes]]) -> None:
    headers = [(b"content-type", b"multipart/form-data; boundary=B")]

    async def check() -> None:
        before = await run.served.state()
        await run.send("POST", path, body=multipart(parts), headers=headers, must_refuse=False)
        after = await run.served.state()
        assert (after.balance, after.frozen, after.tasks) == (
            before.balance,
            before.frozen,
            before.tasks,
        )

    run(check)


def test_any_upload_is_answered_in_the_envelope(run: Run) -> None:
    _upload(run)
    run.report()


# -- WebSocket watch ------------------------------------------------------------------------------


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 2))
@given(
    template=st.sampled_from(
        ["/v2/openapi/task/watch/{}", "/v2/openapi/task/watch/all/{}", "/v2/openapi/task/watch/all"]
    ),
    parameter=st.one_of(ID, st.sampled_from(["2026-01-31T12:00:00Z", "0001-01-01", "²"])),
)
def _watch(run: Run, template: str, parameter: str) -> None:
    path = template.format(run.substitutes.get(parameter, parameter))

    async def check() -> None:
        closed = await connect(run.served.app, path, headers=[run.served.auth], settle_s=0.15)
        run.sent["requests"] += 1
        assert closed.raised is None, (path, closed)
        if unstorable(path):
            assert (closed.accepted, closed.code) == (False, 1008), (path, closed)
            assert closed.reason.startswith("1004: "), closed

    run(check)


def test_any_watched_path_is_answered_or_closed_with_a_code(run: Run) -> None:
    _watch(run)
    print(f"\n{run.label}: {run.sent['requests']} WebSocket connections, none raised")
