"""A provider's answer cannot steer the worker: the URLs it names (BFL's ``polling_url`` and
``result.sample``, the Midjourney proxy's ``imageUrl``, redirects of an SDK's request) go
through the outbound address rules on every hop, and the API key reaches only trusted hosts.

Each test runs the real backend against loopback servers: the provider on 127.0.0.1 (its
configured origin, exempt from the rules), an "outsider" on 127.0.0.2 that the policy allows
(a public host that is not the provider) and an "internal service" on 127.0.0.3 that it does
not. The internal service must never see a request, and its body never a task's error.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from easel.backends.base import BackendFailed, Job
from easel.backends.bfl import BflBackend
from easel.backends.bfl import Options as BflOptions
from easel.backends.gemini import GeminiBackend
from easel.backends.gemini import Options as GeminiOptions
from easel.backends.midjourney import MidjourneyProxyBackend
from easel.backends.midjourney import Options as MjOptions
from easel.backends.openai import OpenAIBackend
from easel.backends.openai import Options as OpenAIOptions
from easel.outbound import OutboundPolicy
from fake_providers import (
    BFL_IMAGE,
    BFL_KEY,
    GEMINI_KEY,
    MJ_SECRET,
    OPENAI_KEY,
    FakeBfl,
    FakeMidjourneyProxy,
    gemini_answer,
    gemini_image_part,
    mj_task,
    openai_image,
)
from fakes import FAST_RETRY, Control, job_for
from loopback import Peer, serve_app

OUTSIDER_ALLOWED = OutboundPolicy.from_strings(["127.0.0.2/32"])
KEY_ENV = "EASEL_TEST_STEERING_KEY"


def never_reached(internal: Peer, error: BaseException) -> None:
    assert internal.seen == []
    assert "internal secret" not in str(error)


# -- Black Forest Labs ---------------------------------------------------------------------


def bfl(base_url: str, monkeypatch: pytest.MonkeyPatch, **options: object) -> BflBackend:
    monkeypatch.setenv(KEY_ENV, BFL_KEY)
    return BflBackend(
        "bfl",
        BflOptions.model_validate({"base_url": base_url, "api_key_env": KEY_ENV, **options}),
        retry=FAST_RETRY,
        poll_interval_s=0.01,
        outbound=OUTSIDER_ALLOWED,
    )


BFL_JOB = job_for("bfl", "flux.1_dev", "a red fox")


async def test_bfl_polling_url_on_an_internal_address_is_never_fetched(
    internal: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBfl(polling_base=internal.url)
    with (
        serve_app(fake.app()) as base_url,
        pytest.raises(BackendFailed, match="not a public address") as failed,
    ):
        await bfl(base_url, monkeypatch).generate(BFL_JOB, Control())
    never_reached(internal, failed.value)
    assert "pointed the worker at http://127.0.0.3" in str(failed.value)


async def test_bfl_key_never_reaches_a_polling_host_it_does_not_trust(
    outsider: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allowed but untrusted host is polled without ``x-key``; its result is used."""
    ready = {"status": "Ready", "result": {"sample": f"{outsider.url}/sample.png"}}
    outsider.routes["/v1/get_result"] = JSONResponse(ready)
    outsider.routes["/sample.png"] = Response(BFL_IMAGE, media_type="image/png")
    fake = FakeBfl(polling_base=outsider.url)
    with serve_app(fake.app()) as base_url:
        image = await bfl(base_url, monkeypatch).generate(BFL_JOB, Control())

    assert image.data == BFL_IMAGE
    assert [path for path, _ in outsider.seen] == ["/v1/get_result", "/sample.png"]
    assert all("x-key" not in headers for _, headers in outsider.seen)


async def test_bfl_polls_a_regional_host_in_trusted_hosts_with_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BFL's regional polling hosts need ``x-key``: a trusted host gets it (here the name
    ``localhost`` stands for ``api.eu1.bfl.ai``)."""
    monkeypatch.setenv(KEY_ENV, BFL_KEY)
    regional = FakeBfl()
    with serve_app(regional.app()) as regional_url:
        main = FakeBfl(polling_base=regional_url.replace("127.0.0.1", "localhost"))
        with serve_app(main.app()) as main_url:
            backend = BflBackend(
                "bfl",
                BflOptions(base_url=main_url, api_key_env=KEY_ENV, trusted_hosts=("localhost",)),
                retry=FAST_RETRY,
                poll_interval_s=0.01,
                outbound=OutboundPolicy.from_strings(["127.0.0.0/8", "::1/128"]),
            )
            await backend.generate(BFL_JOB, Control())
    assert main.polls == []  # the polling_url is used as given, on the regional host
    assert regional.polls  # its key check passed: it answered Pending, then Ready


async def test_bfl_result_redirect_to_an_internal_address_is_refused(
    outsider: Peer, internal: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready = {"status": "Ready", "result": {"sample": f"{outsider.url}/sample.png"}}
    outsider.routes["/v1/get_result"] = JSONResponse(ready)
    outsider.routes["/sample.png"] = RedirectResponse(f"{internal.url}/latest/meta-data")
    fake = FakeBfl(polling_base=outsider.url)
    with (
        serve_app(fake.app()) as base_url,
        pytest.raises(BackendFailed, match="not a public address") as failed,
    ):
        await bfl(base_url, monkeypatch).generate(BFL_JOB, Control())
    never_reached(internal, failed.value)


async def test_a_provider_error_quoted_in_a_task_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeBfl(statuses=[{"status": "Error", "details": "x" * 100_000}])
    with serve_app(fake.app()) as base_url, pytest.raises(BackendFailed) as failed:
        await bfl(base_url, monkeypatch).generate(BFL_JOB, Control())
    assert len(str(failed.value)) < 500


# -- the Midjourney proxy ------------------------------------------------------------------


def midjourney(base_url: str, monkeypatch: pytest.MonkeyPatch) -> MidjourneyProxyBackend:
    monkeypatch.setenv(KEY_ENV, MJ_SECRET)
    return MidjourneyProxyBackend(
        "mj",
        MjOptions(base_url=base_url, api_key_env=KEY_ENV),
        retry=FAST_RETRY,
        poll_interval_s=0.01,
        outbound=OUTSIDER_ALLOWED,
    )


MJ_JOB = Job("t-1", "midjourney", "a lighthouse", ())


async def test_midjourney_image_url_on_an_internal_address_is_never_fetched(
    internal: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy itself may live on a private address (the operator's own); the URLs it
    answers with may not."""
    done = mj_task("SUCCESS", "100%", imageUrl=f"{internal.url}/grid.png")
    fake = FakeMidjourneyProxy(tasks=[done])
    with (
        serve_app(fake.app()) as base_url,
        pytest.raises(BackendFailed, match="not a public address") as failed,
    ):
        await midjourney(base_url, monkeypatch).generate(MJ_JOB, Control())
    never_reached(internal, failed.value)


async def test_midjourney_secret_stays_with_the_proxy(
    outsider: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    outsider.routes["/grid.png"] = Response(BFL_IMAGE, media_type="image/png")
    done = mj_task("SUCCESS", "100%", imageUrl=f"{outsider.url}/grid.png")
    fake = FakeMidjourneyProxy(tasks=[done])
    with serve_app(fake.app()) as base_url:
        await midjourney(base_url, monkeypatch).generate(MJ_JOB, Control())
    ((path, headers),) = outsider.seen
    assert path == "/grid.png"
    assert "mj-api-secret" not in headers


# -- SDK backends: a redirect from the configured origin -----------------------------------


def redirecting_provider(target: str) -> Starlette:
    """A provider origin that answers every request with a 307 to ``target`` (same method,
    same body: an SDK's client follows it)."""

    async def redirect(request: Request) -> Response:
        return RedirectResponse(f"{target}{request.url.path}", status_code=307)

    return Starlette(routes=[Route("/{path:path}", redirect, methods=["GET", "POST"])])


def openai(base_url: str, monkeypatch: pytest.MonkeyPatch) -> OpenAIBackend:
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    options = OpenAIOptions(base_url=f"{base_url}/v1", api_key_env=KEY_ENV)
    return OpenAIBackend("openai", options, retry=FAST_RETRY, outbound=OUTSIDER_ALLOWED)


def gemini(base_url: str, monkeypatch: pytest.MonkeyPatch) -> GeminiBackend:
    monkeypatch.setenv(KEY_ENV, GEMINI_KEY)
    options = GeminiOptions(base_url=base_url, api_key_env=KEY_ENV)
    return GeminiBackend("gemini", options, retry=FAST_RETRY, outbound=OUTSIDER_ALLOWED)


SdkFactory = Callable[[str, pytest.MonkeyPatch], OpenAIBackend | GeminiBackend]
SDK_BACKENDS: dict[str, tuple[SdkFactory, str]] = {
    "openai": (openai, "gpt_image_2"),
    "gemini": (gemini, "gemini_3_pro_image_preview"),
}


@pytest.mark.parametrize("kind", SDK_BACKENDS)
async def test_an_sdk_redirect_to_an_internal_address_is_refused(
    kind: str, internal: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, version = SDK_BACKENDS[kind]
    with serve_app(redirecting_provider(internal.url)) as base_url:
        backend = make(base_url, monkeypatch)
        try:
            with pytest.raises(BackendFailed, match="not a public address") as failed:
                await backend.generate(job_for(kind, version, "a teapot"), Control())
        finally:
            await backend.close()
    never_reached(internal, failed.value)


@pytest.mark.parametrize(
    ("kind", "answer", "key_header"),
    [
        ("openai", openai_image()[1], "authorization"),
        ("gemini", gemini_answer(gemini_image_part())[1], "x-goog-api-key"),
    ],
)
async def test_an_sdk_key_does_not_follow_a_redirect_to_another_host(
    kind: str,
    answer: dict[str, object],
    key_header: str,
    outsider: Peer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make, version = SDK_BACKENDS[kind]
    outsider.otherwise = JSONResponse(answer)
    with serve_app(redirecting_provider(outsider.url)) as base_url:
        backend = make(base_url, monkeypatch)
        try:
            await backend.generate(job_for(kind, version, "a teapot"), Control())
        finally:
            await backend.close()
    assert outsider.seen, "the SDK followed the redirect"
    assert all(key_header not in headers for _, headers in outsider.seen)
