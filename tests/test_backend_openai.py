"""The ``openai`` backend against a loopback server speaking the OpenAI Images API.

:class:`fake_providers.FakeOpenAI` answers ``POST /v1/images/generations`` (JSON) and
``POST /v1/images/edits`` (multipart with repeated ``image[]`` parts) as the API reference
gives them, records every request it sees and plays a script of answers (errors first, then
success) per test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from easel.backends._remote import RetryPolicy
from easel.backends.base import (
    BackendFailed,
    BackendRateLimited,
    BackendRejected,
    BackendUnavailable,
    InputImage,
    Job,
    JobCancelled,
)
from easel.backends.openai import OpenAIBackend, Options
from easel.backends.registry import create_backend
from easel.config import BackendTable, ConfigError
from fake_providers import OPENAI_IMAGE, OPENAI_KEY, FakeOpenAI, openai_error, openai_image
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

KEY_ENV = "EASEL_TEST_OPENAI_KEY"
KEY = OPENAI_KEY


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def base_url(fake: FakeOpenAI) -> Iterator[str]:
    with serve_app(fake.app()) as url:
        yield url + "/v1"


@pytest.fixture
def options(base_url: str, monkeypatch: pytest.MonkeyPatch) -> Options:
    monkeypatch.setenv(KEY_ENV, KEY)
    return Options(base_url=base_url, api_key_env=KEY_ENV, timeout_s=5)


@pytest.fixture
async def backend(options: Options) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend("openai-test", options, retry=FAST_RETRY)
    yield backend
    await backend.close()


def job(
    model_version: str = "gpt_image_2", *images: InputImage, provider_model: str | None = None
) -> Job:
    prompt = "a red teapot on a table"
    return job_for("openai", model_version, prompt, *images, provider_model=provider_model)


@pytest.mark.parametrize(
    ("model_version", "wire_model"),
    [("gpt_4o", "gpt-image-1"), ("gpt_image_1.5", "gpt-image-1.5"), ("gpt_image_2", "gpt-image-2")],
)
async def test_text_only_job_posts_json_to_generations_with_the_default_model(
    backend: OpenAIBackend, fake: FakeOpenAI, model_version: str, wire_model: str
) -> None:
    control = Control()
    image = await backend.generate(job(model_version), control)
    assert (image.data, image.format) == (OPENAI_IMAGE, "png")
    [seen] = fake.seen
    assert seen.path == "/v1/images/generations"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.json == {"model": wire_model, "prompt": "a red teapot on a table", "n": 1}
    assert control.fractions == [1.0]


async def test_job_with_images_sends_every_reference_as_multipart_image_parts(
    backend: OpenAIBackend, fake: FakeOpenAI
) -> None:
    refs = (
        reference("png", (255, 0, 0)),
        reference("jpeg", (0, 255, 0)),
        reference("png", (0, 0, 9)),
    )
    fake.script = [openai_image(image_bytes("JPEG"))]
    image = await backend.generate(job("gpt_image_1.5", *refs), Control())
    assert image.format == "jpeg"
    [seen] = fake.seen
    assert seen.path == "/v1/images/edits"
    assert seen.fields == {"model": "gpt-image-1.5", "prompt": "a red teapot on a table"}
    assert [data for _, _, data in seen.files] == [ref.data for ref in refs]
    assert [mime for _, mime, _ in seen.files] == ["image/png", "image/jpeg", "image/png"]
    assert [name for name, _, _ in seen.files] == ["image0.png", "image1.jpg", "image2.png"]


async def test_provider_model_from_config_reaches_the_wire(
    backend: OpenAIBackend, fake: FakeOpenAI
) -> None:
    await backend.generate(job("gpt_4o", provider_model="gpt-image-1.5"), Control())
    assert fake.seen[0].json is not None
    assert fake.seen[0].json["model"] == "gpt-image-1.5"


async def test_rate_limit_is_retried_then_succeeds(
    backend: OpenAIBackend, fake: FakeOpenAI
) -> None:
    fake.script = [openai_error(429, "Rate limit reached for gpt-image-2"), openai_image()]
    image = await backend.generate(job(), Control())
    assert image.data == OPENAI_IMAGE
    assert len(fake.seen) == 2


async def test_persistent_rate_limit_ends_as_rate_limited_after_bounded_attempts(
    backend: OpenAIBackend, fake: FakeOpenAI
) -> None:
    fake.script = [openai_error(429, "You exceeded your current quota")] * 5
    with pytest.raises(BackendRateLimited, match="rate limiting"):
        await backend.generate(job(), Control())
    assert len(fake.seen) == FAST_RETRY.attempts


async def test_persistent_server_error_is_retried_a_bounded_number_of_times(
    backend: OpenAIBackend, fake: FakeOpenAI
) -> None:
    fake.script = [openai_error(500, "The server had an error while processing your request.")] * 5
    with pytest.raises(BackendUnavailable, match=r"OpenAI is unavailable \(HTTP 500\)") as caught:
        await backend.generate(job(), Control())
    assert not isinstance(caught.value, BackendRateLimited)
    assert len(fake.seen) == FAST_RETRY.attempts


async def test_bad_key_fails_at_once_with_a_key_hint(
    backend: OpenAIBackend, fake: FakeOpenAI
) -> None:
    fake.script = [
        openai_error(401, "Incorrect API key provided: sk-test***123.", "invalid_api_key")
    ]
    with pytest.raises(BackendFailed, match="refused the API key") as caught:
        await backend.generate(job(), Control())
    assert "Incorrect API key provided" in str(caught.value)
    assert len(fake.seen) == 1


async def test_retired_model_fails_naming_the_model_and_provider_model(
    backend: OpenAIBackend, fake: FakeOpenAI
) -> None:
    fake.script = [openai_error(404, "The model `gpt-image-1` does not exist.", "model_not_found")]
    with pytest.raises(BackendFailed, match=r"model 'gpt-image-1' not found or retired") as caught:
        await backend.generate(job("gpt_4o"), Control())
    assert "provider_model" in str(caught.value)
    assert len(fake.seen) == 1


@pytest.mark.parametrize("with_images", [False, True])
async def test_moderation_block_is_a_policy_rejection_never_retried(
    backend: OpenAIBackend, fake: FakeOpenAI, with_images: bool
) -> None:
    message = "Your request was rejected by the safety system. safety_violations=[sexual]."
    fake.script = [openai_error(400, message, "moderation_blocked")]
    refs = (reference("png", (1, 1, 1)),) if with_images else ()
    with pytest.raises(BackendRejected, match="rejected by the safety system") as caught:
        await backend.generate(job("gpt_image_2", *refs), Control())
    assert caught.value.error_code == 2008
    assert len(fake.seen) == 1


async def test_other_bad_request_is_a_definite_failure(
    backend: OpenAIBackend, fake: FakeOpenAI
) -> None:
    fake.script = [openai_error(400, "Invalid size '9x9'.", "invalid_value")]
    with pytest.raises(BackendFailed, match=r"rejected the request \(HTTP 400\).*Invalid size"):
        await backend.generate(job(), Control())


async def test_answer_without_image_is_a_failure(backend: OpenAIBackend, fake: FakeOpenAI) -> None:
    fake.script = [(200, {"created": 1, "data": []})]
    with pytest.raises(BackendFailed, match="without an image"):
        await backend.generate(job(), Control())


async def test_timeout_is_retried_then_unavailable(fake: FakeOpenAI, options: Options) -> None:
    fake.delay_s = 0.5
    backend = OpenAIBackend(
        "slow",
        options.model_copy(update={"request_timeout_s": 0.1}),
        retry=RetryPolicy(attempts=2, wait_initial_s=0.01, wait_max_s=0.01),
    )
    try:
        with pytest.raises(BackendUnavailable, match="timed out"):
            await backend.generate(job(), Control())
    finally:
        await backend.close()
    assert len(fake.seen) == 2


async def test_connection_refused_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    await check_unreachable(
        lambda url: OpenAIBackend(
            "down", Options(base_url=url + "/v1", api_key_env=KEY_ENV), retry=FAST_RETRY
        ),
        job(),
    )


async def test_concurrency_is_limited_per_backend(fake: FakeOpenAI, options: Options) -> None:
    fake.delay_s = 0.1
    backend = OpenAIBackend("one-at-a-time", options.model_copy(update={"max_concurrency": 1}))
    try:
        await asyncio.gather(*(backend.generate(job(), Control()) for _ in range(3)))
    finally:
        await backend.close()
    assert (len(fake.seen), fake.most_in_flight) == (3, 1)


async def test_cancelled_task_sends_nothing(backend: OpenAIBackend, fake: FakeOpenAI) -> None:
    with pytest.raises(JobCancelled):
        await backend.generate(job(), Control(cancelled=True))
    assert fake.seen == []


async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    await check_missing_key(OpenAIBackend("no-key", Options(api_key_env=KEY_ENV)), KEY_ENV, job())


def test_defaults_point_at_the_openai_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    backend = create_backend("openai", BackendTable(kind="openai"))
    assert backend.kind == "openai"
    assert backend.unavailable_reason() is None
    options = Options()
    assert (options.base_url, options.api_key_env) == (
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
    )


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown key model"):
        create_backend("openai", BackendTable.model_validate({"kind": "openai", "model": "x"}))


def test_importing_the_modules_does_not_import_the_sdks() -> None:
    code = (
        "import sys, easel.backends.openai, easel.backends.gemini\n"
        "loaded = {'openai', 'google.genai', 'stamina'} & set(sys.modules)\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
