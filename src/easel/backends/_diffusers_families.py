"""The pipeline families the ``diffusers`` backend runs, as data: one row per family.

A backend's ``pipeline`` option names a family. Its row says which diffusers class loads the
weights, the recommended weights when none are configured, the published step count and
guidance, how the pipeline takes reference images and a negative prompt, the sizes Easel lets
it paint, the licence of the default weights, the packages it needs beyond the local extra and
whether its processor is a Qwen2-VL one.
Nothing else in the backend branches on a family's name: a new family is one row here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class References(enum.Enum):
    """How a family takes the task's reference images."""

    NONE = "none"  # text to image: references are ignored
    CANVAS = "canvas"  # one conditioning image: the references side by side (Kontext-dev)
    LIST = "list"  # a list of images, one per reference (FLUX.2 klein, Qwen-Image-Edit-Plus)


class Negative(enum.Enum):
    """How a family takes a negative prompt."""

    IGNORED = "ignored"  # the pipeline has no negative prompt (FLUX.2 klein)
    GUIDANCE = "guidance"  # passed; heeded when guidance > 1 (Z-Image; Turbo runs at 0)
    TRUE_CFG = "true-cfg"  # true CFG at ``true_cfg`` when a negative prompt is given (FLUX.1)
    ALWAYS_CFG = "always-cfg"  # true CFG on every run, " " when none is given (Qwen-Image-Edit)


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # the ``pipeline`` option
    pipeline_class: str  # in ``diffusers``
    weights: str  # the recommended weights (a hub id) when none are configured
    licence: str  # of those default weights
    steps: int  # published step count of the default weights
    guidance: float  # ``guidance_scale`` of the default weights
    references: References = References.NONE
    max_references: int = 0  # more than this: the backend passes the task on (retryable)
    needs_references: bool = False  # cannot paint from text alone
    min_reference_side: int = 0  # smaller references are scaled up to this (shorter side)
    negative: Negative = Negative.IGNORED
    true_cfg: float = 1.0  # default ``true_cfg_scale`` (TRUE_CFG, ALWAYS_CFG)
    # Output sizes, configured or asked for by a task (v3 size, aspect_ratio): sides within
    # [min_side, max_side] in multiples of ``multiple`` (VAE scale × patch), at most max_pixels.
    min_side: int = 64
    max_side: int = 2048
    max_pixels: int = 2048 * 2048
    multiple: int = 16
    packages: tuple[str, ...] = ()  # needed beyond torch, diffusers and transformers
    # Its processor is transformers' Qwen2-VL one, loaded without its video half (which needs
    # torchvision) where torchvision is missing: see ``_vl_processor``.
    vl_processor: bool = False

    def size_problem(self, width: int, height: int) -> str | None:
        """Why a configured output size is outside this family's limits; None if it fits."""
        sides_fit = all(
            self.min_side <= side <= self.max_side and side % self.multiple == 0
            for side in (width, height)
        )
        if sides_fit and width * height <= self.max_pixels:
            return None
        return (
            f"the {self.name} pipeline paints sides of {self.min_side} to {self.max_side} "
            f"pixels in multiples of {self.multiple}, at most {self.max_pixels:,} pixels; "
            f"{width}x{height} is not one of them"
        )


_FLUX_NC = "FLUX.1 [dev] Non-Commercial"
APACHE = "Apache-2.0"

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "flux", "FluxPipeline", "black-forest-labs/FLUX.1-dev", _FLUX_NC, 28, 3.5,
            negative=Negative.TRUE_CFG, true_cfg=4.0, min_side=32,
        ),
        Family(
            "flux-kontext", "FluxKontextPipeline", "black-forest-labs/FLUX.1-Kontext-dev",
            _FLUX_NC, 28, 2.5, References.CANVAS, max_references=10,
            negative=Negative.TRUE_CFG, true_cfg=4.0, min_side=32,
        ),
        Family(
            "z-image", "ZImagePipeline", "Tongyi-MAI/Z-Image-Turbo", APACHE, 9, 0.0,
            negative=Negative.GUIDANCE,
        ),
        Family(
            "flux2-klein", "Flux2KleinPipeline", "black-forest-labs/FLUX.2-klein-4B", APACHE,
            4, 1.0, References.LIST, max_references=4, min_reference_side=64,
        ),
        Family(
            "qwen-image-edit-plus", "QwenImageEditPlusPipeline", "Qwen/Qwen-Image-Edit-2511",
            APACHE, 40, 1.0, References.LIST, max_references=3, needs_references=True,
            negative=Negative.ALWAYS_CFG, true_cfg=4.0, vl_processor=True,
        ),
    )
}  # fmt: skip
