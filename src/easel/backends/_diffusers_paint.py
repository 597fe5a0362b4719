"""One ``diffusers`` pipeline call: its arguments, its progress and cancel hooks, its pace.

``flux`` is text to image: reference images are ignored (the catalog sends editing models
elsewhere). ``flux-kontext`` edits: Kontext-dev takes ONE conditioning image, so several
references are scaled to a common height and concatenated left to right in ``image[N]`` order
(:func:`reference_canvas`). The job's options set the size (:func:`diffusers_size`, for every
pipeline family) and the steps (:func:`diffusers_steps`). The seed derives from the task id
(:func:`easel.domain.tasks.task_seed`) unless the job carries one (a multiview task's views
share theirs), so a re-run of an attempt paints the same image. torch is imported only inside
functions.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from PIL import Image

from easel.backends.base import InputImage, Job, JobCancelled, JobControl, record_mapping
from easel.domain.options import ImageOptions, pixel_size
from easel.domain.tasks import task_seed

if TYPE_CHECKING:
    from easel.backends.diffusers import Options

# The true-CFG scale a negative prompt runs with (diffusers' FLUX example value).
TRUE_CFG_SCALE = 4.0
# What a FLUX pipeline paints: sides in multiples of 16 (VAE scale × 2), from 32 (two latent
# patches; the catalog keeps requests for FLUX models at 256 and up) to 2048, at most four
# megapixels (FLUX is trained to about two; larger costs time and coherence).
MAX_SIDE, MAX_PIXELS, MIN_SIDE = 2048, 2048 * 2048, 32
# quality → the configured steps times this (Tripo's quality, for a local stand-in).
STEP_FACTORS = {"low": 0.5, "medium": 1.0, "high": 1.5, "xhigh": 2.0, "max": 2.0}
MAX_STEPS = 200


def diffusers_size(
    options: ImageOptions,
    default: tuple[int, int],
    *,
    multiple: int = 16,
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """The ``(width, height)`` a pipeline paints for a job's options: the ``WxH`` size, the
    tier, or the aspect ratio over ``default``'s area (the backend's configured size), in
    multiples of ``multiple`` within the pipeline's limits; ``default`` without options.
    Pipeline families with other limits pass their own."""
    if options.size is None and options.ratio is None:
        return default
    return pixel_size(
        options,
        default,
        multiple=multiple,
        min_side=min_side,
        max_side=max_side,
        max_pixels=max_pixels,
    )


def diffusers_steps(quality: str | None, steps: int) -> int:
    """The steps for ``quality`` (``STEP_FACTORS`` times the configured ``steps``, at least
    one, at most 200); the configured steps without one."""
    if quality is None:
        return steps
    return max(1, min(MAX_STEPS, round(steps * STEP_FACTORS.get(quality, 1.0))))


def paint(
    pipe: Any, options: Options, job: Job, control: JobControl | None
) -> tuple[Image.Image, float | None]:
    """One pipeline call with progress, cancel and pacing hooks: the image and the seconds
    per step it took (None when too few steps ran to tell). ``control`` None: a warm-up."""
    import torch

    steps = diffusers_steps(job.options.quality, options.steps)
    width, height = diffusers_size(job.options, (options.width, options.height))
    stamps = [time.perf_counter()]

    def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        stamps.append(time.perf_counter())
        if control is not None:
            control.progress((step + 1) / steps)
            if control.cancelled:
                pipeline._interrupt = True
        return tensors

    arguments: dict[str, Any] = {
        "prompt": job.prompt,
        "width": width,
        "height": height,
        "num_inference_steps": steps,
        "guidance_scale": options.guidance_scale,
        "generator": torch.Generator("cpu").manual_seed(
            task_seed(job.task_id) if job.seed is None else job.seed
        ),
        "callback_on_step_end": on_step,
    }
    if options.pipeline == "flux-kontext":
        arguments |= _kontext_arguments(pipe, width * height, job)
    if job.negative_prompt:
        arguments |= negative_arguments(job)
    if control is not None:
        shape = {"width": width, "height": height, "steps": steps}
        record_mapping(f"diffusers {options.pipeline}", job, shape)
    image = pipe(**arguments).images[0]
    if getattr(pipe, "_interrupt", False):
        raise JobCancelled(job.task_id)
    pace = None
    if len(stamps) > 2:  # step 1 also pays for the text encoders; pace from step 2 on
        pace = (stamps[-1] - stamps[1]) / (len(stamps) - 2)
    return image, pace


def negative_arguments(job: Job) -> dict[str, Any]:
    """A text_to_image's negative prompt: FLUX heeds it only under true classifier-free
    guidance (``true_cfg_scale`` > 1), which runs the transformer twice per step."""
    return {"negative_prompt": job.negative_prompt, "true_cfg_scale": TRUE_CFG_SCALE}


def _kontext_arguments(pipe: Any, area: int, job: Job) -> dict[str, Any]:
    """The reference (or strip) resized, aspect kept, to the output's pixel ``area`` and passed
    with ``max_area=area`` and ``_auto_resize=False``: the size asked for is honoured and a
    small configuration never pays for a one-megapixel reference."""
    arguments: dict[str, Any] = {"max_area": area, "_auto_resize": False}
    if job.images:
        multiple = pipe.vae_scale_factor * 2
        arguments["image"] = reference_canvas(job.images, area, multiple)
    return arguments


def warm_up_job(options: Options) -> Job:
    """A gray square (and, for Kontext, a gray reference) at the configured size: painting it
    at load time makes ``torch.compile`` pay its cost then, not on the first task."""
    png = io.BytesIO()
    Image.new("RGB", (options.width, options.height), "gray").save(png, "PNG")
    reference = InputImage(png.getvalue(), "png", options.width, options.height)
    images = (reference,) if options.pipeline == "flux-kontext" else ()
    return Job("warm-up", "warm-up", "a gray square", images)


def reference_canvas(images: tuple[InputImage, ...], area: int, multiple: int) -> Image.Image:
    """One Kontext reference: the images side by side, scaled to ``area`` pixels, aspect kept.

    Sides are multiples of ``multiple`` (VAE scale × 2: 16 for FLUX), at least one each.
    """
    decoded = [Image.open(io.BytesIO(image.data)).convert("RGB") for image in images]
    tall = max(image.height for image in decoded)
    scaled = [
        image.resize((max(1, round(image.width * tall / image.height)), tall)) for image in decoded
    ]
    strip = Image.new("RGB", (sum(image.width for image in scaled), tall))
    left = 0
    for image in scaled:
        strip.paste(image, (left, 0))
        left += image.width
    return strip.resize(_fit(strip.width / strip.height, area, multiple), Image.Resampling.LANCZOS)


def _fit(ratio: float, area: int, multiple: int) -> tuple[int, int]:
    """The ``(width, height)`` nearest ``ratio``: multiples of ``multiple``, at most ``area``."""
    if ratio < 1:
        height, width = _fit(1 / ratio, area, multiple)
        return width, height
    height = max(multiple, round((area / ratio) ** 0.5 / multiple) * multiple)
    width = min(round(height * ratio / multiple), area // height // multiple) * multiple
    return max(multiple, width), height
