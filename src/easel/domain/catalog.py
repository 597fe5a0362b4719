"""The model catalog: what each ``model_version`` costs and which images it takes.

Pure data and rules, from the seed page (``flux.1_dev`` is upgraded when images are
sent; ``midjourney`` refuses images; ``flux.1_kontext_pro`` refuses WebP).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from easel.domain.errors import ModelVersionInvalid


class ImageRule(Enum):
    """What a model does with reference images."""

    ACCEPTS = "accepts"
    UPGRADE = "upgrade"  # no images: a request with images runs on the default model
    REFUSES = "refuses"  # no images: a request with images is refused (1004)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    version: str
    credits: int
    images: ImageRule
    max_files: int
    accepts_webp: bool
    description: str


DEFAULT_MODEL = "flux.1_kontext_pro"

CATALOG: dict[str, ModelSpec] = {
    spec.version: spec
    for spec in (
        ModelSpec("flux.1_kontext_pro", 5, ImageRule.ACCEPTS, 4, False, "FLUX.1 Kontext [pro]"),
        ModelSpec("flux.1_dev", 5, ImageRule.UPGRADE, 0, True, "FLUX.1 [dev], text only"),
        ModelSpec("gpt_4o", 5, ImageRule.ACCEPTS, 10, True, "OpenAI gpt-image-1"),
        ModelSpec("gpt_image_1.5", 10, ImageRule.ACCEPTS, 10, True, "OpenAI gpt-image-1.5"),
        ModelSpec("gpt_image_2", 10, ImageRule.ACCEPTS, 10, True, "OpenAI gpt-image-2"),
        ModelSpec("midjourney", 10, ImageRule.REFUSES, 0, True, "Midjourney, text only"),
        ModelSpec("gemini_2.5_flash_image_preview", 5, ImageRule.ACCEPTS, 10, True, "Nano Banana"),
        ModelSpec("gemini_3_pro_image_preview", 10, ImageRule.ACCEPTS, 10, True, "Nano Banana Pro"),
        ModelSpec(
            "gemini_3.1_flash_image_preview", 10, ImageRule.ACCEPTS, 10, True, "Nano Banana 2"
        ),
    )
}


def lookup(version: str) -> ModelSpec:
    """The spec of ``version``, or 2017 naming the valid versions."""
    try:
        return CATALOG[version]
    except KeyError:
        raise ModelVersionInvalid(
            f"model_version {version!r} is not a valid version.",
            f"Use one of: {', '.join(CATALOG)}.",
        ) from None
