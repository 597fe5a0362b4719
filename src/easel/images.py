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
    pixels than 6000×6000 (a decompression bomb) → 1004; truncated → 1004. Only the header
    is decoded, plus the cheap completeness check of :func:`_check_complete`.
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
    _check_complete(data, fmt, what)
    return ImageInfo(fmt, width, height)


def _check_complete(data: bytes, fmt: str, what: str) -> None:
    """Refuse (1004) an image whose data stops short, without decoding it in full.

    A truncated file passes the header check but fails every later decode; caught here,
    it is refused at upload instead of failing the task that uses it. PNG: every chunk's
    length and CRC up to IEND (no pixels decoded). JPEG: a decode at 1/8 scale, which reads
    the whole entropy-coded stream cheaply. WebP: the RIFF header's length.
    """
    try:
        if fmt == "webp":
            complete = len(data) >= 8 + int.from_bytes(data[4:8], "little")
        else:
            with Image.open(io.BytesIO(data)) as image:
                if fmt == "png":
                    image.verify()
                else:
                    image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
                    image.load()
            complete = True
    except (OSError, ValueError, SyntaxError, EOFError):
        complete = False
    if not complete:
        raise InvalidParameter(
            f"{what} is a truncated or corrupt {fmt.upper()} image.",
            "Send the whole file: re-export the image and check that it opens in a viewer.",
        )
