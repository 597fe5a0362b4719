"""Image inspection: the real format from the bytes, size bounds, decompression bombs."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from easel.errors import EmptyImage, ImageTypeNotSupported, InvalidParameter

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MIN_SIDE, MAX_SIDE = 20, 6000
MAX_PIXELS = MAX_SIDE * MAX_SIDE

# Pillow's names → the protocol's format names.
_FORMATS = {
    "PNG": "png",
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "WEBP": "webp",
}  # MPO: multi-frame camera JPEG
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str  # png | jpeg | webp
    width: int
    height: int


def inspect_image(data: bytes, *, what: str = "image") -> ImageInfo:
    """Identify ``data`` from its bytes and check the protocol's bounds.

    Empty → 2003; not PNG/JPEG/WebP → 2004; over 20 MB, a side outside 20–6000 px or more
    pixels than 6000×6000 (a decompression bomb) → 1004. Only the header is decoded.
    """
    if not data:
        raise EmptyImage(f"{what} is empty.")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidParameter(
            f"{what} is {len(data)} bytes; the limit is 20 MB.", "Send a smaller image."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                name = image.format or ""
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidParameter(
            f"{what} declares more pixels than allowed ({MAX_SIDE}×{MAX_SIDE}).",
            "Send a smaller image.",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        name, width, height = "", 0, 0
    fmt = _FORMATS.get(name)
    if fmt is None:
        raise ImageTypeNotSupported(
            f"{what} is not a PNG, JPEG or WebP image"
            + (f" (it is {name})." if name else " (its bytes are not a known image format).")
        )
    if width * height > MAX_PIXELS or not (
        MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE
    ):
        raise InvalidParameter(
            f"{what} is {width}×{height} px; each side must be {MIN_SIDE}–{MAX_SIDE} px.",
            "Resize the image (at least 256 px per side works best).",
        )
    return ImageInfo(fmt, width, height)
