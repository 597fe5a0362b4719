"""Backend kind ``placeholder``: test your Tripo client end to end without model costs.

It is not a model. It draws a deterministic PNG from the prompt and the input images (the
same inputs give the same bytes): a colour field seeded by their hash, the word
"PLACEHOLDER", the model_version, the prompt and thumbnails of the references. ``delay_s``
makes it take that long (reporting progress, honouring cancel) and ``fail_rate`` makes that
share of runs fail as a retryable outage, to exercise retries and refunds; ``timeout_s``
shorter than ``delay_s`` makes it a backend that hangs, to exercise fallback.

It stands in for any model, so it maps the job's options as a local model would: ``size`` and
``aspect_ratio`` give the picture's shape (:func:`picture_size`, around the configured
``width``×``height``); the rest it cannot draw (the log records what it made of them), and
the worker encodes the PNG as the ``output_format`` asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import textwrap

from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field

from easel.backends.base import (
    BackendUnavailable,
    GeneratedImage,
    ImageBackend,
    Job,
    JobCancelled,
    JobControl,
    record_mapping,
)
from easel.domain.options import pixel_size
from easel.outbound import OutboundPolicy

_STEP_S = 0.05


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    delay_s: float = Field(default=0.0, ge=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_s: float | None = Field(default=None, gt=0)  # the worker's limit per attempt
    width: int = Field(default=512, ge=64, le=2048)
    height: int = Field(default=512, ge=64, le=2048)


def _seed(job: Job) -> bytes:
    digest = hashlib.sha256(job.model_version.encode() + b"\0" + job.prompt.encode())
    for image in job.images:
        digest.update(hashlib.sha256(image.data).digest())
    return digest.digest()


def draw(job: Job, width: int, height: int) -> bytes:
    """The placeholder PNG for ``job`` (deterministic)."""
    seed = _seed(job)
    top, bottom = tuple(seed[0:3]), tuple(seed[3:6])
    image = Image.new("RGB", (width, height))
    pixels = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(height - 1, 1)
        pixels.line(
            [(0, y), (width, y)],
            fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )
    size, big_size = max(12, width // 24), max(18, width // 10)
    font = ImageFont.load_default(size=size)
    big = ImageFont.load_default(size=big_size)
    ink, shade = (255, 255, 255), (0, 0, 0)
    pixels.text(
        (width // 20, height // 20),
        "PLACEHOLDER",
        font=big,
        fill=ink,
        stroke_width=2,
        stroke_fill=shade,
    )
    lines = [job.model_version, *textwrap.wrap(job.prompt, width=max(20, width // 14))[:8]]
    y = height // 20 + big_size + 10
    for line in lines:
        pixels.text((width // 20, y), line, font=font, fill=ink, stroke_width=1, stroke_fill=shade)
        y += size + 4
    thumb = max(32, width // 6)
    for index, ref in enumerate(job.images[:5]):
        with Image.open(io.BytesIO(ref.data)) as source:
            preview = source.convert("RGB")
            preview.thumbnail((thumb, thumb))
        image.paste(preview, (width // 20 + index * (thumb + 8), height - thumb - height // 20))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def picture_size(job: Job, width: int, height: int) -> tuple[int, int]:
    """The picture's ``(width, height)``: the configured size unless the job asks for a size
    or a shape (then that, in multiples of 8 within 64–2048)."""
    if job.options.size is None and job.options.ratio is None:
        return width, height
    return pixel_size(job.options, (width, height), multiple=8, min_side=64, max_side=2048)


class PlaceholderBackend(ImageBackend):
    kind = "placeholder"

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self.timeout_s = options.timeout_s

    def served_by(self, provider_model: str | None) -> str:
        del provider_model
        return "placeholder: a generated test card, no model"

    async def generate(self, job: Job, control: JobControl) -> GeneratedImage:
        steps = int(self.options.delay_s / _STEP_S)
        for step in range(steps):
            if control.cancelled:
                raise JobCancelled(job.task_id)
            await asyncio.sleep(_STEP_S)
            control.progress((step + 1) / (steps + 1))
        if control.cancelled:
            raise JobCancelled(job.task_id)
        if self.options.fail_rate and random.random() < self.options.fail_rate:
            raise BackendUnavailable(
                f"placeholder backend {self.name!r} failed on purpose (fail_rate "
                f"{self.options.fail_rate})"
            )
        width, height = picture_size(job, self.options.width, self.options.height)
        record_mapping(self.name, job, {"width": width, "height": height})
        data = await asyncio.to_thread(draw, job, width, height)
        control.progress(1.0)
        return GeneratedImage(data=data, format="png")


def create(name: str, options: Options, outbound: OutboundPolicy) -> PlaceholderBackend:
    del outbound  # draws locally: opens no connection
    return PlaceholderBackend(name, options)
