"""The ``bfl`` backend against a loopback server speaking Black Forest Labs' documented API.

:class:`fake_providers.FakeBfl` checks what the docs require of a request (``x-key``, JSON
fields, raw base64 references) and answers as the docs show: ``{id, polling_url}`` on submit,
then ``/v1/get_result`` answers ``Pending`` … ``Ready`` with a ``result.sample`` delivery URL.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from easel.backends._remote import MAX_RESULT_BYTES
from easel.backends.base import (
    BackendFailed,
    BackendRejected,
    BackendUnavailable,
    InputImage,
    Job,
    JobCancelled,
)
from easel.backends.bfl import BflBackend, Options
from easel.backends.registry import create_backend
from easel.config import BackendTable
from easel.worker.attempts import run_attempt
from fake_providers import BFL_KEY, BFL_PENDING, BFL_READY, FakeBfl
from fakes import FAST_RETRY, Control, check_missing_key, image_bytes, job_for, reference
from loopback import serve_app

KEY_ENV = "EASEL_TEST_BFL_KEY"


@pytest.fixture
def fake() -> FakeBfl:
    return FakeBfl()


@pytest.fixture
def base_url(fake: FakeBfl, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, BFL_KEY)
    with serve_app(fake.app()) as url:
        yield url


def backend(base_url: str, **options: Any) -> BflBackend:
    return BflBackend(
        "bfl",
        Options(base_url=base_url, api_key_env=KEY_ENV, **options),
        retry=FAST_RETRY,
        poll_interval_s=0.01,
    )


def job(model: str = "flux.1_kontext_pro", *images: InputImage, provider: str | None = None) -> Job:
    return job_for("bfl", model, "a red fox in the snow", *images, provider_model=provider)


async def test_kontext_pro_sends_every_reference_and_polls_until_ready(
    fake: FakeBfl, base_url: str
) -> None:
    fake.statuses = [BFL_PENDING, BFL_PENDING, BFL_PENDING, BFL_READY]
    refs = [reference("PNG", (255, 0, 0)), reference("JPEG", (0, 255, 0))]
    refs.append(reference("PNG", (0, 0, 255)))

    image = await backend(base_url).generate(job("flux.1_kontext_pro", *refs), Control())

    ((endpoint, body),) = fake.submits
    assert endpoint == "flux-kontext-pro"
    assert body["prompt"] == "a red fox in the snow"
    assert body["output_format"] == "png"
    assert [
        base64.b64decode(body[k]) for k in ("input_image", "input_image_2", "input_image_3")
    ] == [r.data for r in refs]
    assert "input_image_4" not in body
    assert "width" not in body
    assert len(fake.polls) == 4
    assert (image.data, image.format) == (fake.sample, "png")


async def test_webp_reference_is_sent_as_png(fake: FakeBfl, base_url: str) -> None:
    await backend(base_url).generate(
        job("flux.1_kontext_pro", reference("WEBP", (9, 9, 9))), Control()
    )

    sent = base64.b64decode(fake.submits[0][1]["input_image"])
    assert sent.startswith(b"\x89PNG")


async def test_flux_dev_posts_prompt_with_default_size_and_detects_jpeg(
    fake: FakeBfl, base_url: str
) -> None:
    fake.sample = image_bytes("JPEG")

    image = await backend(base_url).generate(job("flux.1_dev"), Control())

    ((endpoint, body),) = fake.submits
    assert endpoint == "flux-dev"
    assert (body["prompt"], body["width"], body["height"]) == ("a red fox in the snow", 1024, 1024)
    assert not any(key.startswith("input_image") for key in body)
    assert image.format == "jpeg"


async def test_provider_model_from_config_picks_the_endpoint(fake: FakeBfl, base_url: str) -> None:
    await backend(base_url).generate(
        job("flux.1_kontext_pro", provider="flux-kontext-max"), Control()
    )

    assert fake.submits[0][0] == "flux-kontext-max"


async def test_result_is_downloaded_without_the_api_key(fake: FakeBfl, base_url: str) -> None:
    await backend(base_url).generate(job(), Control())

    (headers,) = fake.download_headers
    assert "x-key" not in headers


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_a_result_over_the_size_limit_fails_the_attempt_unread(
    fake: FakeBfl, base_url: str, chunked: bool
) -> None:
    fake.sample = image_bytes("PNG") + bytes(MAX_RESULT_BYTES)
    fake.stream_sample = chunked

    with pytest.raises(BackendFailed, match="larger than 50 MB; it was not downloaded"):
        await backend(base_url).generate(job(), Control())


async def test_a_result_at_the_size_limit_is_read(fake: FakeBfl, base_url: str) -> None:
    png = image_bytes("PNG")
    fake.sample = png + bytes(MAX_RESULT_BYTES - len(png))  # trailing bytes: still a PNG
    fake.stream_sample = True

    image = await backend(base_url).generate(job(), Control())

    assert len(image.data) == MAX_RESULT_BYTES


async def test_progress_from_the_answers_is_reported(fake: FakeBfl, base_url: str) -> None:
    fake.statuses = [
        {"status": "Pending", "progress": 0.25},
        {**BFL_PENDING, "progress": 50},
        BFL_READY,
    ]
    control = Control()

    await backend(base_url).generate(job(), control)

    assert control.fractions == [0.25, 0.5, 1.0]


@pytest.mark.parametrize("status", ["Request Moderated", "Content Moderated"])
async def test_moderation_is_a_policy_refusal(fake: FakeBfl, base_url: str, status: str) -> None:
    fake.statuses = [BFL_PENDING, {"status": status, "details": {"Moderation Reasons": ["x"]}}]

    with pytest.raises(BackendRejected, match=status):
        await backend(base_url).generate(job(), Control())


@pytest.mark.parametrize("status", ["Error", "Failed", "Task not found", "Exploded"])
async def test_error_statuses_fail_the_backend(fake: FakeBfl, base_url: str, status: str) -> None:
    fake.statuses = [BFL_PENDING, {"status": status}]

    with pytest.raises(BackendFailed, match=status) as caught:
        await backend(base_url).generate(job(), Control())
    assert not caught.value.retryable


async def test_rate_limit_is_retried_then_succeeds(fake: FakeBfl, base_url: str) -> None:
    fake.submit_errors = [(429, {"detail": "Too many active tasks"})]
    fake.poll_errors = [(502, {"detail": "Bad gateway"})]

    image = await backend(base_url).generate(job(), Control())

    assert fake.submit_attempts == 2
    assert image.data == fake.sample


async def test_persistent_503_is_unavailable_after_bounded_retries(
    fake: FakeBfl, base_url: str
) -> None:
    fake.submit_errors = [(503, {"detail": "Service Unavailable"})] * 10

    with pytest.raises(BackendUnavailable, match="503"):
        await backend(base_url).generate(job(), Control())
    assert fake.submit_attempts == FAST_RETRY.attempts


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (402, {"detail": "Insufficient credits"}, "out of credits"),
        (422, {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}, "HTTP 422"),
    ],
)
async def test_credit_and_validation_errors_fail_without_retry(
    fake: FakeBfl, base_url: str, status: int, body: dict[str, Any], words: str
) -> None:
    fake.submit_errors = [(status, body)]

    with pytest.raises(BackendFailed, match=words):
        await backend(base_url).generate(job(), Control())
    assert fake.submit_attempts == 1


async def test_wrong_key_is_a_final_failure(
    fake: FakeBfl, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "wrong")

    with pytest.raises(BackendFailed, match="401"):
        await backend(base_url).generate(job(), Control())
    assert fake.submit_attempts == 1


async def test_cancel_between_polls_stops_polling(fake: FakeBfl, base_url: str) -> None:
    fake.statuses = [BFL_PENDING]
    control = Control()
    fake.on_poll = lambda count: setattr(control, "cancelled", count >= 2)

    with pytest.raises(JobCancelled):
        await backend(base_url).generate(job(), control)
    assert len(fake.polls) == 2


async def test_a_task_that_never_finishes_ends_at_the_attempts_deadline(
    fake: FakeBfl, base_url: str
) -> None:
    fake.statuses = [BFL_PENDING]

    with pytest.raises(BackendUnavailable, match=r"backend 'bfl' did not finish within 0\.3 s"):
        await run_attempt(backend(base_url, timeout_s=0.3), job(), Control())


async def test_missing_key_makes_the_backend_unavailable(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)

    await check_missing_key(backend(base_url), KEY_ENV, job())


def test_registry_builds_bfl_with_bfl_defaults() -> None:
    bfl = create_backend("bfl", BackendTable(kind="bfl"))

    assert isinstance(bfl, BflBackend)
    assert (bfl.options.base_url, bfl.options.api_key_env) == ("https://api.bfl.ai", "BFL_API_KEY")
