"""The ``modelark`` backend (Seedream) against a loopback server speaking ModelArk's image API.

:class:`fake_modelark.FakeModelArk` checks the bearer key and the body's shape as the reference
gives it, and answers with a signed result link (or base64), a per-image refusal, or the
reference's error bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import Response

from apptools import png, running_api, settings_for
from easel.backends.base import (
    BackendFailed,
    BackendRateLimited,
    BackendRejected,
    BackendUnavailable,
    InputImage,
    Job,
)
from easel.backends.modelark import ModelArkBackend, Options
from easel.backends.registry import create_backend
from easel.config import BackendTable, Settings
from easel.domain.options import ImageOptions
from easel.outbound import OutboundPolicy
from fake_modelark import (
    ARK_IMAGE,
    ARK_KEY,
    RATE_LIMITED,
    SENSITIVE_PROMPT,
    SERVER_ERROR,
    FakeModelArk,
    ark_error,
    decode_reference,
)
from fakes import FAST_RETRY, Control, check_missing_key, check_unreachable, job_for, reference
from loopback import Peer, serve_app

KEY_ENV = "EASEL_TEST_ARK_KEY"
PROMPT = "a paper lantern over a night market"


@pytest.fixture
def fake() -> FakeModelArk:
    return FakeModelArk()


@pytest.fixture
def base_url(fake: FakeModelArk, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, ARK_KEY)
    with serve_app(fake.app()) as url:
        yield url


def backend(
    base_url: str, outbound: OutboundPolicy | None = None, **options: Any
) -> ModelArkBackend:
    return ModelArkBackend(
        "ark",
        Options(base_url=base_url, api_key_env=KEY_ENV, **options),
        retry=FAST_RETRY,
        outbound=outbound,
    )


def job(model: str = "seedream_v5", *images: InputImage, provider: str | None = None) -> Job:
    return job_for("modelark", model, PROMPT, *images, provider_model=provider)


async def test_text_to_image_posts_the_documented_body_and_downloads_the_signed_link(
    fake: FakeModelArk, base_url: str
) -> None:
    image = await backend(base_url).generate(job("seedream_v4"), Control())

    [body] = fake.bodies
    assert body == {
        "model": "seedream-4-0-250828",
        "prompt": PROMPT,
        "size": "2K",
        "response_format": "url",
        "watermark": False,
        "sequential_image_generation": "disabled",
    }
    assert fake.headers[0]["authorization"] == f"Bearer {ARK_KEY}"
    assert (image.data, image.format) == (ARK_IMAGE, "jpeg")
    [download] = fake.download_headers
    assert "authorization" not in download  # the link is signed; the key stays home


async def test_one_reference_is_a_data_uri_and_several_are_a_list_in_order(
    fake: FakeModelArk, base_url: str
) -> None:
    one = reference("PNG", (255, 0, 0))
    several = [reference("JPEG", (0, 255, 0)), reference("WEBP", (0, 0, 255)), one]

    await backend(base_url).generate(job("seedream_v5", one), Control())
    await backend(base_url).generate(job("seedream_v5", *several), Control())

    single, multi = fake.bodies
    assert single["model"] == "seedream-5-0-260128"
    assert decode_reference(single["image"]) == ("png", one.data)
    assert [decode_reference(item) for item in multi["image"]] == [
        ("jpeg", several[0].data),
        ("webp", several[1].data),
        ("png", one.data),
    ]


async def test_options_and_provider_model_reach_the_wire(fake: FakeModelArk, base_url: str) -> None:
    ark = backend(base_url, size="4K", watermark=True, response_format="b64_json")

    image = await ark.generate(job("seedream_v5", provider="ep-20260125201054-pfrb4"), Control())

    [body] = fake.bodies
    assert (body["model"], body["size"], body["watermark"]) == (
        "ep-20260125201054-pfrb4",
        "4K",
        True,
    )
    assert body["response_format"] == "b64_json"
    assert image.data == ARK_IMAGE
    assert fake.download_headers == []  # base64 answers need no second request


@pytest.mark.parametrize(
    ("asked", "sent"),
    [
        (ImageOptions(), ("2K", False)),  # nothing asked: the backend's configured values
        (ImageOptions(size="4K", watermark=True), ("4K", True)),
        (ImageOptions(size="4096x2304"), ("4096x2304", False)),
        (ImageOptions(aspect_ratio="16:9"), ("2736x1536", False)),  # a v2 template's ratio
        (ImageOptions(size="1K", aspect_ratio="1:1"), ("1024x1024", False)),
    ],
)
async def test_the_tasks_size_and_watermark_reach_the_wire(
    fake: FakeModelArk, base_url: str, asked: ImageOptions, sent: tuple[str, bool]
) -> None:
    ark = backend(base_url)

    await ark.generate(replace(job("seedream_v4"), options=asked), Control())

    [body] = fake.bodies
    assert (body["size"], body["watermark"]) == sent


def test_a_size_the_provider_does_not_take_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="size"):
        Options(size="huge")


@pytest.mark.parametrize(
    "answer",
    [
        SENSITIVE_PROMPT,
        ark_error(400, "InputImageSensitiveContentDetected", "The input image may contain …"),
        ark_error(400, "SensitiveContentDetected.Violence", "The input text may contain …"),
        ark_error(400, "InputTextRiskDetection", "ContentSecurityDetection flagged it."),
    ],
    ids=["prompt", "image", "violence", "risk"],
)
async def test_content_policy_errors_are_final_refusals(
    fake: FakeModelArk, base_url: str, answer: tuple[int, dict[str, Any]]
) -> None:
    fake.errors = [answer]

    with pytest.raises(BackendRejected, match=answer[1]["error"]["code"]):
        await backend(base_url).generate(job(), Control())
    assert fake.attempts == 1


async def test_a_refused_output_image_is_a_final_refusal(fake: FakeModelArk, base_url: str) -> None:
    fake.image_error = {
        "code": "OutputImageSensitiveContentDetected",
        "message": "The request failed because the output image may contain sensitive information.",
    }

    with pytest.raises(BackendRejected, match="OutputImageSensitiveContentDetected"):
        await backend(base_url).generate(job(), Control())
    assert fake.download_headers == []


async def test_rate_limits_and_server_errors_are_retried(fake: FakeModelArk, base_url: str) -> None:
    fake.errors = [RATE_LIMITED, SERVER_ERROR]

    image = await backend(base_url).generate(job(), Control())

    assert fake.attempts == 3
    assert image.data == ARK_IMAGE


@pytest.mark.parametrize(
    ("answer", "error"),
    [(RATE_LIMITED, BackendRateLimited), (SERVER_ERROR, BackendUnavailable)],
    ids=["429", "500"],
)
async def test_persistent_429_or_5xx_gives_up_after_bounded_retries(
    fake: FakeModelArk, base_url: str, answer: tuple[int, dict[str, Any]], error: type
) -> None:
    fake.errors = [answer] * 10

    with pytest.raises(error, match=f"HTTP {answer[0]}"):
        await backend(base_url).generate(job(), Control())
    assert fake.attempts == FAST_RETRY.attempts


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (ark_error(403, "AccountOverdueError", "Overdue.", "Forbidden"), "overdue balance"),
        (
            ark_error(404, "InvalidEndpoint.NotFound", "No such endpoint.", "NotFound"),
            "provider_model",
        ),
        (ark_error(404, "ModelNotOpen", "Not activated.", "NotFound"), "ModelArk console"),
        (ark_error(400, "InvalidParameter", "The parameter `size` is not valid."), "HTTP 400"),
    ],
    ids=["overdue", "no-endpoint", "not-open", "invalid"],
)
async def test_account_and_request_errors_fail_without_retry(
    fake: FakeModelArk, base_url: str, answer: tuple[int, dict[str, Any]], words: str
) -> None:
    fake.errors = [answer]

    with pytest.raises(BackendFailed, match=words) as caught:
        await backend(base_url).generate(job(), Control())
    assert not isinstance(caught.value, BackendRejected)
    assert fake.attempts == 1


async def test_a_wrong_key_is_a_final_failure(
    fake: FakeModelArk, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "wrong")

    with pytest.raises(BackendFailed, match="refused the API key"):
        await backend(base_url).generate(job(), Control())
    assert fake.attempts == 1


async def test_a_result_link_on_an_internal_address_is_never_fetched(
    fake: FakeModelArk, base_url: str, internal: Peer
) -> None:
    fake.result_base = internal.url

    with pytest.raises(BackendFailed, match="not a public address") as failed:
        await backend(base_url).generate(job(), Control())
    assert internal.seen == []
    assert "internal secret" not in str(failed.value)


async def test_a_result_link_elsewhere_is_fetched_without_the_key(
    fake: FakeModelArk, base_url: str, outsider: Peer
) -> None:
    """The object store is another host: allowed by the rules, it gets no Authorization."""
    outsider.otherwise = Response(ARK_IMAGE, media_type="image/jpeg")
    fake.result_base = outsider.url
    allowed = OutboundPolicy.from_strings(["127.0.0.2/32"])

    image = await backend(base_url, outbound=allowed).generate(job(), Control())

    assert image.data == ARK_IMAGE
    [(path, headers)] = outsider.seen
    assert path.startswith("/tos/")
    assert "authorization" not in headers


async def test_missing_key_makes_the_backend_unavailable(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)

    await check_missing_key(backend(base_url), KEY_ENV, job())


async def test_an_unreachable_provider_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, ARK_KEY)

    await check_unreachable(backend, job())


def test_registry_builds_modelark_with_its_documented_defaults() -> None:
    ark = create_backend("ark", BackendTable(kind="modelark"))

    assert isinstance(ark, ModelArkBackend)
    assert (ark.options.base_url, ark.options.api_key_env) == (
        "https://ark.ap-southeast.bytepluses.com",
        "ARK_API_KEY",
    )
    assert (ark.options.size, ark.options.response_format, ark.options.watermark) == (
        "2K",
        "url",
        False,
    )


# --- through the API and the worker ------------------------------------------------------------


def served_by_modelark(tmp_path: Path, base_url: str) -> Settings:
    ark = {"kind": "modelark", "base_url": base_url, "api_key_env": KEY_ENV}
    return settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}",
        backends={"ark": ark},
        models={"seedream_v4": {"backends": ["ark"]}, "seedream_v5": {"backends": ["ark"]}},
    )


async def test_seedream_tasks_run_on_modelark_from_v2_and_v3(
    fake: FakeModelArk, base_url: str, tmp_path: Path
) -> None:
    async with running_api(served_by_modelark(tmp_path, base_url), credits=20) as api:
        first, second = await api.upload(png(color="red")), await api.upload(png(color="blue"))
        response = await api.submit(
            prompt="image[1] in the style of image[2]",
            model_version="seedream_v5",
            files=[{"type": "png", "file_token": first}, {"type": "png", "file_token": second}],
        )
        v2 = await api.wait(response.json()["data"]["task_id"])
        response = await api.client.post(
            "/v3/generation/text-to-image", json={"prompt": PROMPT, "model": "seedream_v4"}
        )
        v3 = await api.wait(response.json()["data"]["task_id"])

        assert (v2["status"], v3["status"]) == ("success", "success")
        edit, text = fake.bodies
        assert edit["model"] == "seedream-5-0-260128"
        assert [decode_reference(item)[0] for item in edit["image"]] == ["png", "png"]
        assert (text["model"], text["prompt"], "image" in text) == (
            "seedream-4-0-250828",
            PROMPT,
            False,
        )
        output = await api.client.get(v3["output"]["generated_image"])
        assert output.content == ARK_IMAGE
        assert (await api.balance())["balance"] == 20 - 5 - 5


async def test_a_content_policy_refusal_bans_the_task_and_refunds_it(
    fake: FakeModelArk, base_url: str, tmp_path: Path
) -> None:
    fake.errors = [SENSITIVE_PROMPT]
    async with running_api(served_by_modelark(tmp_path, base_url), credits=20) as api:
        response = await api.submit(prompt=PROMPT, model_version="seedream_v4")
        task = await api.wait(response.json()["data"]["task_id"])

        assert (task["status"], task["error_code"]) == ("banned", 2008)
        assert "InputTextSensitiveContentDetected" in task["error_msg"]
        assert (await api.balance())["balance"] == 20
        assert fake.attempts == 1  # final: neither retried nor passed down a chain
