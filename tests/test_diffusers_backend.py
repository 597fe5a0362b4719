"""The ``diffusers`` backend on CPU with tiny random FLUX / FLUX-Kontext pipelines.

The pipelines come from ``write_demo_weights`` (no Hub access) once per session; every
backend loads them from that directory, so each test also covers the saved-then-reloaded
path. Their images are noise: the tests check sizes, hooks and errors, not pixels.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from diffusers_tools import Control, corrupt_copy, picture, png_size
from easel.backends import diffusers as backend_module
from easel.backends._diffusers_load import optimize_pipeline
from easel.backends._diffusers_paint import reference_canvas
from easel.backends.base import BackendUnavailable, InputImage, Job, JobCancelled, LoadState
from easel.backends.demo_weights import write_demo_weights
from easel.backends.diffusers import DiffusersBackend, Options
from easel.backends.registry import create_backend
from easel.config import BackendTable, ConfigError
from easel.domain.tasks import task_seed

pytestmark = pytest.mark.local  # torch and diffusers: the local extra

SIZE = 64


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_demo_weights(tmp_path_factory.mktemp("demo-weights"), ("flux", "flux-kontext"))


def tiny(weights: dict[str, Path], pipeline: str, steps: int = 2) -> DiffusersBackend:
    options = Options.model_validate(
        {
            "pipeline": pipeline,
            "weights": str(weights[pipeline]),
            "device": "cpu",
            "dtype": "float32",
            "steps": steps,
            "width": SIZE,
            "height": SIZE,
        }
    )
    return DiffusersBackend(f"tiny-{pipeline}", options)


def job(*images: InputImage, task_id: str = "task-1") -> Job:
    return Job(task_id, "flux.1_dev", "a red cat in image 1", tuple(images))


def test_importing_the_backend_does_not_import_torch() -> None:
    code = (
        "import sys, easel.backends.diffusers, easel.backends.demo_weights\n"
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"pipeline": "flux", "sampler": "euler"}, "unknown key sampler"),
        ({"pipeline": "flux", "dtype": "int8"}, "dtype"),
        ({"pipeline": "sdxl"}, "pipeline"),
        ({"pipeline": "flux", "width": 1000}, "multiple of 16"),
    ],
)
def test_config_rejects_bad_options(table: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        create_backend("local", BackendTable.model_validate({"kind": "diffusers", **table}))


@pytest.mark.parametrize(("pipeline", "guidance"), [("flux", 3.5), ("flux-kontext", 2.5)])
def test_defaults_follow_the_pipeline(pipeline: str, guidance: float) -> None:
    table = BackendTable.model_validate({"kind": "diffusers", "pipeline": pipeline})
    backend = create_backend("local", table)
    assert isinstance(backend, DiffusersBackend)
    options = backend.options
    assert (options.device, options.dtype, options.num_steps) == ("cuda", "bfloat16", 28)
    assert (options.width, options.height, options.guidance_scale) == (1024, 1024, guidance)
    assert options.weights_source.startswith("black-forest-labs/FLUX.1-")


@pytest.mark.parametrize("pipeline", ["flux", "flux-kontext"])
async def test_pipeline_paints_a_png_of_the_configured_size(
    weights: dict[str, Path], pipeline: str
) -> None:
    backend, control = tiny(weights, pipeline, steps=3), Control()
    await backend.load()
    image = await backend.generate(job(picture(SIZE, SIZE)), control)
    assert (image.format, png_size(image.data)) == ("png", (SIZE, SIZE))
    assert control.fractions == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert backend.seconds_per_step is not None
    assert backend.seconds_per_step > 0
    assert backend.unavailable_reason() is None


async def test_cancel_after_the_first_step_stops_the_run(weights: dict[str, Path]) -> None:
    backend, control = tiny(weights, "flux", steps=4), Control(cancel_after=1)
    with pytest.raises(JobCancelled):
        await backend.generate(job(), control)
    assert control.fractions == [0.25]  # steps 2-4 never ran


async def test_missing_weights_directory_makes_the_backend_unavailable(tmp_path: Path) -> None:
    """Seen before any load (an API process, which never loads, refuses the model too);
    a load attempt then fails for good."""
    options = Options(pipeline="flux", weights=str(tmp_path / "missing"), device="cpu")
    backend = DiffusersBackend("local-flux", options)
    before = backend.unavailable_reason()
    assert before is not None
    assert "cannot load the flux pipeline" in before
    assert "missing" in before
    assert "no such directory" in before
    with pytest.raises(BackendUnavailable, match="could not load the flux pipeline") as caught:
        await backend.generate(job(), Control())
    assert "no such directory" in str(caught.value)
    assert backend.load_state is LoadState.FAILED
    assert backend.unavailable_reason() == str(caught.value)
    (tmp_path / "missing").mkdir()  # sticky: no reload per task, even if weights appear
    with pytest.raises(BackendUnavailable):
        await backend.load()
    assert backend.load_state is LoadState.FAILED


async def test_corrupt_weights_fail_at_load_and_stay_failed(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    options = Options(
        pipeline="flux", weights=str(corrupt_copy(weights["flux"], tmp_path / "w")), device="cpu"
    )
    backend = DiffusersBackend("local-flux", options)
    assert backend.unavailable_reason() is None  # looks fine until loaded
    with pytest.raises(BackendUnavailable, match="could not load the flux pipeline"):
        await backend.load()
    assert backend.load_state is LoadState.FAILED
    reason = backend.unavailable_reason()
    assert reason is not None
    assert str(tmp_path / "w") in reason
    assert len(reason) < 400  # a reason a client reads, not a traceback


async def test_weights_that_vanish_after_the_load_do_not_matter(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    copy = shutil.copytree(weights["flux"], tmp_path / "w")
    backend = tiny({"flux": copy}, "flux")
    await backend.load()
    shutil.rmtree(copy)
    assert (backend.load_state, backend.unavailable_reason()) == (LoadState.LOADED, None)
    image = await backend.generate(job(), Control())
    assert png_size(image.data) == (SIZE, SIZE)


async def test_reloaded_weights_paint_the_same_image_for_the_same_task(
    weights: dict[str, Path],
) -> None:
    first, second = tiny(weights, "flux"), tiny(weights, "flux")
    same = [(await b.generate(job(task_id="t-1"), Control())).data for b in (first, second)]
    other = await first.generate(job(task_id="t-2"), Control())
    assert same[0] == same[1]
    assert other.data != same[0]
    assert task_seed("t-1") != task_seed("t-2")


async def test_flux_ignores_reference_images(weights: dict[str, Path]) -> None:
    backend = tiny(weights, "flux")
    with_images = await backend.generate(job(picture(300, 200), task_id="t"), Control())
    without = await backend.generate(job(task_id="t"), Control())
    assert with_images.data == without.data


@pytest.mark.parametrize("pipeline", ["flux", "flux-kontext"])
async def test_a_negative_prompt_reaches_the_pipeline_and_changes_the_image(
    weights: dict[str, Path], pipeline: str
) -> None:
    """A text_to_image's negative prompt runs under true guidance: the same task paints
    another image with it, all steps reported."""
    backend, control = tiny(weights, pipeline), Control()
    plain = await backend.generate(job(task_id="t"), Control())
    negative = replace(job(task_id="t"), negative_prompt="blurry, text")
    guided = await backend.generate(negative, control)
    assert png_size(guided.data) == (SIZE, SIZE)
    assert guided.data != plain.data
    assert control.fractions[-1] == 1.0


async def test_kontext_keeps_the_configured_size_for_a_larger_reference(
    weights: dict[str, Path],
) -> None:
    backend = tiny(weights, "flux-kontext", steps=4)
    started = time.perf_counter()
    image = await backend.generate(job(picture(300, 200)), Control())
    assert png_size(image.data) == (SIZE, SIZE)
    assert time.perf_counter() - started < 10  # a 1 MP reference would take minutes on CPU


async def test_kontext_accepts_several_references(weights: dict[str, Path]) -> None:
    backend, control = tiny(weights, "flux-kontext"), Control()
    references = (picture(40, 40), picture(80, 40, (0, 0, 255)), picture(20, 60, (0, 255, 0)))
    image = await backend.generate(job(*references), control)
    assert png_size(image.data) == (SIZE, SIZE)
    assert control.fractions[-1] == 1.0


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(300, 200)], (64, 48)),  # aspect kept, area within 64×64, sides multiples of 16
        ([(100, 100), (100, 100)], (80, 48)),  # side by side: a 2:1 strip, nearest in 16s
        ([(10, 10)], (64, 64)),  # small references are scaled up to the output's area
        ([(1000, 10)], (256, 16)),  # extreme strips keep at least one multiple per side
        ([(10, 1000)], (16, 256)),
        ([(200, 300)], (48, 64)),
    ],
)
def test_reference_canvas_fits_the_output_area(
    sizes: list[tuple[int, int]], expected: tuple[int, int]
) -> None:
    canvas = reference_canvas(tuple(picture(w, h) for w, h in sizes), SIZE * SIZE, 16)
    assert canvas.size == expected


def test_reference_canvas_puts_references_left_to_right_in_order() -> None:
    red, blue = picture(50, 50, (255, 0, 0)), picture(50, 50, (0, 0, 255))
    canvas = reference_canvas((red, blue), 64 * 32, 16)
    assert canvas.getpixel((4, 16)) == (255, 0, 0)
    assert canvas.getpixel((canvas.width - 4, 16)) == (0, 0, 255)


def test_optimized_path_without_compile_still_paints(weights: dict[str, Path]) -> None:
    """The GPU path's graph rewrites (compile and fp8 need CUDA) keep the pipeline working."""
    from diffusers import FluxPipeline

    pipe: Any = FluxPipeline.from_pretrained(weights["flux"], local_files_only=True)  # type: ignore[no-untyped-call]
    pipe.set_progress_bar_config(disable=True)
    applied = optimize_pipeline(pipe, compile_mode=None, fp8=False, first_block_cache=0.1)
    assert applied == ["fused-qkv", "channels-last-vae", "first-block-cache@0.1"]
    image = pipe("a cat", width=SIZE, height=SIZE, num_inference_steps=3).images[0]
    assert image.size == (SIZE, SIZE)


def test_cuda_device_without_cuda_is_unavailable(weights: dict[str, Path]) -> None:
    if pytest.importorskip("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    options = Options(pipeline="flux", weights=str(weights["flux"]), device="cuda")
    reason = DiffusersBackend("gpu-flux", options).unavailable_reason()
    assert reason is not None
    assert "CUDA is not available" in reason


def test_missing_extra_names_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, "_REQUIRED", ("torch", "easel_no_such_package"))
    reason = DiffusersBackend("local", Options(pipeline="flux")).unavailable_reason()
    assert reason is not None
    assert "easel_no_such_package" in reason
    assert "pip install 'easel[local]'" in reason
