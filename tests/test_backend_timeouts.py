"""The two time limits of a remote backend, through the API and the worker, against a loopback
OpenAI (:class:`fake_providers.FakeOpenAI`) driven by the real ``openai`` SDK.

``request_timeout_s`` bounds one request: past it the request counts as a timeout and the
retry policy sends it again. ``timeout_s`` bounds the whole attempt, retries included: the
worker ends it there, the task fails (1001) and its credits are refunded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from apptools import Api, running_api, settings_for
from easel.backends.base import ImageBackend
from easel.backends.openai import Options
from easel.backends.registry import create_backend
from easel.config import BackendTable
from fake_providers import OPENAI_KEY, FakeOpenAI
from loopback import serve_app

KEY_ENV = "EASEL_TEST_OPENAI_KEY"
CREDITS = 100
FOREVER_S = 3600.0  # a stall no test waits out: the fake stops when the client hangs up


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def base_url(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    with serve_app(fake.app()) as url:
        yield url + "/v1"


def openai_settings(database_url: str, base_url: str, **limits: float) -> Any:
    """gpt_4o served by one ``openai`` backend at ``base_url`` with the production retry
    policy, under ``limits`` (request_timeout_s, timeout_s)."""
    return settings_for(
        database_url,
        backends={
            "openai": {"kind": "openai", "base_url": base_url, "api_key_env": KEY_ENV, **limits}
        },
        models={"gpt_4o": {"backends": ["openai"]}},
    )


async def run_task(api: Api) -> dict[str, Any]:
    response = await api.submit(model_version="gpt_4o", prompt="a fox")
    assert response.status_code == 200, response.text
    return await api.wait(response.json()["data"]["task_id"], timeout_s=30)


async def test_a_request_that_times_out_is_retried_and_the_task_succeeds(
    database_url: str, base_url: str, fake: FakeOpenAI
) -> None:
    fake.stalls = [FOREVER_S]  # the first answer never comes; the second does at once
    settings = openai_settings(database_url, base_url, request_timeout_s=0.5, timeout_s=20)
    async with running_api(settings, credits=CREDITS) as api:
        task = await run_task(api)
        assert task["status"] == "success", task
        assert [(a["backend"], a["outcome"]) for a in task["attempts"]] == [("openai", "success")]
        assert len(fake.seen) == 2  # the stalled request, then its retry
        assert task["consumed_credit"] > 0
        assert await api.balance() == {"balance": CREDITS - task["consumed_credit"], "frozen": 0}


async def test_a_provider_that_never_answers_ends_the_attempt_at_its_deadline_with_a_refund(
    database_url: str, base_url: str, fake: FakeOpenAI
) -> None:
    fake.delay_s = FOREVER_S
    settings = openai_settings(database_url, base_url, request_timeout_s=1, timeout_s=2.5)
    async with running_api(settings, credits=CREDITS) as api:
        started = time.monotonic()
        task = await run_task(api)
        elapsed = time.monotonic() - started
        assert task["status"] == "failed", task
        assert (task["error_code"], task["consumed_credit"]) == (1001, 0)
        assert task["error_msg"].endswith("backend 'openai' did not finish within 2.5 s")
        assert [(a["backend"], a["outcome"]) for a in task["attempts"]] == [("openai", "retryable")]
        assert len(fake.seen) >= 2  # the request that timed out was retried before the deadline
        assert 2.5 <= elapsed < 10
        assert await api.balance() == {"balance": CREDITS, "frozen": 0}


def test_request_timeout_is_at_most_the_attempts_deadline() -> None:
    """A configuration from before ``request_timeout_s`` that lowers ``timeout_s`` bounds each
    request by it too, as it did."""
    lowered = Options(timeout_s=60)
    assert (lowered.request_timeout_s, lowered.request_limit_s) == (120, 60)
    defaults = Options()
    assert (defaults.timeout_s, defaults.request_limit_s) == (300, 120)


@pytest.mark.parametrize(
    ("table", "deadline_s"),
    [
        ({"kind": "placeholder"}, None),
        ({"kind": "placeholder", "timeout_s": 2}, 2),
        ({"kind": "openai"}, 300),
        ({"kind": "gemini", "timeout_s": 90}, 90),
        ({"kind": "bfl"}, 300),
        ({"kind": "midjourney-proxy"}, 600),
        ({"kind": "diffusers", "pipeline": "flux"}, None),  # an inference cannot stop mid-step
    ],
)
def test_each_kind_declares_its_attempts_deadline_on_the_port(
    table: dict[str, Any], deadline_s: float | None
) -> None:
    backend = create_backend("b", BackendTable.model_validate(table))
    assert isinstance(backend, ImageBackend)
    assert backend.timeout_s == deadline_s
