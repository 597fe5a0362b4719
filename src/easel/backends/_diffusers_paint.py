"""One ``diffusers`` pipeline call: its arguments, its progress and cancel hooks, its pace.

What a family does with references and a negative prompt is data (:mod:`._diffusers_families`):
a text-to-image family ignores references; ``CANVAS`` (Kontext-dev, ONE conditioning image)
gets the references scaled to a common height and concatenated left to right in ``image[N]``
order (:func:`reference_canvas`); ``LIST`` (FLUX.2 klein, Qwen-Image-Edit-Plus) gets them as a
list, in order. A task with more references than its family takes, or none for a family that
needs one, is passed on (:class:`BackendUnavailable`: the model's next backend may take it),
before the backend brings its pipeline into memory (:func:`references_refusal`).
The job's options set the size (:func:`diffusers_size`, within the family's limits) and the
steps (:func:`diffusers_steps`). The seed derives from the task id
(:func:`easel.domain.tasks.task_seed`) unless the job carries one (a multiview task's views
share theirs), so a re-run of an attempt paints the same image. torch is imported only inside
functions.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from PIL import Image

from easel.backends._diffusers_families import Family, Negative, References
from easel.backends.base import (
    BackendUnavailable,
    InputImage,
    Job,
    JobCancelled,
    JobControl,
    record_mapping,
)
from easel.domain.options import ImageOptions, pixel_size
from easel.domain.tasks import task_seed

if TYPE_CHECKING:
    from easel.backends.diffusers import Options

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

    family = options.family
    steps = diffusers_steps(job.options.quality, options.num_steps)
    width, height = diffusers_size(
        job.options,
        (options.width, options.height),
        multiple=family.multiple,
        min_side=family.min_side,
        max_side=family.max_side,
        max_pixels=family.max_pixels,
    )
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
    arguments |= reference_arguments(pipe, family, job, width * height)
    arguments |= negative_arguments(family, options.true_cfg_scale, job.negative_prompt)
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


def negative_arguments(family: Family, true_cfg: float, negative: str) -> dict[str, Any]:
    """A text_to_image's negative prompt as the family takes it. Under true classifier-free
    guidance (``true_cfg_scale`` > 1) the transformer runs twice per step."""
    if family.negative is Negative.ALWAYS_CFG:
        return {"negative_prompt": negative or " ", "true_cfg_scale": true_cfg}
    if not negative or family.negative is Negative.IGNORED:
        return {}
    if family.negative is Negative.TRUE_CFG:
        return {"negative_prompt": negative, "true_cfg_scale": true_cfg}
    return {"negative_prompt": negative}


def references_refusal(family: Family, count: int) -> str | None:
    """Why the family cannot paint a task with ``count`` references (none for an editing
    family, more than it takes); None if it can. Known before the pipeline is touched."""
    if family.needs_references and not count:
        return f"the {family.name} pipeline edits: it needs at least one reference image"
    if family.references is not References.NONE and count > family.max_references:
        return (
            f"the {family.name} pipeline takes at most {family.max_references} reference "
            f"images; this task has {count}"
        )
    return None


def reference_arguments(pipe: Any, family: Family, job: Job, area: int) -> dict[str, Any]:
    """The task's references the way the family takes them (see the module's docstring)."""
    count = len(job.images)
    refusal = references_refusal(family, count)
    if refusal:
        raise BackendUnavailable(refusal)
    if family.references is References.NONE:
        return {}
    if family.references is References.CANVAS:
        return _kontext_arguments(pipe, job, area)
    if not count:
        return {}
    return {"image": [_decoded(image, area, family.min_reference_side) for image in job.images]}


def _decoded(image: InputImage, area: int, min_side: int) -> Image.Image:
    """An RGB reference, aspect kept, scaled down to at most ``area`` pixels (the output's:
    a small configuration never pays for a large reference) and up until its shorter side
    is at least ``min_side``."""
    decoded = Image.open(io.BytesIO(image.data)).convert("RGB")
    width, height = decoded.size
    scale = min(1.0, (area / (width * height)) ** 0.5)
    scale = max(scale, min_side / min(width, height))
    if scale == 1.0:
        return decoded
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return decoded.resize(size, Image.Resampling.LANCZOS)


def _kontext_arguments(pipe: Any, job: Job, area: int) -> dict[str, Any]:
    """The reference (or strip) resized, aspect kept, to the output's pixel area and passed
    with ``max_area=width*height`` and ``_auto_resize=False``: the configured size is honoured
    and a small configuration never pays for a one-megapixel reference."""
    arguments: dict[str, Any] = {"max_area": area, "_auto_resize": False}
    if job.images:
        multiple = pipe.vae_scale_factor * 2
        arguments["image"] = reference_canvas(job.images, area, multiple)
    return arguments


def warm_up_job(options: Options) -> Job:
    """A gray square (and, for an editing family, a gray reference) at the configured size:
    painting it at load time makes ``torch.compile`` pay its cost then, not on the first task."""
    png = io.BytesIO()
    Image.new("RGB", (options.width, options.height), "gray").save(png, "PNG")
    reference = InputImage(png.getvalue(), "png", options.width, options.height)
    images = () if options.family.references is References.NONE else (reference,)
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
