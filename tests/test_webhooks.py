"""Webhooks: registration, signed delivery from the outbox, retries, the log, redelivery.

A receiver on loopback verifies every request with ``standardwebhooks``. API tests run the
real app (its dispatcher uses the default retry policy: the first attempt is immediate); the
retry tests run a dispatcher of their own with a schedule of fractions of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apptools import ALL_MODELS, Api, engine_of, running_api, settings_for
from easel.domain.accounts import Caller
from easel.domain.tasks import Status
from easel.domain.webhooks import EVENT_TYPES, Delivery
from easel.outbound import OutboundPolicy
from easel.runtime import Runtime, open_runtime
from easel.services.webhooks import DAY_S, Dispatcher, RetryPolicy, new_secret, task_renderer
from easel.store import events
from easel.store.records import NewTask
from easel.store.webhooks import WebhookStore
from loopback import serve_app

LOOPBACK = ["127.0.0.0/8"]


@dataclass
class Receiver:
    """The far side: records each request; answers ``answers`` in turn, then ``default``."""

    url: str = ""
    answers: list[int] = field(default_factory=list)
    default: int = 200
    delay_s: float = 0.0  # before each answer
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        self.received.append((await request.body(), dict(request.headers)))
        await asyncio.sleep(self.delay_s)
        return Response(status_code=self.answers.pop(0) if self.answers else self.default)

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every payload received, each checked against its signature."""
        return [Webhook(secret).verify(body, headers) for body, headers in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    app = Starlette(routes=[Route("/hook", got.endpoint, methods=["POST"])])
    with serve_app(app) as base:
        got.url = f"{base}/hook"
        yield got


async def eventually(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


# -- the retry policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "elapsed_s", "delay"),
    [
        (1, 0, 5),  # first failure: 5 s
        (2, 5, 30),
        (3, 35, 120),
        (4, 155, 600),
        (5, 755, 1800),
        (6, 2555, 3600),
        (7, 6155, 7200),
        (8, 13355, 14400),  # then every 4 h …
        (12, 70955, 14400),
        (13, 85355, None),  # … until the next one would fall past 24 h: dead
        (1, DAY_S, None),
    ],
)
def test_back_off_follows_the_schedule_within_a_day(
    failures: int, elapsed_s: float, delay: float | None
) -> None:
    assert RetryPolicy().delay(failures, elapsed_s) == delay


def test_the_default_policy_makes_thirteen_attempts_within_24_hours() -> None:
    policy, at, failures = RetryPolicy(), 0.0, 0
    while (delay := policy.delay(failures + 1, at)) is not None:
        failures, at = failures + 1, at + delay
    assert (failures + 1, at) == (13, 85355)


# -- the API and the in-app dispatcher ----------------------------------------------------


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    models: dict[str, Any] = {m: {"backends": ["dry"]} for m in ALL_MODELS}
    models["gpt_4o"] = {"backends": ["broken"]}  # every gpt_4o task fails
    backends = {"dry": {"kind": "placeholder"}, "broken": {"kind": "placeholder", "fail_rate": 1}}
    settings = settings_for(
        database_url, allow_outbound_cidrs=LOOPBACK, backends=backends, models=models
    )
    async with running_api(settings) as api:
        yield api


async def register(api: Api, url: str, *events: str, key: str | None = None) -> dict[str, Any]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    body = {"url": url, "events": list(events)}
    response = await api.client.post("/v2/openapi/webhooks", json=body, headers=headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def log_of(api: Api, webhook_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/v2/openapi/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def settled_log(api: Api, webhook_id: str) -> list[dict[str, Any]]:
    """The delivery log once no delivery is pending any more."""
    async with asyncio.timeout(15):
        while True:
            log = await log_of(api, webhook_id)
            if all(d["status"] != "pending" for d in log):
                return log
            await asyncio.sleep(0.02)


async def finished_task(api: Api, **body: Any) -> str:
    task_id: str = (await api.submit(prompt="hook", **body)).json()["data"]["task_id"]
    await api.wait(task_id)
    return task_id


async def test_a_success_is_delivered_once_signed_with_the_task_object(
    api: Api, receiver: Receiver
) -> None:
    hook = await register(api, receiver.url, "task.success")
    assert hook["secret"].startswith("whsec_")
    task_id = await finished_task(api)
    await eventually(lambda: len(receiver.received) == 1)
    await asyncio.sleep(0.3)  # several dispatcher rounds: still one request
    [payload] = receiver.verified(hook["secret"])
    assert payload["type"] == "task.success"
    assert payload["timestamp"].endswith("Z")
    assert payload["data"]["task_id"] == task_id
    assert payload["data"]["status"] == "success"
    assert payload["data"]["output"]["generated_image"].startswith("http")
    [delivery] = await settled_log(api, hook["id"])
    assert receiver.received[0][1]["webhook-id"] == delivery["id"]
    assert (delivery["event"], delivery["task_id"], delivery["status"]) == (
        "task.success",
        task_id,
        "delivered",
    )
    [attempt] = delivery["attempts"]
    assert (attempt["number"], attempt["status_code"], attempt["error"]) == (1, 200, None)
    assert attempt["latency_ms"] > 0


async def test_the_delivery_timeout_is_a_setting(database_url: str, receiver: Receiver) -> None:
    receiver.delay_s = 3.0  # slower than the setting allows, within the 10 s default
    settings = settings_for(database_url, allow_outbound_cidrs=LOOPBACK, webhook_timeout_s=0.5)
    async with running_api(settings) as api:
        hook = await register(api, receiver.url, "task.success")
        await finished_task(api)
        async with asyncio.timeout(15):
            while not (log := await log_of(api, hook["id"])) or not log[0]["attempts"]:  # noqa: ASYNC110 - the API's answer
                await asyncio.sleep(0.05)
    first = log[0]["attempts"][0]
    assert first["error"] == "no answer within 0.5 s"
    assert log[0]["status"] == "pending"  # retried later on the usual schedule


async def test_a_webhook_gets_only_the_events_it_asked_for(api: Api, receiver: Receiver) -> None:
    hook = await register(api, receiver.url, "task.failed")
    await finished_task(api)
    failed = await finished_task(api, model_version="gpt_4o")
    await eventually(lambda: len(receiver.received) == 1)
    await asyncio.sleep(0.3)
    [payload] = receiver.verified(hook["secret"])
    assert (payload["type"], payload["data"]["task_id"]) == ("task.failed", failed)
    assert payload["data"]["status"] == "failed"
    assert payload["data"]["error_code"] == 1001


async def test_redelivery_sends_the_same_message_again(api: Api, receiver: Receiver) -> None:
    hook = await register(api, receiver.url, "task.success")
    await finished_task(api)
    await eventually(lambda: len(receiver.received) == 1)
    [delivery] = await settled_log(api, hook["id"])
    path = f"/v2/openapi/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver"
    response = await api.client.post(path)
    assert response.json()["data"]["status"] == "pending"
    await eventually(lambda: len(receiver.received) == 2)
    assert len(receiver.verified(hook["secret"])) == 2
    assert {h["webhook-id"] for _, h in receiver.received} == {delivery["id"]}
    [again] = await settled_log(api, hook["id"])
    assert [a["number"] for a in again["attempts"]] == [1, 2]
    missing = await api.client.post(path.replace(delivery["id"], "msg_nope"))
    assert (missing.status_code, missing.json()["code"]) == (404, 2001)


async def test_deleting_a_webhook_stops_its_deliveries(api: Api, receiver: Receiver) -> None:
    hook = await register(api, receiver.url, "task.queued", "task.success")
    deleted = await api.client.delete(f"/v2/openapi/webhooks/{hook['id']}")
    assert deleted.status_code == 200
    assert (await api.client.get("/v2/openapi/webhooks")).json()["data"] == []
    await finished_task(api)
    await asyncio.sleep(0.3)
    assert receiver.received == []


async def test_another_key_can_neither_see_nor_touch_a_webhook(
    api: Api, receiver: Receiver
) -> None:
    hook = await register(api, receiver.url, "task.success")
    listed = (await api.client.get("/v2/openapi/webhooks")).json()["data"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    other = {"Authorization": f"Bearer {await api.runtime.store.accounts.create_key('o', 0)}"}
    assert (await api.client.get("/v2/openapi/webhooks", headers=other)).json()["data"] == []
    base = f"/v2/openapi/webhooks/{hook['id']}"
    for method, path in [
        ("DELETE", base),
        ("GET", f"{base}/deliveries"),
        ("POST", f"{base}/deliveries/msg_x/redeliver"),
    ]:
        response = await api.client.request(method, path, headers=other)
        assert (response.status_code, response.json()["code"]) == (404, 2001), path
    assert len((await api.client.get("/v2/openapi/webhooks")).json()["data"]) == 1


@pytest.mark.parametrize(
    ("url", "events"),
    [
        (None, ["task.success"]),  # the receiver's loopback URL, without an allow rule
        ("ftp://example.com/hook", ["task.success"]),
        ("not a url", ["task.success"]),
        (None, []),
        (None, ["task.done"]),
    ],
)
async def test_registration_refuses_bad_targets_and_events(
    tmp_path: Any, receiver: Receiver, url: str | None, events: list[str]
) -> None:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")  # no allow rule
    async with running_api(settings) as api:
        body = {"url": url or receiver.url, "events": events}
        response = await api.client.post("/v2/openapi/webhooks", json=body)
        assert (response.status_code, response.json()["code"]) == (400, 1004)
        await finished_task(api)
        assert (await api.client.get("/v2/openapi/webhooks")).json()["data"] == []
    assert receiver.received == []


# -- the outbox, with dispatchers of the test's own ---------------------------------------

FAST = RetryPolicy(schedule_s=(0.05, 0.1), window_s=30)
MODEL = "flux.1_kontext_pro"


@dataclass
class Outbox:
    runtime: Runtime
    store: WebhookStore
    caller: Caller

    def dispatcher(
        self, retry: RetryPolicy = FAST, policy: OutboundPolicy | None = None, **options: Any
    ) -> Dispatcher:
        policy = policy or self.runtime.service.policy
        render = task_renderer(self.runtime)
        return Dispatcher(self.store, render, policy, retry=retry, poll_s=0.02, **options)

    async def webhook(self, url: str, *event_types: str) -> tuple[str, str]:
        secret = new_secret()
        hook = await self.store.create(
            self.caller, url=url, event_types=event_types, secret=secret, base_url="http://e/"
        )
        return hook.id, secret

    async def finish_task(self, progress: Sequence[int] = ()) -> str:
        """Submit, claim and complete a task through the store (no worker runs)."""
        store = self.runtime.store
        new = NewTask(str(uuid.uuid4()), "generate_image", MODEL, {"prompt": "x"}, "x", (), 5)
        await store.tasks.submit(self.caller, new, max_unfinished=100, retry_after_s=1)
        task = await store.queue.claim("test-worker", [MODEL], 30)
        assert task is not None
        for value in progress:
            await store.queue.heartbeat(task, 30, value)
        assert await store.queue.complete(task, f"outputs/{task.id}.png", "dry")
        return task.id

    async def settled(self, webhook_id: str) -> list[Delivery]:
        """The webhook's deliveries once none is pending any more."""
        async with asyncio.timeout(15):
            while True:
                log = await self.store.deliveries(webhook_id)
                if all(d.status != "pending" for d in log):
                    return log
                await asyncio.sleep(0.02)


@pytest.fixture
async def outbox(database_url: str) -> AsyncIterator[Outbox]:
    runtime = await open_runtime(settings_for(database_url, allow_outbound_cidrs=LOOPBACK))
    try:
        caller = await runtime.store.accounts.authenticate(
            await runtime.store.accounts.create_key("hooks", 1000)
        )
        yield Outbox(runtime, WebhookStore(engine_of(runtime.store)), caller)
    finally:
        await runtime.close()


@contextlib.asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[None]:
    stop = asyncio.Event()
    loop = asyncio.create_task(dispatcher.run(stop))
    try:
        yield
    finally:
        stop.set()
        await loop


async def test_the_outbox_row_commits_with_the_task_and_waits_for_a_dispatcher(
    outbox: Outbox, receiver: Receiver
) -> None:
    hook_id, secret = await outbox.webhook(receiver.url, "task.success")
    task_id = await outbox.finish_task()
    [pending] = await outbox.store.deliveries(hook_id)
    assert (pending.task_id, pending.status, pending.attempts) == (task_id, "pending", ())
    await asyncio.sleep(0.2)
    assert receiver.received == []  # no dispatcher runs: nothing is sent, nothing is lost
    async with running(outbox.dispatcher()):
        [delivered] = await outbox.settled(hook_id)
    assert (delivered.id, delivered.status) == (pending.id, "delivered")
    [payload] = receiver.verified(secret)
    assert payload["data"]["task_id"] == task_id


async def test_an_event_rolled_back_leaves_no_delivery_behind(outbox: Outbox) -> None:
    hook_id, _ = await outbox.webhook("http://127.0.0.1:9/never", "task.queued")

    async def append(task_id: str, crash: bool) -> None:
        async with engine_of(outbox.runtime.store).begin() as conn:
            await events.append(
                conn,
                account_id=outbox.caller.account_id,
                api_key_id=outbox.caller.key_id,
                task_id=task_id,
                status=Status.QUEUED,
                progress=0,
            )
            if crash:
                raise RuntimeError("the process dies before COMMIT")

    with pytest.raises(RuntimeError):
        await append("lost-task", crash=True)
    await append("kept-task", crash=False)
    assert [d.task_id for d in await outbox.store.deliveries(hook_id)] == ["kept-task"]


async def test_progress_updates_do_not_repeat_task_running(outbox: Outbox) -> None:
    hook_id, _ = await outbox.webhook("http://127.0.0.1:9/never", *EVENT_TYPES)
    await outbox.finish_task(progress=[10, 50, 90])
    log = await outbox.store.deliveries(hook_id)
    assert sorted(d.event_type for d in log) == ["task.queued", "task.running", "task.success"]


async def test_a_receiver_failing_twice_gets_a_third_attempt_and_is_delivered(
    outbox: Outbox, receiver: Receiver
) -> None:
    receiver.answers = [500, 500]
    hook_id, secret = await outbox.webhook(receiver.url, "task.success")
    await outbox.finish_task()
    async with running(outbox.dispatcher()):
        [delivery] = await outbox.settled(hook_id)
    assert delivery.status == "delivered"
    assert [(a.number, a.status_code, a.error) for a in delivery.attempts] == [
        (1, 500, "HTTP 500"),
        (2, 500, "HTTP 500"),
        (3, 200, None),
    ]
    assert all(a.latency_ms > 0 for a in delivery.attempts)
    first, second, third = (a.created_at for a in delivery.attempts)
    assert second - first >= 0.05 and third - second >= 0.1  # the back-off schedule
    assert len(receiver.verified(secret)) == 3
    assert {headers["webhook-id"] for _, headers in receiver.received} == {delivery.id}


async def test_a_receiver_that_always_fails_ends_dead_and_can_be_redelivered(
    outbox: Outbox, receiver: Receiver
) -> None:
    receiver.default = 503
    hook_id, secret = await outbox.webhook(receiver.url, "task.success")
    await outbox.finish_task()
    async with running(outbox.dispatcher(RetryPolicy((0.05, 0.1), window_s=0.6))):
        [dead] = await outbox.settled(hook_id)
        sent = len(receiver.received)
        await asyncio.sleep(0.3)
        assert len(receiver.received) == sent  # nothing more once dead
        receiver.default = 200
        assert await outbox.store.redeliver(hook_id, dead.id, time.time())
        [again] = await outbox.settled(hook_id)
    assert dead.status == "dead"
    assert len(dead.attempts) >= 3
    assert all(a.status_code == 503 for a in dead.attempts)
    # No retry is scheduled past the window; one may start a poll or two late under load.
    assert dead.attempts[-1].created_at - dead.attempts[0].created_at <= 0.6 + 0.3
    assert again.status == "delivered"
    assert (again.attempts[-1].number, again.attempts[-1].status_code) == (sent + 1, 200)
    assert len(receiver.verified(secret)) == sent + 1


async def test_two_dispatchers_never_send_the_same_attempt(
    outbox: Outbox, receiver: Receiver
) -> None:
    hook_id, _ = await outbox.webhook(receiver.url, "task.success")
    for _ in range(12):
        await outbox.finish_task()
    async with (
        running(outbox.dispatcher(max_in_flight=2)),
        running(outbox.dispatcher(max_in_flight=2)),
    ):
        log = await outbox.settled(hook_id)
    assert len(log) == 12
    assert all(d.status == "delivered" and len(d.attempts) == 1 for d in log)
    sent = [headers["webhook-id"] for _, headers in receiver.received]
    assert sorted(sent) == sorted(d.id for d in log)


async def test_the_address_rules_are_checked_again_at_every_attempt(
    outbox: Outbox, receiver: Receiver
) -> None:
    hook_id, _ = await outbox.webhook(receiver.url, "task.success")
    await outbox.finish_task()
    strict = outbox.dispatcher(RetryPolicy((0.05,), window_s=0.2), policy=OutboundPolicy())
    async with running(strict):
        [dead] = await outbox.settled(hook_id)
    assert dead.status == "dead"
    assert all(a.status_code is None for a in dead.attempts)
    assert all("not a public address" in (a.error or "") for a in dead.attempts)
    assert receiver.received == []
