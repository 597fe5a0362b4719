"""The ``midjourney-proxy`` backend against a loopback novicezk/midjourney-proxy.

:class:`fake_providers.FakeMidjourneyProxy` speaks the proxy's REST shape (``docs/api.md`` of
novicezk/midjourney-proxy): ``POST /mj/submit/imagine`` answers ``{code, description,
result}``, ``GET /mj/task/{id}/fetch`` answers the task (``status``, ``progress: "45%"``,
``imageUrl``, ``failReason``), or an empty body for a task it does not know.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from easel.backends.base import (
    BackendFailed,
    BackendRejected,
    BackendUnavailable,
    Job,
    JobCancelled,
)
from easel.backends.midjourney import URL_ENV, MidjourneyProxyBackend, Options, parse_progress
from easel.backends.registry import create_backend
from easel.config import BackendTable
from fake_providers import MJ_SECRET, MJ_TASK_ID, FakeMidjourneyProxy, mj_task
from fakes import FAST_RETRY, Control
from loopback import serve_app

SECRET_ENV = "EASEL_TEST_MJ_SECRET"


@pytest.fixture
def fake() -> FakeMidjourneyProxy:
    return FakeMidjourneyProxy()


@pytest.fixture
def base_url(fake: FakeMidjourneyProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(SECRET_ENV, MJ_SECRET)
    monkeypatch.delenv(URL_ENV, raising=False)
    with serve_app(fake.app()) as url:
        yield url


def backend(base_url: str, **options: Any) -> MidjourneyProxyBackend:
    return MidjourneyProxyBackend(
        "mj",
        Options(base_url=base_url, api_key_env=SECRET_ENV, **options),
        retry=FAST_RETRY,
        poll_interval_s=0.01,
    )


JOB = Job("t-1", "midjourney", "a lighthouse at dusk", ())


async def test_imagine_with_the_secret_then_polls_until_success(
    fake: FakeMidjourneyProxy, base_url: str
) -> None:
    fake.tasks = [
        mj_task("NOT_START", "0%"),
        mj_task("SUBMITTED"),
        mj_task("IN_PROGRESS", "45%"),
        mj_task("SUCCESS", "100%"),
    ]
    control = Control()

    image = await backend(base_url).generate(JOB, control)

    ((headers, body),) = fake.submits
    assert headers["mj-api-secret"] == MJ_SECRET
    assert body == {"prompt": "a lighthouse at dusk", "base64Array": []}
    assert fake.fetches == 4
    assert control.fractions == [0.0, 0.45, 1.0, 1.0]
    assert (image.data, image.format) == (fake.image, "png")


async def test_queued_submission_code_22_goes_on(fake: FakeMidjourneyProxy, base_url: str) -> None:
    fake.submit_answer = {
        "code": 22,
        "description": "排队中，前面还有1个任务",
        "result": MJ_TASK_ID,
        "properties": {"numberOfQueues": 1},
    }

    image = await backend(base_url).generate(JOB, Control())

    assert image.format == "png"


async def test_banned_prompt_code_24_is_a_policy_refusal(
    fake: FakeMidjourneyProxy, base_url: str
) -> None:
    fake.submit_answer = {
        "code": 24,
        "description": "可能包含敏感词",
        "properties": {"promptEn": "x", "bannedWord": "gore"},
    }

    with pytest.raises(BackendRejected, match="gore"):
        await backend(base_url).generate(JOB, Control())
    assert fake.fetches == 0


@pytest.mark.parametrize(
    ("code", "description"),
    [(4, "prompt不能为空"), (9, "Submit failed"), (3, "关联任务不存在或已失效")],
)
async def test_other_submit_codes_fail(
    fake: FakeMidjourneyProxy, base_url: str, code: int, description: str
) -> None:
    fake.submit_answer = {"code": code, "description": description}

    with pytest.raises(BackendFailed, match=f"code {code}"):
        await backend(base_url).generate(JOB, Control())
    assert fake.submit_attempts == 1


async def test_full_queue_code_23_is_retried_then_unavailable(
    fake: FakeMidjourneyProxy, base_url: str
) -> None:
    fake.submit_answer = {"code": 23, "description": "队列已满，请稍后尝试"}

    with pytest.raises(BackendUnavailable, match="queue is full"):
        await backend(base_url).generate(JOB, Control())
    assert fake.submit_attempts == FAST_RETRY.attempts


@pytest.mark.parametrize(
    "reason",
    [
        "Banned prompt detected",
        "Sorry! Our AI moderator thinks this prompt is probably against our community standards.",
        "Request cancelled due to image filters",
    ],
)
async def test_failure_for_banned_content_is_a_policy_refusal(
    fake: FakeMidjourneyProxy, base_url: str, reason: str
) -> None:
    fake.tasks = [mj_task("IN_PROGRESS", "10%"), mj_task("FAILURE", failReason=reason)]

    with pytest.raises(BackendRejected, match="refused"):
        await backend(base_url).generate(JOB, Control())


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (mj_task("FAILURE", failReason="Invalid parameter"), "FAILURE: Invalid parameter"),
        (mj_task("CANCEL"), "CANCEL"),
        (mj_task("SUCCESS_MAYBE"), "unknown task status"),
        (None, "no longer knows task"),
    ],
)
async def test_other_terminal_answers_fail(
    fake: FakeMidjourneyProxy, base_url: str, answer: dict[str, Any] | None, words: str
) -> None:
    fake.tasks = [mj_task("SUBMITTED"), answer]

    with pytest.raises(BackendFailed, match=words):
        await backend(base_url).generate(JOB, Control())


@pytest.mark.parametrize(
    ("progress", "fraction"),
    [("45%", 0.45), ("0%", 0.0), ("100%", 1.0), ("12.5%", 0.125), ("", None), (None, None)],
)
def test_progress_strings_are_parsed(progress: str | None, fraction: float | None) -> None:
    assert parse_progress(progress) == fraction


async def test_cancel_between_polls_stops_polling(fake: FakeMidjourneyProxy, base_url: str) -> None:
    fake.tasks = [mj_task("IN_PROGRESS", "5%")]
    control = Control()
    fake.on_fetch = lambda count: setattr(control, "cancelled", count >= 3)

    with pytest.raises(JobCancelled):
        await backend(base_url).generate(JOB, control)
    assert fake.fetches == 3


async def test_rate_limit_is_retried_then_succeeds(
    fake: FakeMidjourneyProxy, base_url: str
) -> None:
    fake.submit_errors = [429]

    image = await backend(base_url).generate(JOB, Control())

    assert fake.submit_attempts == 2
    assert image.format == "png"


async def test_persistent_503_is_unavailable_after_bounded_retries(
    fake: FakeMidjourneyProxy, base_url: str
) -> None:
    fake.submit_errors = [503] * 10

    with pytest.raises(BackendUnavailable, match="503"):
        await backend(base_url).generate(JOB, Control())
    assert fake.submit_attempts == FAST_RETRY.attempts


async def test_wrong_secret_is_a_final_failure(
    fake: FakeMidjourneyProxy, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "wrong")

    with pytest.raises(BackendFailed, match="401"):
        await backend(base_url).generate(JOB, Control())
    assert fake.submit_attempts == 1


async def test_a_proxy_without_a_secret_gets_no_header(
    fake: FakeMidjourneyProxy, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.secret = None
    monkeypatch.delenv(SECRET_ENV)
    mj = backend(base_url)

    assert mj.unavailable_reason() is None
    await mj.generate(JOB, Control())
    assert "mj-api-secret" not in fake.submits[0][0]


async def test_a_relative_image_url_is_resolved_against_the_proxy(
    fake: FakeMidjourneyProxy, base_url: str
) -> None:
    fake.tasks = [{**mj_task("SUCCESS", "100%"), "imageUrl": fake.image_path}]

    image = await backend(base_url).generate(JOB, Control())

    assert image.data == fake.image


async def test_the_proxy_url_comes_from_mj_proxy_url_when_base_url_is_unset(
    fake: FakeMidjourneyProxy, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mj = backend("")
    assert mj.unavailable_reason() is not None
    assert URL_ENV in (mj.unavailable_reason() or "")
    with pytest.raises(BackendUnavailable, match="base_url"):
        await mj.generate(JOB, Control())

    monkeypatch.setenv(URL_ENV, base_url)
    assert mj.unavailable_reason() is None
    assert (await mj.generate(JOB, Control())).format == "png"


def test_registry_builds_the_proxy_backend_unconfigured_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    mj = create_backend("mj", BackendTable(kind="midjourney-proxy"))

    assert isinstance(mj, MidjourneyProxyBackend)
    assert mj.options.api_key_env == "MJ_API_SECRET"
    assert "MJ_PROXY_URL" in (mj.unavailable_reason() or "")
