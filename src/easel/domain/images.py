"""Image inspection: the real format from the bytes, size bounds, decompression bombs, and a
full decode of the pixels, so an image that cannot be read is refused where it enters."""

from __future__ import annotations

import asyncio
import functools
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from easel.domain.errors import EmptyImage, ImageTypeNotSupported, InvalidParameter

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MIN_SIDE, MAX_SIDE = 20, 6000
MAX_PIXELS = MAX_SIDE * MAX_SIDE
# Decodes running at once in one process. A decode holds the whole first frame, at most
# MAX_PIXELS × 4 bytes (144 MB), so this bounds the memory that images in flight can take.
DECODE_THREADS = 2
_decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="easel-decode")

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


async def check_image(data: bytes, *, what: str = "image") -> ImageInfo:
    """:func:`inspect_image` on a decoding thread: a full decode takes up to about a second
    of CPU, which must not stall the event loop, and at most ``DECODE_THREADS`` run at once
    (the rest wait their turn), which bounds their memory."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoders, functools.partial(inspect_image, data, what=what))


def inspect_image(data: bytes, *, what: str = "image") -> ImageInfo:
    """Identify ``data`` from its bytes, check the protocol's bounds and decode its pixels.

    Empty → 2003; not PNG/JPEG/WebP → 2004; over 20 MB, a side outside 20–6000 px or more
    pixels than 6000×6000 (a decompression bomb) → 1004, from the header, before any pixel
    is decoded; pixels that do not decode (truncated, or a valid header over a corrupt
    payload) → 1004, from :func:`_decode`.
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
    _decode(data, fmt, what)
    return ImageInfo(fmt, width, height)


def _decode(data: bytes, fmt: str, what: str) -> None:
    """Refuse (1004) an image whose pixels do not decode.

    A header can be valid over a payload that is not (cut short, zeroed, garbage with correct
    CRCs): such a file would be accepted and then fail every task that uses it, so it is
    decoded here, once, as every backend will decode it. The header check before bounds
    what this allocates: the first frame, at most ``MAX_PIXELS``, under Pillow's own
    decompression-bomb limit. PNG: every chunk's CRC (``verify``), then the pixels. WebP:
    the pixels. JPEG: the whole entropy-coded stream, with the inverse DCT at 1/8 scale
    (``draft``), so every coefficient is read in 1/64 of the memory.
    """
    try:
        if fmt == "png":
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        with Image.open(io.BytesIO(data)) as image:
            if fmt == "jpeg":
                image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as exc:  # Pillow's decoders raise many types on bad data
        reason = str(exc).strip()[:120] or type(exc).__name__
        raise InvalidParameter(
            f"{what} is a truncated or corrupt {fmt.upper()} image: its pixels cannot be "
            f"decoded ({reason}).",
            "Send the whole file: re-export the image and check that it opens in a viewer.",
        ) from None


def encode_as(data: bytes, fmt: str) -> bytes:
    """An image's bytes re-encoded as ``fmt`` (png | jpeg); JPEG has no alpha, so
    transparency is flattened on white. Callers keep the original bytes (and any C2PA
    manifest in them) when the format already matches."""
    out = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        if fmt == "jpeg":
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            flat.save(out, format="JPEG", quality=95)
        else:
            image.save(out, format="PNG")
    return out.getvalue()
