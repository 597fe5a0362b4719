"""The ``diffusers`` backend's open-weight families on CPU, on tiny random pipelines.

Z-Image (text to image), FLUX.2 klein (text to image and editing with up to 4 references) and
Qwen-Image-Edit-Plus (editing with 1–3 references, true CFG) are written once per session by
``write_demo_weights`` (no Hub access) and loaded from that directory, as real weights would
be. Where torchvision is missing (as here), Qwen's processor loads without its video half.
Images are noise: the tests check sizes, hooks, references, seeds and errors.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from diffusers_tools import Control, corrupt_copy, picture, png_size, write_lora
from easel.backends._diffusers_families import FAMILIES
from easel.backends._diffusers_load import load_pipeline, optimize_pipeline, read_pipeline
from easel.backends._diffusers_memory import PipelineLoader
from easel.backends.autoconfig import auto_tables
from easel.backends.base import BackendUnavailable, InputImage, Job, JobCancelled, LoadState
from easel.backends.demo_weights import write_demo_weights
from easel.backends.diffusers import DiffusersBackend, Options
from easel.backends.registry import create_backend
from easel.config import BackendTable, ConfigError
from easel.domain.options import ImageOptions

pytestmark = pytest.mark.local  # torch and diffusers: the local extra

SIZE = 64


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    families = ["z-image", "flux2-klein", "qwen-image-edit-plus"]
    return write_demo_weights(tmp_path_factory.mktemp("open-weights"), families)


def tiny(weights: dict[str, Path], pipeline: str, steps: int = 2, **more: Any) -> DiffusersBackend:
    table: dict[str, Any] = {"pipeline": pipeline, "weights": str(weights[pipeline])}
    table |= {"device": "cpu"}
    table |= {"dtype": "float32", "steps": steps, "width": SIZE, "height": SIZE, **more}
    return DiffusersBackend(f"tiny-{pipeline}", Options.model_validate(table))


def job(*images: InputImage, task_id: str = "task-1", negative: str = "") -> Job:
    return Job(task_id, "flux.1_dev", "make the cat blue", tuple(images), negative_prompt=negative)


@pytest.mark.parametrize(
    ("pipeline", "steps", "guidance", "weights", "licence"),
    [
        ("z-image", 9, 0.0, "Tongyi-MAI/Z-Image-Turbo", "Apache-2.0"),
        ("flux2-klein", 4, 1.0, "black-forest-labs/FLUX.2-klein-4B", "Apache-2.0"),
        ("qwen-image-edit-plus", 40, 1.0, "Qwen/Qwen-Image-Edit-2511", "Apache-2.0"),
    ],
)
def test_defaults_are_the_published_ones(
    pipeline: str, steps: int, guidance: float, weights: str, licence: str
) -> None:
    table = BackendTable.model_validate({"kind": "diffusers", "pipeline": pipeline})
    backend = create_backend("local", table)
    assert isinstance(backend, DiffusersBackend)
    options = backend.options
    assert (options.num_steps, options.guidance_scale, options.weights_source) == (
        steps,
        guidance,
        weights,
    )
    assert options.family.licence == licence
    assert (
        backend.served_by("ignored")
        == f"diffusers {options.family.pipeline_class}, weights {weights}"
    )


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"pipeline": "z-image", "width": 32}, "sides of 64 to 2048 pixels"),
        ({"pipeline": "flux2-klein", "height": 4096}, "sides of 64 to 2048 pixels"),
        ({"pipeline": "qwen-image-edit-plus", "true_cfg": 0.5}, "true_cfg"),
        ({"pipeline": "z-image", "lora_scale": 0}, "lora_scale"),
    ],
)
def test_config_refuses_what_a_family_cannot_do(table: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        create_backend("local", BackendTable.model_validate({"kind": "diffusers", **table}))


async def test_a_tasks_aspect_ratio_is_painted_within_the_familys_limits(
    weights: dict[str, Path],
) -> None:
    """v3's aspect_ratio over the configured area, each side at least Z-Image's 64."""
    backend = tiny(weights, "z-image", width=128, height=64)
    wide = replace(job(), options=ImageOptions(aspect_ratio="16:9"))
    width, height = png_size((await backend.generate(wide, Control())).data)
    assert width > height >= FAMILIES["z-image"].min_side
    assert (width % 16, height % 16) == (0, 0)


@pytest.mark.parametrize("pipeline", ["z-image", "flux2-klein"])
async def test_text_to_image_paints_the_configured_size_with_progress(
    weights: dict[str, Path], pipeline: str
) -> None:
    backend, control = tiny(weights, pipeline, steps=3), Control()
    await backend.load()
    assert backend.load_state is LoadState.LOADED
    image = await backend.generate(job(), control)
    assert (image.format, png_size(image.data)) == ("png", (SIZE, SIZE))
    assert control.fractions == pytest.approx([1 / 3, 2 / 3, 1.0])


@pytest.mark.parametrize("pipeline", ["z-image", "flux2-klein", "qwen-image-edit-plus"])
async def test_cancel_stops_at_the_next_step(weights: dict[str, Path], pipeline: str) -> None:
    backend, control = tiny(weights, pipeline, steps=4), Control(cancel_after=1)
    with pytest.raises(JobCancelled):
        await backend.generate(job(picture(SIZE, SIZE)), control)
    assert control.fractions == [0.25]  # steps 2-4 never ran


async def test_the_seed_comes_from_the_task_id(weights: dict[str, Path]) -> None:
    backend = tiny(weights, "z-image")
    first, again = [(await backend.generate(job(task_id="t-1"), Control())).data for _ in "ab"]
    other = await backend.generate(job(task_id="t-2"), Control())
    assert first == again
    assert other.data != first


async def test_z_image_heeds_a_negative_prompt_only_under_guidance(
    weights: dict[str, Path],
) -> None:
    """Turbo runs at guidance 0, where the pipeline has no negative branch; a configured
    guidance above 1 turns it on."""
    turbo = tiny(weights, "z-image")
    plain = await turbo.generate(job(task_id="t"), Control())
    assert (await turbo.generate(job(task_id="t", negative="blurry"), Control())).data == plain.data
    guided = tiny(weights, "z-image", guidance=3.0)
    without = await guided.generate(job(task_id="t"), Control())
    assert (
        await guided.generate(job(task_id="t", negative="blurry"), Control())
    ).data != without.data


async def test_klein_edits_with_a_list_of_references(weights: dict[str, Path]) -> None:
    """References of any size (a small one is scaled up to klein's 64-pixel minimum) reach
    the pipeline and change the image of the same task."""
    backend, control = tiny(weights, "flux2-klein"), Control()
    plain = await backend.generate(job(task_id="t"), Control())
    references = (picture(40, 40), picture(300, 200, (0, 0, 255)), picture(64, 96, (0, 255, 0)))
    edited = await backend.generate(job(*references, task_id="t"), control)
    assert png_size(edited.data) == (SIZE, SIZE)
    assert edited.data != plain.data
    assert control.fractions[-1] == 1.0


async def test_more_references_than_a_family_takes_are_passed_on(
    weights: dict[str, Path],
) -> None:
    """Retryable: the model's next backend (a hosted one, say) may take five."""
    backend = tiny(weights, "flux2-klein")
    with pytest.raises(BackendUnavailable, match="at most 4 reference images; this task has 5"):
        await backend.generate(job(*[picture(64, 64)] * 5), Control())


async def test_qwen_edits_one_to_three_references(weights: dict[str, Path]) -> None:
    backend = tiny(weights, "qwen-image-edit-plus")
    for count in (1, 2):
        control = Control()
        image = await backend.generate(job(*[picture(48, 64)] * count), control)
        assert png_size(image.data) == (SIZE, SIZE)
        assert control.fractions == [0.5, 1.0]
    with pytest.raises(BackendUnavailable, match="at most 3 reference images"):
        await backend.generate(job(*[picture(64, 64)] * 4), Control())


async def test_qwen_runs_true_cfg_with_the_negative_prompt(weights: dict[str, Path]) -> None:
    backend = tiny(weights, "qwen-image-edit-plus")
    plain = await backend.generate(job(picture(64, 64), task_id="t"), Control())
    negative = await backend.generate(job(picture(64, 64), task_id="t", negative="text"), Control())
    assert negative.data != plain.data


@pytest.mark.parametrize(
    ("pipeline", "references", "refusal"),
    [
        ("qwen-image-edit-plus", 0, "needs at least one reference image"),
        ("qwen-image-edit-plus", 4, "at most 3 reference images; this task has 4"),
        ("flux2-klein", 5, "at most 4 reference images; this task has 5"),
    ],
)
async def test_a_task_the_family_cannot_paint_is_passed_on_before_loading(
    tmp_path: Path, pipeline: str, references: int, refusal: str
) -> None:
    """Retryable, and before the pipeline is loaded or swapped into GPU memory (its weights
    here are an empty directory, which a load would fail on): a text task on an editing
    model's first backend costs nothing."""
    backend = DiffusersBackend("edit", Options(pipeline=pipeline, weights=str(tmp_path)))
    with pytest.raises(BackendUnavailable, match=refusal):
        await backend.generate(job(*[picture(64, 64)] * references), Control())
    assert backend.load_state is LoadState.NOT_LOADED


def test_a_missing_package_of_the_family_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without(name: str, *args: Any) -> Any:
        return None if name in ("torchvision", "peft") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without)
    qwen = DiffusersBackend("q", Options(pipeline="qwen-image-edit-plus", device="cpu"))
    assert qwen.unavailable_reason() is None  # torchvision is not needed
    lora = DiffusersBackend("z", Options(pipeline="z-image", device="cpu", lora="a/b"))
    assert "needs peft" in (lora.unavailable_reason() or "")
    assert (
        DiffusersBackend("z", Options(pipeline="z-image", device="cpu")).unavailable_reason()
        is None
    )


@pytest.mark.parametrize("pipeline", ["z-image", "flux2-klein", "qwen-image-edit-plus"])
def test_a_missing_weights_directory_is_named_before_loading(pipeline: str, tmp_path: Path) -> None:
    options = Options(pipeline=pipeline, weights=str(tmp_path / "nowhere"), device="cpu")
    reason = DiffusersBackend("local", options).unavailable_reason()
    assert reason is not None
    assert "no such directory" in reason
    assert "Traceback" not in reason


@pytest.mark.parametrize("pipeline", ["z-image", "flux2-klein"])
async def test_corrupt_weights_fail_at_load_with_a_short_reason(
    weights: dict[str, Path], pipeline: str, tmp_path: Path
) -> None:
    backend = tiny({pipeline: corrupt_copy(weights[pipeline], tmp_path / "w")}, pipeline)
    with pytest.raises(BackendUnavailable, match=f"could not load the {pipeline} pipeline"):
        await backend.load()
    reason = backend.unavailable_reason()
    assert reason is not None
    assert backend.load_state is LoadState.FAILED
    assert len(reason) < 400
    assert "Traceback" not in reason


def test_served_by_names_a_local_directory_by_its_last_part_and_the_lora() -> None:
    options = Options(
        pipeline="qwen-image-edit-plus",
        weights="/srv/models/Qwen-Image-Edit-2511",
        lora="lightx2v/Qwen-Image-Edit-2511-Lightning",
        lora_weight_name="lightning-8steps.safetensors",
    )
    assert options.served_by() == (
        "diffusers QwenImageEditPlusPipeline, weights Qwen-Image-Edit-2511, "
        "LoRA lightning-8steps.safetensors"
    )


def test_the_loader_shares_one_pipeline_between_its_users(weights: dict[str, Path]) -> None:
    loader, built = PipelineLoader(), []
    options = tiny(weights, "z-image").options

    def read() -> Any:
        built.append(read_pipeline(options))
        return built[-1]

    first, second = (loader.acquire("key", "z", "cpu", read, lambda p: p) for _ in range(2))
    assert first is second
    assert len(built) == 1
    assert loader.release("key") is None  # still used
    assert loader.release("key") is built[0]  # the last user: the caller frees it
    assert loader.acquire("key", "z", "cpu", read, lambda p: p).pipe is built[1]  # read again


async def test_a_configured_lora_is_fused_and_named(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("peft")  # diffusers loads LoRAs through peft (in the local extra)
    lora = write_lora(weights["z-image"], tmp_path / "lora")
    plain = await tiny(weights, "z-image").generate(job(task_id="t"), Control())
    backend = tiny(weights, "z-image", lora=str(lora), lora_weight_name="tiny-lora.safetensors")
    with_lora = await backend.generate(job(task_id="t"), Control())
    assert png_size(with_lora.data) == (SIZE, SIZE)
    assert with_lora.data != plain.data
    assert backend.served_by(None).endswith(", LoRA tiny-lora.safetensors")


async def test_a_missing_lora_fails_the_load_with_its_name(weights: dict[str, Path]) -> None:
    pytest.importorskip("peft")
    backend = tiny(weights, "z-image", lora="./no-such-lora")
    with pytest.raises(BackendUnavailable, match="no-such-lora"):
        await backend.load()


@pytest.mark.parametrize(
    ("pipeline", "applied"),
    [
        ("z-image", ["channels-last-vae"]),
        ("flux2-klein", ["fused-qkv", "channels-last-vae"]),
        ("qwen-image-edit-plus", ["fused-qkv"]),
    ],
)
def test_the_gpu_path_without_compile_fits_each_family(
    weights: dict[str, Path], pipeline: str, applied: list[str]
) -> None:
    """Z-Image has no fused QKV projections and Qwen-Image a 3-D VAE (not channels-last);
    each family still paints after the rewrites (compile and fp8 need CUDA)."""
    pipe = load_pipeline(tiny(weights, pipeline).options)
    assert optimize_pipeline(pipe, compile_mode=None, fp8=False) == applied
    edit = {"image": [Image.new("RGB", (48, 64))]} if pipeline == "qwen-image-edit-plus" else {}
    image = pipe(prompt="a cat", width=SIZE, height=SIZE, num_inference_steps=2, **edit).images[0]
    assert image.size == (SIZE, SIZE)


def test_qwens_folder_is_a_published_one_and_loads_without_torchvision(
    weights: dict[str, Path],
) -> None:
    """The saved folder names transformers' processor and its video processor, as published;
    where torchvision is missing, Easel's loader reads it with the PIL image processor and no
    video processor (transformers cannot build one there)."""
    folder = weights["qwen-image-edit-plus"]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    saved = json.loads((folder / "processor" / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2VLProcessor"
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    processor = load_pipeline(tiny(weights, "qwen-image-edit-plus").options).processor
    assert type(processor).__name__ == "Qwen2VLProcessor"
    if importlib.util.find_spec("torchvision") is None:
        assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
        assert not hasattr(processor, "video_processor")


def test_a_local_gpu_serves_z_image_on_its_own_pipeline() -> None:
    """With no [backends] and an NVIDIA GPU, the catalog's ``z_image`` runs on Z-Image-Turbo."""
    tables = auto_tables({}, local_gpu=True)
    assert tables["models"]["z_image"] == {"backends": ["local-z-image"]}
    backend = create_backend(
        "local-z-image", BackendTable.model_validate(tables["backends"]["local-z-image"])
    )
    assert (
        backend.served_by("z-image") == "diffusers ZImagePipeline, weights Tongyi-MAI/Z-Image-Turbo"
    )
