"""Resolve a task's references (uploads, object keys, URLs, template images) to bytes."""

from __future__ import annotations

from easel.backends.base import InputImage
from easel.domain import templates
from easel.domain.catalog import ModelSpec
from easel.domain.errors import FileNotFound, ImageTypeNotSupported
from easel.domain.images import check_image
from easel.domain.tasks import Reference
from easel.outbound import OutboundPolicy
from easel.outbound.fetch import fetch_image
from easel.storage.objects import ObjectNotFound, ObjectStore


async def _bytes_of(
    ref: Reference, objects: ObjectStore, policy: OutboundPolicy, timeout_s: float
) -> bytes:
    if ref.source == "object":
        try:
            return await objects.get(ref.value)
        except ObjectNotFound:
            raise FileNotFound(f"the uploaded file {ref.value!r} is gone from storage.") from None
    if ref.source == "url":
        return await fetch_image(ref.value, policy, timeout_s=timeout_s)
    slug, _, index = ref.value.partition("/")
    return templates.lookup(slug).image_bytes()[int(index)]


async def resolve(
    refs: tuple[Reference, ...],
    model: ModelSpec,
    objects: ObjectStore,
    policy: OutboundPolicy,
    timeout_s: float,
) -> tuple[InputImage, ...]:
    """The task's images in ``image[N]`` order; raise the protocol error of a bad one."""
    images = []
    for number, ref in enumerate(refs, start=1):
        data = await _bytes_of(ref, objects, policy, timeout_s)
        info = await check_image(data, what=f"image[{number}]")
        if ref.source == "url" and info.format not in ("png", "jpeg"):
            raise ImageTypeNotSupported(
                f"image[{number}] ({ref.value}) is {info.format}; url inputs must be JPEG or PNG."
            )
        if info.format == "webp" and not model.accepts_webp:
            raise ImageTypeNotSupported(
                f"image[{number}] is WebP, which {model.version} does not accept.",
                "Convert the image to PNG or JPEG.",
            )
        images.append(InputImage(data, info.format, info.width, info.height))
    return tuple(images)
