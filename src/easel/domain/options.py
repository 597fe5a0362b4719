"""Tripo v3 image options, modelled once: what a request asks for and what a model takes.

:class:`ImageOptions` holds the validated options of one task (``size``, ``aspect_ratio``,
``quality``, ``background``, ``output_format``, ``watermark``); the negative prompt travels
beside them (``Job.negative_prompt``), as it did before v3. :class:`OptionRules` says what
one model takes, with the accepted values: each catalog entry names one of the presets below
(adding a model is one line). Tripo's rules where it documents them: ``aspect_ratio`` only on
the banana (Gemini) models, the extra ratios ``1:8 1:4 4:1 8:1`` only on ``banana2``;
``quality`` only on ``chat_image_2`` and the 2.5 chat models (``xhigh``/``max`` only 2.5);
``background: transparent`` only on the 2.5 models, and only as PNG; ``watermark: true`` only
on Seedream. Elsewhere the provider's real limits (backends research notes).

:meth:`OptionRules.parse` is strict (v3: an option or value a model cannot take is 1004 with
the accepted values); v2 sends none of these and stays lenient. The sizes a backend sends
come from :func:`pixel_size` and :func:`nearest_ratio`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from easel.domain.errors import InvalidParameter
from easel.domain.templates import TEMPLATES

# Long side in pixels of each size tier.
TIERS = {"1K": 1024, "2K": 2048, "4K": 4096}
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
EXTRA_RATIOS = ("1:8", "1:4", "4:1", "8:1")  # banana2 only
QUALITIES = ("low", "medium", "high", "xhigh", "max")
BACKGROUNDS = ("auto", "opaque", "transparent")
OUTPUT_FORMATS = ("png", "jpeg")
# The request fields this module reads (negative_prompt: parsing checks its text).
OPTION_NAMES = ("size", "aspect_ratio", "quality", "background", "output_format", "watermark")
_PIXELS = re.compile(r"^([1-9][0-9]{1,4})[xX×*]([1-9][0-9]{1,4})$")
_RATIO = re.compile(r"^([1-9][0-9]?):([1-9][0-9]?)$")


def ratio_of(text: str) -> float:
    """``"16:9"`` → 1.777…"""
    width, _, height = text.partition(":")
    return int(width) / int(height)


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """The validated options of one task; None (or unset) means the backend's default."""

    size: str | None = None  # a tier "1K" | "2K" | "4K", or "WxH" such as "1536x1024"
    aspect_ratio: str | None = None  # "16:9"
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None  # png | jpeg: the stored image's encoding
    watermark: bool | None = None

    @property
    def tier(self) -> str | None:
        return self.size if self.size in TIERS else None

    @property
    def pixels(self) -> tuple[int, int] | None:
        """``(width, height)`` of a ``WxH`` size."""
        match = _PIXELS.match(self.size or "")
        return (int(match.group(1)), int(match.group(2))) if match else None

    @property
    def ratio(self) -> float | None:
        """Width over height asked for: ``aspect_ratio``, else a ``WxH`` size's; None: any."""
        if self.aspect_ratio:
            return ratio_of(self.aspect_ratio)
        pixels = self.pixels
        return pixels[0] / pixels[1] if pixels else None

    def to_json(self) -> dict[str, Any]:
        """The options set, by their request names (the task's ``input`` keeps them)."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageOptions:
        """The options a stored task ``input`` holds (validated when it was accepted)."""
        return cls(**{name: data[name] for name in OPTION_NAMES if data.get(name) is not None})

    def with_default_ratio(self, aspect_ratio: str | None) -> ImageOptions:
        """These options, with ``aspect_ratio`` when they ask for no shape (a template's)."""
        if aspect_ratio is None or self.ratio is not None:
            return self
        return replace(self, aspect_ratio=aspect_ratio)


@dataclass(frozen=True, slots=True)
class SizeRule:
    """The ``size`` values a model takes: ``tiers``, and ``WxH`` when ``pixels``, either any
    size within the bounds or, with ``exact``, only those."""

    tiers: tuple[str, ...] = ("1K",)
    pixels: bool = False
    exact: tuple[str, ...] = ()
    multiple: int = 1
    min_side: int = 256
    max_side: int = 4096
    max_pixels: int = 4096 * 4096
    max_ratio: float = 4.0

    def accepted(self) -> str:
        listed = [*self.tiers, *self.exact]
        if self.pixels and not self.exact:
            listed.append(
                f"WxH with sides {self.min_side}-{self.max_side}"
                + (f" in multiples of {self.multiple}" if self.multiple > 1 else "")
                + f", at most {self.max_pixels:,} pixels"
                + f", the long side at most {self.max_ratio:.3g} times the short"
            )
        return ", ".join(listed)

    def allows(self, size: ImageOptions) -> bool:
        if size.tier is not None:
            return size.tier in self.tiers
        pixels = size.pixels
        if pixels is None or not self.pixels:
            return False
        if self.exact:
            return f"{pixels[0]}x{pixels[1]}" in self.exact
        width, height = pixels
        return (
            all(self.min_side <= side <= self.max_side for side in pixels)
            and width % self.multiple == 0
            and height % self.multiple == 0
            and width * height <= self.max_pixels
            and max(width, height) / min(width, height) <= self.max_ratio + 1e-9
        )


@dataclass(frozen=True, slots=True)
class OptionRules:
    """What one model takes; an empty tuple (or None) refuses the option. ``background``
    ``auto``/``opaque`` and ``watermark: false`` are what every model draws anyway."""

    size: SizeRule | None = None
    aspect_ratios: tuple[str, ...] = ()
    qualities: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ("auto", "opaque")
    output_formats: tuple[str, ...] = OUTPUT_FORMATS
    watermark: tuple[bool, ...] = (False,)
    negative_prompt: bool = False

    def parse(self, body: dict[str, Any], model: str) -> ImageOptions:
        """The options of a v3 request for ``model``; 1004 listing the accepted values for
        one it cannot take."""
        options = ImageOptions(
            size=_text(body, "size"),
            aspect_ratio=_text(body, "aspect_ratio"),
            quality=_text(body, "quality"),
            background=_text(body, "background"),
            output_format=_output_format(body),
            watermark=_flag(body, "watermark"),
        )
        if options.size is not None:
            options = replace(options, size=_normal_size(options.size))
            if self.size is None or not self.size.allows(options):
                _refuse(model, "size", options.size, self.size.accepted() if self.size else "")
        _check(model, "aspect_ratio", options.aspect_ratio, self.aspect_ratios)
        _check(model, "quality", options.quality, self.qualities)
        _check(model, "background", options.background, self.backgrounds)
        _check(model, "output_format", options.output_format, self.output_formats)
        if options.watermark is not None and options.watermark not in self.watermark:
            _refuse(model, "watermark", options.watermark, "false")
        if options.background == "transparent" and options.output_format not in (None, "png"):
            raise InvalidParameter(
                "background 'transparent' needs output_format 'png'.",
                "Leave output_format out or set it to 'png', or drop the transparent background.",
            )
        return options


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidParameter(f"{name} must be a non-empty string, not {_as_sent(value)}.")
    return value


def _output_format(body: dict[str, Any]) -> str | None:
    value = _text(body, "output_format")
    return "jpeg" if value is not None and value.lower() in ("jpg", "jpeg") else value


def _flag(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidParameter(f"{name} must be true or false, not {_as_sent(value)}.")
    return value


def _normal_size(size: str) -> str:
    """``"2k"`` → ``"2K"``, ``"1536X1024"`` → ``"1536x1024"``; anything else unchanged."""
    if size.upper() in TIERS:
        return size.upper()
    pixels = ImageOptions(size=size).pixels
    return f"{pixels[0]}x{pixels[1]}" if pixels else size


def _check(model: str, name: str, value: str | None, accepted: tuple[str, ...]) -> None:
    if value is not None and value not in accepted:
        _refuse(model, name, value, ", ".join(accepted))


def _refuse(model: str, name: str, value: object, accepted: str) -> None:
    if not accepted:
        raise InvalidParameter(
            f"{model} does not take {name}.",
            f"Leave {name} out, or pick a model that takes it (see docs/protocol.md).",
        )
    raise InvalidParameter(
        f"{model} does not take {name} {_as_sent(value)}.",
        f"Use one of: {accepted}; or leave it out.",
    )


def _as_sent(value: object) -> str:
    """A value as the client wrote it in JSON (``true``, not Python's ``True``); text quoted."""
    return repr(value) if isinstance(value, str) else json.dumps(value)


def task_options(task_input: dict[str, Any]) -> ImageOptions:
    """The options a stored task runs with: the ones it asked for, and its template's aspect
    ratio ("ar 16:9" for asset_extraction) when it asked for no shape."""
    template = TEMPLATES.get(str(task_input.get("template") or ""))
    options = ImageOptions.from_json(task_input)
    return options.with_default_ratio(template.aspect_ratio if template else None)


def pixel_size(
    options: ImageOptions,
    default: tuple[int, int],
    *,
    multiple: int = 16,
    min_side: int = 256,
    max_side: int = 2048,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """The ``(width, height)`` a backend that takes pixels paints for ``options``, within
    its limits: a ``WxH`` size as near as the limits allow; else ``aspect_ratio`` over the
    area of the tier (its long side squared) or of ``default``; else the tier's square or
    ``default``. Sides are multiples of ``multiple``."""
    pixels = options.pixels
    area = max_pixels or max_side * max_side
    width: float
    height: float
    if pixels is not None:
        width, height = pixels
    else:
        long_side = TIERS.get(options.tier or "", 0)
        base = long_side * long_side if long_side else default[0] * default[1]
        ratio = options.ratio or (1.0 if long_side else default[0] / default[1])
        width, height = math.sqrt(base * ratio), math.sqrt(base / ratio)
    scale = min(1.0, max_side / max(width, height), math.sqrt(area / (width * height)))
    scale = max(scale, min_side / min(width, height))  # a narrow ratio keeps its short side
    return _round(width * scale, multiple, min_side, max_side), _round(
        height * scale, multiple, min_side, max_side
    )


def _round(side: float, multiple: int, low: int, high: int) -> int:
    low, high = math.ceil(low / multiple) * multiple, high // multiple * multiple
    return min(high, max(low, round(side / multiple) * multiple))


def nearest_ratio(ratio: float, choices: tuple[str, ...]) -> str:
    """The ratio of ``choices`` closest to ``ratio`` (compared on a log scale)."""
    return min(choices, key=lambda choice: abs(math.log(ratio_of(choice) / ratio)))


def reduced_ratio(width: int, height: int) -> str:
    """``1920, 1080`` → ``"16:9"``."""
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


# --- presets: one per family of models; a catalog entry names one --------------------------

_ANY_PIXELS = SizeRule(tiers=("1K", "2K", "4K"), pixels=True)
GPT_IMAGE_1 = OptionRules(  # gpt-image-1, gpt-image-1.5: three sizes; Tripo: no quality
    size=SizeRule(pixels=True, exact=("1024x1024", "1536x1024", "1024x1536"))
)
GPT_IMAGE_2 = OptionRules(  # any WxH in multiples of 16, ratio ≤ 3:1, ≤ 3840x2160's pixels
    size=SizeRule(
        tiers=("1K", "2K", "4K"),
        pixels=True,
        multiple=16,
        max_side=3840,
        max_pixels=3840 * 2160,
        max_ratio=3.0,
    ),
    qualities=QUALITIES[:3],
)
CHAT_IMAGE_2_5 = replace(GPT_IMAGE_2, qualities=QUALITIES, backgrounds=BACKGROUNDS)
GEMINI_2_5_FLASH = OptionRules(size=SizeRule(), aspect_ratios=ASPECT_RATIOS)  # ≈1K only
GEMINI_3_PRO = OptionRules(size=SizeRule(tiers=("1K", "2K", "4K")), aspect_ratios=ASPECT_RATIOS)
GEMINI_3_1_FLASH = replace(GEMINI_3_PRO, aspect_ratios=ASPECT_RATIOS + EXTRA_RATIOS)
SEEDREAM = OptionRules(size=_ANY_PIXELS, watermark=(True, False))
# FLUX on BFL or diffusers: Kontext takes a ratio (21:9 … 9:21), [dev] width/height.
FLUX_KONTEXT = OptionRules(
    size=SizeRule(pixels=True, max_side=2048, max_ratio=21 / 9 + 0.01),
    aspect_ratios=ASPECT_RATIOS,
    negative_prompt=True,
)
FLUX_DEV = OptionRules(
    size=SizeRule(pixels=True, multiple=32, max_side=1440, max_ratio=4.0),
    aspect_ratios=ASPECT_RATIOS,
    negative_prompt=True,
)
MIDJOURNEY = OptionRules(
    size=SizeRule(pixels=True, max_ratio=8.0),
    aspect_ratios=ASPECT_RATIOS + EXTRA_RATIOS,
    negative_prompt=True,
)
NO_OPTIONS = OptionRules()
