"""The v3 image options, one request per case, and what ``easel serve`` must make of each on
the placeholder backend: shared by the end-to-end tests of every official v3 client (the
``tripo3d`` 1.x scenario and the Go and JS SDK wire tests), so they all check the same table.

A honoured case names the image it must produce (the placeholder paints ``size`` and
``aspect_ratio`` as their shape around its 512×512 default, and the worker encodes the
``output_format``); options the placeholder cannot draw (``quality``, ``background``,
``watermark``, ``negative_prompt``) must still be taken, run and charged. A refused case is a
1004 whose message names the option, before any cost (docs/protocol.md, "v3 image options per
model").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# What the tests' `easel serve` must serve: every model a case names, by its v2 name.
MODELS = (
    "flux.1_kontext_pro",
    "flux.1_dev",
    "gemini_2.5_flash_image_preview",
    "gpt_image_2",
    "chat_image_2.5_flare",
    "seedream_v4",
    "seedream_v5",
    "midjourney",
)


@dataclass(frozen=True)
class Case:
    option: str
    route: Literal["text-to-image", "image-to-image"]
    body: dict[str, Any]  # the model and the options, as the client sends them
    size: tuple[int, int] = (512, 512)  # honoured: the image's pixels
    format: str = "PNG"  # honoured: Pillow's name of the image's format
    refused: str = ""  # refused: what the 1004 message says

    @property
    def model(self) -> str:
        return str(self.body["model"])

    @property
    def options(self) -> dict[str, Any]:
        return {name: value for name, value in self.body.items() if name != "model"}


HONOURED = (
    Case("size", "image-to-image", {"model": "seedream_v5", "size": "512x256"}, size=(512, 256)),
    Case("aspect_ratio", "image-to-image", {"model": "banana", "aspect_ratio": "16:9"}, (680, 384)),
    Case("quality", "image-to-image", {"model": "chat_image_2", "quality": "high"}),
    Case(
        "background",
        "image-to-image",
        {"model": "chat_image_2.5_flare", "background": "transparent", "output_format": "png"},
    ),
    Case(
        "output_format",
        "image-to-image",
        {"model": "flux.1_kontext_pro", "output_format": "jpeg"},
        format="JPEG",
    ),
    Case("watermark", "text-to-image", {"model": "seedream_v4", "watermark": True}),
    Case("negative_prompt", "text-to-image", {"model": "midjourney", "negative_prompt": "fog"}),
)

REFUSED = (
    Case("size", "image-to-image", {"model": "banana", "size": "4K"}, refused="size '4K'"),
    Case(
        "aspect_ratio",
        "image-to-image",
        {"model": "chat_image_2", "aspect_ratio": "16:9"},
        refused="does not take aspect_ratio",
    ),
    Case(
        "quality",
        "text-to-image",
        {"model": "banana", "quality": "high"},
        refused="does not take quality",
    ),
    Case(
        "background",
        "image-to-image",
        {"model": "banana", "background": "transparent"},
        refused="background 'transparent'",
    ),
    Case(
        "output_format",
        "text-to-image",
        {"model": "seedream_v4", "output_format": "webp"},
        refused="output_format 'webp'",
    ),
    Case(
        "watermark",
        "image-to-image",
        {"model": "banana", "watermark": True},
        refused="watermark true",
    ),
    Case(
        "negative_prompt",
        "image-to-image",
        {"model": "chat_image_2", "negative_prompt": "fog"},
        refused="does not take negative_prompt",
    ),
)
