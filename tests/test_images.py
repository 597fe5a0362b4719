"""Specification of ``inspect_image``: format from the bytes, size bounds, decompression bombs."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from easel.errors import EmptyImage, ImageTypeNotSupported, InvalidParameter
from easel.images import MAX_IMAGE_BYTES, MIME_TYPES, inspect_image


def encode(fmt: str, width: int = 64, height: int = 48, mode: str = "RGB") -> bytes:
    """A real image of ``width`` x ``height`` saved by Pillow in ``fmt``."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), (200, 80, 40)).save(buffer, format=fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR is rewritten to declare ``width`` x ``height`` (with a valid CRC)."""
    data = bytearray(encode("PNG", 1, 1))
    assert data[12:16] == b"IHDR"  # 8-byte signature, then length (4) and chunk type (4)
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


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


def test_only_the_header_is_read_so_a_declared_6000x6000_png_is_accepted() -> None:
    info = inspect_image(png_declaring(6000, 6000))
    assert (info.format, info.width, info.height) == ("png", 6000, 6000)


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
    bomb = png_declaring(width, height)
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
