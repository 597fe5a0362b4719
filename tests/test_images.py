"""Specification of ``inspect_image``: format from the bytes, size bounds, decompression bombs,
pixels that decode."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from badimages import UNDECODABLE, garbage_idat_png, short_idat_png
from easel.domain.errors import EmptyImage, ImageTypeNotSupported, InvalidParameter
from easel.domain.images import (
    DECODE_THREADS,
    MAX_IMAGE_BYTES,
    MIME_TYPES,
    check_image,
    inspect_image,
)


def encode(fmt: str, width: int = 64, height: int = 48, mode: str = "RGB") -> bytes:
    """A real image of ``width`` x ``height`` saved by Pillow in ``fmt``."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), (200, 80, 40)).save(buffer, format=fmt)
    return buffer.getvalue()


# --- format -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pillow_format", "expected", "misleading_name"),
    [
        pytest.param("PNG", "png", "photo.jpg", id="png-named-jpg"),
        pytest.param("JPEG", "jpeg", "picture.png", id="jpeg-named-png"),
        pytest.param("WEBP", "webp", "image.gif", id="webp-named-gif"),
    ],
)
def test_png_jpeg_and_webp_are_detected_from_the_bytes_whatever_the_name(
    pillow_format: str, expected: str, misleading_name: str
) -> None:
    info = inspect_image(encode(pillow_format, 64, 48), what=misleading_name)
    assert (info.format, info.width, info.height) == (expected, 64, 48)
    assert expected in MIME_TYPES


def test_a_png_with_an_alpha_channel_is_a_png() -> None:
    assert inspect_image(encode("PNG", 30, 30, mode="RGBA")).format == "png"


def test_empty_bytes_are_refused_with_2003() -> None:
    with pytest.raises(EmptyImage) as caught:
        inspect_image(b"", what="files[0]")
    assert caught.value.code == 2003
    assert caught.value.message == "files[0] is empty."


@pytest.mark.parametrize(
    ("data", "named"),
    [
        pytest.param(b"definitely not an image", "not a known image format", id="text"),
        pytest.param(bytes(range(256)) * 4, "not a known image format", id="random-bytes"),
        pytest.param(b"\x89PNG\r\n\x1a\n", "not a known image format", id="png-signature-only"),
        pytest.param(encode("GIF"), "it is GIF", id="gif"),
        pytest.param(encode("BMP"), "it is BMP", id="bmp"),
        pytest.param(encode("TIFF"), "it is TIFF", id="tiff"),
    ],
)
def test_bytes_that_are_not_png_jpeg_or_webp_are_refused_with_2004(data: bytes, named: str) -> None:
    with pytest.raises(ImageTypeNotSupported) as caught:
        inspect_image(data, what="file")
    assert caught.value.code == 2004
    assert caught.value.message.startswith("file is not a PNG, JPEG or WebP image")
    assert named in caught.value.message


# --- dimensions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(20, 20, id="smallest-20x20"),
        pytest.param(6000, 20, id="widest-6000"),
        pytest.param(20, 6000, id="tallest-6000"),
    ],
)
def test_sides_from_20_to_6000_px_are_accepted(width: int, height: int) -> None:
    info = inspect_image(encode("PNG", width, height))
    assert (info.width, info.height) == (width, height)


@pytest.mark.parametrize(
    ("fmt", "width", "height"),
    [
        pytest.param("PNG", 19, 100, id="png-19px-wide"),
        pytest.param("JPEG", 100, 19, id="jpeg-19px-high"),
        pytest.param("PNG", 6001, 20, id="png-6001px-wide"),
        pytest.param("WEBP", 20, 6001, id="webp-6001px-high"),
        pytest.param("PNG", 1, 1, id="one-pixel"),
    ],
)
def test_a_side_outside_20_to_6000_px_is_refused_with_1004(
    fmt: str, width: int, height: int
) -> None:
    with pytest.raises(InvalidParameter) as caught:
        inspect_image(encode(fmt, width, height), what="file")
    assert caught.value.code == 1004
    assert f"file is {width}×{height} px" in caught.value.message
    assert "20–6000 px" in caught.value.message


def test_the_largest_image_allowed_decodes_and_is_accepted() -> None:
    """6000×6000, the most pixels allowed: decoded in full (about 0.2 s, 108 MB), accepted."""
    info = inspect_image(encode("PNG", 6000, 6000))
    assert (info.format, info.width, info.height) == ("png", 6000, 6000)


# --- pixels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "fmt"), UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_a_valid_header_over_pixels_that_do_not_decode_is_refused_with_1004(
    data: bytes, fmt: str
) -> None:
    """The header is right (Pillow opens it and reports format and size), the pixels are not:
    refused where the image enters, never passed on to fail the task that uses it."""
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.format == fmt  # what a header-only check saw, and accepted
    with pytest.raises(InvalidParameter) as caught:
        inspect_image(data, what="file")
    assert caught.value.code == 1004
    assert caught.value.message.startswith(f"file is a truncated or corrupt {fmt} image")
    assert "cannot be decoded" in caught.value.message
    assert "re-export" in caught.value.suggestion


def test_a_6000x6000_header_over_one_pixel_of_data_is_refused_with_1004() -> None:
    """Within the bounds by its header; the pixel data holds one pixel."""
    with pytest.raises(InvalidParameter, match="cannot be decoded"):
        inspect_image(short_idat_png(6000, 6000), what="file")


async def test_check_image_gives_the_same_verdicts_from_its_decoding_threads() -> None:
    """What the server calls: the same answers, decoded off the event loop, a bounded
    number at a time (each decode holds up to 144 MB)."""
    jpeg = encode("JPEG", 64, 48)
    many = [check_image(jpeg, what="file") for _ in range(3 * DECODE_THREADS)]
    assert set(await asyncio.gather(*many)) == {inspect_image(jpeg)}
    with pytest.raises(InvalidParameter, match="file is a truncated or corrupt PNG image"):
        await check_image(garbage_idat_png(), what="file")
    with pytest.raises(EmptyImage):
        await check_image(b"", what="file")


@pytest.mark.parametrize(
    ("width", "height", "named"),
    [
        pytest.param(100_000, 100_000, "declares more pixels", id="far-past-pillow-bomb-error"),
        pytest.param(10_000, 10_000, "declares more pixels", id="past-pillow-bomb-warning"),
        pytest.param(2**31 - 1, 2**31 - 1, "declares more pixels", id="largest-png-dimensions"),
        pytest.param(7000, 7000, "7000×7000 px", id="under-pillow-limit-but-over-6000"),
    ],
)
def test_a_decompression_bomb_header_is_refused_with_1004_without_decoding(
    width: int, height: int, named: str
) -> None:
    bomb = short_idat_png(width, height)
    assert len(bomb) < 100  # the claim is in the header, the pixels are not there
    with pytest.raises(InvalidParameter) as caught:
        inspect_image(bomb, what="file")
    assert caught.value.code == 1004
    assert named in caught.value.message


# --- size in bytes ----------------------------------------------------------------------------


def test_the_byte_limit_is_20_mb() -> None:
    assert MAX_IMAGE_BYTES == 20 * 1024 * 1024


def test_an_image_of_exactly_20_mb_is_accepted() -> None:
    png = encode("PNG", 64, 64)
    padded = png + bytes(MAX_IMAGE_BYTES - len(png))  # trailing bytes after IEND
    assert len(padded) == MAX_IMAGE_BYTES
    assert inspect_image(padded).format == "png"


def test_an_image_over_20_mb_is_refused_with_1004_before_decoding() -> None:
    png = encode("PNG", 64, 64)
    oversize = png + bytes(MAX_IMAGE_BYTES + 1 - len(png))
    with pytest.raises(InvalidParameter) as caught:
        inspect_image(oversize, what="file")
    assert caught.value.code == 1004
    assert f"file is {MAX_IMAGE_BYTES + 1} bytes" in caught.value.message
    assert "20 MB" in caught.value.message
