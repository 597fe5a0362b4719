"""The ``gemini`` backend against a loopback server speaking the Gemini API.

:class:`fake_providers.FakeGemini` answers ``POST /v1beta/models/{model}:generateContent`` as
the REST reference gives it: the key arrives in ``x-goog-api-key``, references as base64
``inlineData`` parts (the SDK may use the URL-safe alphabet), and the answer carries
``candidates[].content.parts`` with ``inlineData`` images, or ``promptFeedback.blockReason`` /
a ``finishReason`` when refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from easel.backends.base import (
    BackendFailed,
    BackendRateLimited,
    BackendRejected,
    BackendUnavailable,
    InputImage,
    Job,
)
from easel.backends.gemini import GeminiBackend, Options
from easel.backends.registry import create_backend
from easel.config import BackendTable
from fake_providers import (
    GEMINI_IMAGE,
    GEMINI_KEY,
    FakeGemini,
    gemini_answer,
    gemini_blocked,
    gemini_error,
    gemini_image_part,
)
from fakes import (
    FAST_RETRY,
    Control,
    check_missing_key,
    check_unreachable,
    image_bytes,
    job_for,
    reference,
)
from loopback import serve_app

KEY_ENV = "EASEL_TEST_GEMINI_KEY"
KEY = GEMINI_KEY


@pytest.fixture
def fake() -> FakeGemini:
    return FakeGemini()


@pytest.fixture
def base_url(fake: FakeGemini) -> Iterator[str]:
    with serve_app(fake.app()) as url:
        yield url


@pytest.fixture
async def backend(base_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GeminiBackend]:
    monkeypatch.setenv(KEY_ENV, KEY)
    options = Options(base_url=base_url, api_key_env=KEY_ENV, timeout_s=5)
    backend = GeminiBackend("gemini-test", options, retry=FAST_RETRY)
    yield backend
    await backend.close()


def job(
    model_version: str = "gemini_3_pro_image_preview",
    *images: InputImage,
    provider_model: str | None = None,
) -> Job:
    prompt = "put the teapot on the table"
    return job_for("gemini", model_version, prompt, *images, provider_model=provider_model)


@pytest.mark.parametrize(
    ("model_version", "wire_model"),
    [
        ("gemini_2.5_flash_image_preview", "gemini-2.5-flash-image"),
        ("gemini_3_pro_image_preview", "gemini-3-pro-image"),
        ("gemini_3.1_flash_image_preview", "gemini-3.1-flash-image"),
    ],
)
async def test_job_posts_generate_content_for_the_default_model_with_the_key_header(
    backend: GeminiBackend, fake: FakeGemini, model_version: str, wire_model: str
) -> None:
    control = Control()
    image = await backend.generate(job(model_version), control)
    assert (image.data, image.format) == (GEMINI_IMAGE, "png")
    [seen] = fake.seen
    assert (seen.model, seen.method, seen.key) == (wire_model, "generateContent", KEY)
    assert seen.parts() == [{"text": "put the teapot on the table"}]
    assert "IMAGE" in seen.modalities()
    assert control.fractions == [1.0]


async def test_references_travel_as_inline_base64_parts_after_the_text(
    backend: GeminiBackend, fake: FakeGemini
) -> None:
    refs = (reference("png", (255, 0, 0)), reference("jpeg", (0, 255, 0)))
    await backend.generate(job("gemini_3.1_flash_image_preview", *refs), Control())
    [seen] = fake.seen
    assert seen.parts()[0] == {"text": "put the teapot on the table"}
    assert seen.inline_images() == [("image/png", refs[0].data), ("image/jpeg", refs[1].data)]


async def test_provider_model_from_config_reaches_the_wire(
    backend: GeminiBackend, fake: FakeGemini
) -> None:
    await backend.generate(job(provider_model="gemini-3-pro-image-preview"), Control())
    assert fake.seen[0].model == "gemini-3-pro-image-preview"


async def test_text_parts_and_thought_images_are_skipped_for_the_final_image(
    backend: GeminiBackend, fake: FakeGemini
) -> None:
    draft, final = image_bytes("PNG", (9, 9, 9)), image_bytes("JPEG", (7, 7, 7))
    fake.script = [
        gemini_answer(
            {"text": "Planning the scene", "thought": True},
            gemini_image_part(draft, thought=True),
            {"text": "Here is your teapot."},
            gemini_image_part(final, "image/jpeg"),
        )
    ]
    image = await backend.generate(job(), Control())
    assert (image.data, image.format) == (final, "jpeg")


async def test_text_only_answer_fails_quoting_the_model(
    backend: GeminiBackend, fake: FakeGemini
) -> None:
    fake.script = [gemini_answer({"text": "I can only describe the teapot, not draw it."})]
    with pytest.raises(BackendFailed, match=r'answered without an image; it said: "I can only'):
        await backend.generate(job(), Control())
    assert len(fake.seen) == 1


async def test_no_image_finish_reason_is_named_in_the_failure(
    backend: GeminiBackend, fake: FakeGemini
) -> None:
    fake.script = [gemini_answer(finish="NO_IMAGE")]
    with pytest.raises(BackendFailed, match="finishReason NO_IMAGE"):
        await backend.generate(job(), Control())


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT"])
async def test_blocked_prompt_is_a_policy_rejection(
    backend: GeminiBackend, fake: FakeGemini, reason: str
) -> None:
    fake.script = [gemini_blocked(reason)]
    with pytest.raises(BackendRejected, match=reason) as caught:
        await backend.generate(job(), Control())
    assert caught.value.error_code == 2008
    assert len(fake.seen) == 1


@pytest.mark.parametrize("finish", ["IMAGE_SAFETY", "SAFETY", "IMAGE_PROHIBITED_CONTENT"])
async def test_image_withheld_for_safety_is_a_policy_rejection(
    backend: GeminiBackend, fake: FakeGemini, finish: str
) -> None:
    fake.script = [gemini_answer(finish=finish)]
    with pytest.raises(BackendRejected, match=finish):
        await backend.generate(job(), Control())


async def test_rate_limit_is_retried_then_succeeds(
    backend: GeminiBackend, fake: FakeGemini
) -> None:
    fake.script = [
        gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted."),
        gemini_answer(gemini_image_part()),
    ]
    image = await backend.generate(job(), Control())
    assert image.data == GEMINI_IMAGE
    assert len(fake.seen) == 2


async def test_persistent_rate_limit_ends_as_rate_limited(
    backend: GeminiBackend, fake: FakeGemini
) -> None:
    fake.script = [gemini_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")] * 5
    with pytest.raises(BackendRateLimited):
        await backend.generate(job(), Control())
    assert len(fake.seen) == FAST_RETRY.attempts


async def test_persistent_server_error_is_retried_a_bounded_number_of_times(
    backend: GeminiBackend, fake: FakeGemini
) -> None:
    fake.script = [gemini_error(503, "UNAVAILABLE", "The model is overloaded.")] * 5
    with pytest.raises(BackendUnavailable, match=r"HTTP 503.*overloaded"):
        await backend.generate(job(), Control())
    assert len(fake.seen) == FAST_RETRY.attempts


async def test_retired_model_fails_naming_the_model(
    backend: GeminiBackend, fake: FakeGemini
) -> None:
    message = (
        "models/gemini-3-pro-image-preview is not found for API version v1beta, "
        "or is not supported for generateContent."
    )
    fake.script = [gemini_error(404, "NOT_FOUND", message)]
    with pytest.raises(BackendFailed, match=r"'gemini-3-pro-image-preview' not found or retired"):
        await backend.generate(job(provider_model="gemini-3-pro-image-preview"), Control())
    assert len(fake.seen) == 1


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
        (403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."),
        (401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
    ],
)
async def test_bad_key_fails_at_once_with_a_key_hint(
    backend: GeminiBackend, fake: FakeGemini, code: int, status: str, message: str
) -> None:
    fake.script = [gemini_error(code, status, message)]
    with pytest.raises(BackendFailed, match="refused the API key"):
        await backend.generate(job(), Control())
    assert len(fake.seen) == 1


async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    await check_missing_key(GeminiBackend("no-key", Options(api_key_env=KEY_ENV)), KEY_ENV, job())


def test_defaults_point_at_the_gemini_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-x")
    backend = create_backend("gemini", BackendTable(kind="gemini"))
    assert (backend.kind, backend.unavailable_reason()) == ("gemini", None)
    options = Options()
    assert options.base_url == "https://generativelanguage.googleapis.com"
    assert options.api_key_env == "GEMINI_API_KEY"


async def test_connection_refused_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    await check_unreachable(
        lambda url: GeminiBackend(
            "down", Options(base_url=url, api_key_env=KEY_ENV), retry=FAST_RETRY
        ),
        job(),
    )
