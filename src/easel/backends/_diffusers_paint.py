"""One ``diffusers`` pipeline call: its arguments, its progress and cancel hooks, its pace.

``flux`` is text to image: reference images are ignored (the catalog sends editing models
elsewhere). ``flux-kontext`` edits: Kontext-dev takes ONE conditioning image, so several
references are scaled to a common height and concatenated left to right in ``image[N]`` order
(:func:`reference_canvas`). The seed derives from the task id (:func:`easel.domain.tasks.task_seed`)
unless the job carries one (a multiview task's views share theirs), so a re-run of an attempt
paints the same image. torch is imported only inside functions.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from PIL import Image

from easel.backends.base import InputImage, Job, JobCancelled, JobControl
from easel.domain.tasks import task_seed

if TYPE_CHECKING:
    from easel.backends.diffusers import Options

# The true-CFG scale a negative prompt runs with (diffusers' FLUX example value).
TRUE_CFG_SCALE = 4.0


def paint(
    pipe: Any, options: Options, job: Job, control: JobControl | None
) -> tuple[Image.Image, float | None]:
    """One pipeline call with progress, cancel and pacing hooks: the image and the seconds
    per step it took (None when too few steps ran to tell). ``control`` None: a warm-up."""
    import torch

    steps = options.steps
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
        "width": options.width,
        "height": options.height,
        "num_inference_steps": steps,
        "guidance_scale": options.guidance_scale,
        "generator": torch.Generator("cpu").manual_seed(
            task_seed(job.task_id) if job.seed is None else job.seed
        ),
        "callback_on_step_end": on_step,
    }
    if options.pipeline == "flux-kontext":
        arguments |= _kontext_arguments(pipe, options, job)
    if job.negative_prompt:
        arguments |= negative_arguments(job)
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


def _kontext_arguments(pipe: Any, options: Options, job: Job) -> dict[str, Any]:
    """The reference (or strip) resized, aspect kept, to the output's pixel area and passed
    with ``max_area=width*height`` and ``_auto_resize=False``: the configured size is honoured
    and a small configuration never pays for a one-megapixel reference."""
    area = options.width * options.height
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
