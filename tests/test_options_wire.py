"""v3 image options on each backend kind's wire: what the provider's loopback server receives.

Each kind maps a job's options (:class:`easel.domain.options.ImageOptions`) with one pure
function; these tests send jobs through the real adapters to the loopback servers of
``fake_providers`` (the providers' documented wire formats) and read the requests there.
The diffusers kind runs the tiny demo weights on the CPU.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from easel.backends import bfl, gemini, midjourney, openai
from easel.backends._diffusers_paint import diffusers_size, diffusers_steps
from easel.backends.base import GeneratedImage, Job
from easel.backends.demo_weights import write_demo_weights
from easel.backends.diffusers import DiffusersBackend
from easel.backends.diffusers import Options as DiffusersOptions
from easel.domain.options import ImageOptions
from easel.worker.attempts import in_format
from fake_providers import (
    BFL_KEY,
    GEMINI_KEY,
    MJ_SECRET,
    OPENAI_KEY,
    FakeBfl,
    FakeGemini,
    FakeMidjourneyProxy,
    FakeOpenAI,
)
from fakes import FAST_RETRY, Control, image_bytes, job_for, reference
from loopback import serve_app

KEY_ENV = "EASEL_TEST_OPTIONS_KEY"


def with_options(job: Job, negative: str = "", **options: object) -> Job:
    return replace(job, options=ImageOptions(**options), negative_prompt=negative)  # type: ignore[arg-type]


# --- OpenAI images ---------------------------------------------------------------------------


@pytest.fixture
def fake_openai() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
async def openai_backend(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[openai.OpenAIBackend]:
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    with serve_app(fake_openai.app()) as url:
        options = openai.Options(base_url=url + "/v1", api_key_env=KEY_ENV, timeout_s=5)
        backend = openai.OpenAIBackend("openai", options, retry=FAST_RETRY)
        yield backend
        await backend.close()


@pytest.mark.parametrize(
    ("model", "options", "wire"),
    [
        ("gpt_image_2", {"size": "1536x1024"}, {"size": "1536x1024"}),
        ("gpt_image_2", {"size": "2K"}, {"size": "2048x2048"}),
        ("gpt_image_2", {"size": "4K"}, {"size": "2880x2880"}),  # within 3840x2160's pixels
        ("gpt_image_2", {"quality": "high"}, {"quality": "high"}),
        ("gpt_image_2", {"background": "opaque"}, {"background": "opaque"}),
        ("gpt_image_2", {"output_format": "jpeg"}, {"output_format": "jpeg"}),
        # a template's ratio (v2) on a model with three sizes: the nearest one
        ("gpt_4o", {"aspect_ratio": "16:9"}, {"size": "1536x1024"}),
        ("gpt_image_1.5", {"aspect_ratio": "1:1"}, {"size": "1024x1024"}),
        ("gpt_image_2", {"aspect_ratio": "16:9"}, {"size": "1360x768"}),
    ],
)
async def test_openai_generations_carry_each_option(
    openai_backend: openai.OpenAIBackend,
    fake_openai: FakeOpenAI,
    model: str,
    options: dict[str, str],
    wire: dict[str, str],
) -> None:
    job = with_options(job_for("openai", model, "a teapot"), **options)
    await openai_backend.generate(job, Control())
    [seen] = fake_openai.seen
    assert seen.json is not None
    assert {k: v for k, v in seen.json.items() if k not in ("model", "prompt", "n")} == wire


async def test_openai_edits_carry_the_options_as_form_fields(
    openai_backend: openai.OpenAIBackend, fake_openai: FakeOpenAI
) -> None:
    job = job_for("openai", "gpt_image_2", "a teapot", reference("png", (1, 2, 3)))
    options = {"size": "1024x1536", "quality": "low", "output_format": "png"}
    await openai_backend.generate(with_options(job, **options), Control())
    [seen] = fake_openai.seen
    assert seen.path == "/v1/images/edits"
    assert {k: seen.fields[k] for k in options} == options


# --- Gemini ----------------------------------------------------------------------------------


@pytest.fixture
def fake_gemini() -> FakeGemini:
    return FakeGemini()


@pytest.fixture
async def gemini_backend(
    fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[gemini.GeminiBackend]:
    monkeypatch.setenv(KEY_ENV, GEMINI_KEY)
    with serve_app(fake_gemini.app()) as url:
        options = gemini.Options(base_url=url, api_key_env=KEY_ENV, timeout_s=5)
        backend = gemini.GeminiBackend("gemini", options, retry=FAST_RETRY)
        yield backend
        await backend.close()


def image_config(body: dict[str, object]) -> object:
    config = body.get("generationConfig") or body.get("generation_config") or {}
    assert isinstance(config, dict)
    return config.get("imageConfig") or config.get("image_config")


@pytest.mark.parametrize(
    ("model", "options", "wire"),
    [
        ("gemini_3_pro_image_preview", {"aspect_ratio": "16:9"}, {"aspectRatio": "16:9"}),
        ("gemini_3_pro_image_preview", {"size": "2K"}, {"imageSize": "2K"}),
        ("gemini_3.1_flash_image_preview", {"aspect_ratio": "8:1", "size": "4K"},
         {"aspectRatio": "8:1", "imageSize": "4K"}),
        ("gemini_2.5_flash_image_preview", {"aspect_ratio": "9:16", "size": "1K"},
         {"aspectRatio": "9:16"}),  # 2.5 Flash takes no imageSize
        ("gemini_3_pro_image_preview", {}, None),
    ],
)  # fmt: skip
async def test_gemini_image_config_carries_size_and_aspect_ratio(
    gemini_backend: gemini.GeminiBackend,
    fake_gemini: FakeGemini,
    model: str,
    options: dict[str, str],
    wire: dict[str, str] | None,
) -> None:
    await gemini_backend.generate(
        with_options(job_for("gemini", model, "a cat"), **options), Control()
    )
    [seen] = fake_gemini.seen
    assert image_config(seen.body) == wire


PNG = {"output_format": "png"}  # BFL's default, sent always


# --- Black Forest Labs -----------------------------------------------------------------------


@pytest.fixture
def fake_bfl() -> FakeBfl:
    return FakeBfl()


@pytest.fixture
def bfl_backend(fake_bfl: FakeBfl, monkeypatch: pytest.MonkeyPatch) -> Iterator[bfl.BflBackend]:
    monkeypatch.setenv(KEY_ENV, BFL_KEY)
    with serve_app(fake_bfl.app()) as url:
        options = bfl.Options(base_url=url, api_key_env=KEY_ENV)
        yield bfl.BflBackend("bfl", options, retry=FAST_RETRY, poll_interval_s=0.01)


@pytest.mark.parametrize(
    ("model", "options", "wire"),
    [
        ("flux.1_kontext_pro", {}, {"output_format": "png"}),
        ("flux.1_kontext_pro", {"aspect_ratio": "21:9", "output_format": "jpeg"},
         {"aspect_ratio": "21:9", "output_format": "jpeg"}),
        ("flux.1_kontext_pro", {"size": "1920x1080"}, {"aspect_ratio": "16:9", **PNG}),
        ("flux.1_dev", {}, {"width": 1024, "height": 1024, **PNG}),
        ("flux.1_dev", {"size": "1280x720"}, {"width": 1280, "height": 704, **PNG}),
        ("flux.1_dev", {"aspect_ratio": "3:4"}, {"width": 896, "height": 1184, **PNG}),
    ],
)  # fmt: skip
async def test_bfl_body_carries_the_shape_and_output_format(
    bfl_backend: bfl.BflBackend,
    fake_bfl: FakeBfl,
    model: str,
    options: dict[str, str],
    wire: dict[str, object],
) -> None:
    await bfl_backend.generate(with_options(job_for("bfl", model, "a fox"), **options), Control())
    [(_, body)] = fake_bfl.submits
    assert {k: v for k, v in body.items() if k != "prompt"} == wire


# --- Midjourney proxy ------------------------------------------------------------------------


@pytest.fixture
def fake_mj() -> FakeMidjourneyProxy:
    return FakeMidjourneyProxy()


@pytest.fixture
def mj_backend(
    fake_mj: FakeMidjourneyProxy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[midjourney.MidjourneyProxyBackend]:
    monkeypatch.setenv(KEY_ENV, MJ_SECRET)
    with serve_app(fake_mj.app()) as url:
        options = midjourney.Options(base_url=url, api_key_env=KEY_ENV)
        yield midjourney.MidjourneyProxyBackend(
            "mj", options, retry=FAST_RETRY, poll_interval_s=0.01
        )


@pytest.mark.parametrize(
    ("options", "negative", "prompt"),
    [
        ({"aspect_ratio": "16:9"}, "", "a lighthouse --ar 16:9"),
        ({"size": "1920x1080"}, "", "a lighthouse --ar 16:9"),
        ({}, "fog,  boats", "a lighthouse --no fog, boats"),
        ({"aspect_ratio": "1:4"}, "fog", "a lighthouse --ar 1:4 --no fog"),
        ({}, "", "a lighthouse"),
    ],
)
async def test_midjourney_prompt_carries_ar_and_no(
    mj_backend: midjourney.MidjourneyProxyBackend,
    fake_mj: FakeMidjourneyProxy,
    options: dict[str, str],
    negative: str,
    prompt: str,
) -> None:
    job = with_options(Job("t-1", "midjourney", "a lighthouse", ()), negative, **options)
    await mj_backend.generate(job, Control())
    [(_, body)] = fake_mj.submits
    assert body["prompt"] == prompt


# --- diffusers (tiny demo weights, CPU) -------------------------------------------------------

SIZE = 64


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_demo_weights(tmp_path_factory.mktemp("demo-weights"))


def tiny(weights: dict[str, Path], pipeline: str) -> DiffusersBackend:
    options = DiffusersOptions.model_validate(
        {
            "pipeline": pipeline,
            "weights": str(weights[pipeline]),
            "device": "cpu",
            "dtype": "float32",
            "steps": 2,
            "width": SIZE,
            "height": SIZE,
        }
    )
    return DiffusersBackend(f"tiny-{pipeline}", options)


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


@pytest.mark.local  # torch and diffusers: the local extra
@pytest.mark.parametrize("pipeline", ["flux", "flux-kontext"])
async def test_diffusers_paints_the_aspect_ratio_size_and_quality_asked(
    weights: dict[str, Path], pipeline: str
) -> None:
    backend = tiny(weights, pipeline)
    base = Job("t", "flux.1_dev", "a red cat", (reference("png", (9, 9, 9)),))
    wide = await backend.generate(with_options(base, aspect_ratio="16:9"), Control())
    assert size_of(wide.data) == (80, 48)  # the configured 64x64 area, 16:9, multiples of 16
    exact = await backend.generate(with_options(base, size="96x32"), Control())
    assert size_of(exact.data) == (96, 32)
    control = Control()
    await backend.generate(with_options(base, quality="max"), control)
    assert len(control.fractions) == 4  # 2 steps configured, twice as many for "max"


def test_diffusers_size_and_steps_are_reusable_functions() -> None:
    assert diffusers_size(ImageOptions(), (1024, 768)) == (1024, 768)
    assert diffusers_size(ImageOptions(size="4K"), (1024, 1024)) == (2048, 2048)
    assert diffusers_size(ImageOptions(size="1000x600"), (1024, 1024)) == (992, 608)
    assert diffusers_size(ImageOptions(aspect_ratio="9:16"), (1024, 1024)) == (768, 1360)
    assert diffusers_size(ImageOptions(size="2K"), (512, 512), max_side=1536) == (1536, 1536)
    assert [diffusers_steps(q, 28) for q in (None, "low", "medium", "high", "max")] == [
        28, 14, 28, 42, 56,
    ]  # fmt: skip


# --- output_format --------------------------------------------------------------------------


async def test_output_is_re_encoded_only_when_the_format_differs() -> None:
    png = GeneratedImage(image_bytes("PNG"), "png")
    assert await in_format(png, None) is png  # the provider's bytes, C2PA and all
    assert await in_format(png, "png") is png
    jpeg = await in_format(png, "jpeg")
    assert jpeg.format == "jpeg" and jpeg.data.startswith(b"\xff\xd8\xff")
    back = await in_format(jpeg, "png")
    assert back.format == "png" and back.data.startswith(b"\x89PNG")
