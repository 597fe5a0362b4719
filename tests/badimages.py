"""Images whose header is valid but whose pixels do not decode, as a hostile client sends them.

Pillow opens each of them and reports the right format and size; only decoding the pixels
fails. Each is built from a real image saved by Pillow, then damaged past its header.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _saved(fmt: str, width: int, height: int, **options: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(out, format=fmt, **options)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zeroed_webp(width: int = 64, height: int = 48) -> bytes:
    """A lossless WebP whose RIFF and VP8L headers (size included) are intact and whose
    payload after them is zeroed."""
    data = bytearray(_saved("WEBP", width, height, lossless=True))
    start = data.index(b"VP8L") + 8 + 5  # chunk header, then signature and 14-bit sizes
    data[start:] = bytes(len(data) - start)
    return bytes(data)


def garbage_idat_png(width: int = 64, height: int = 48) -> bytes:
    """A PNG whose IDAT is garbage of the same length, with a correct CRC: every chunk
    checks out, the zlib stream does not."""
    data = _saved("PNG", width, height)
    at = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[at : at + 4])
    garbage = bytes((index * 37 + 11) % 256 for index in range(length))
    return data[:at] + _chunk(b"IDAT", garbage) + data[at + 12 + length :]


def short_idat_png(width: int, height: int) -> bytes:
    """A 1×1 PNG's pixel data under a header that declares ``width`` × ``height`` (CRCs
    correct): the pixels stop short of the declared size."""
    data = bytearray(_saved("PNG", 1, 1))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


UNDECODABLE = {
    "webp-zeroed-payload": (zeroed_webp(), "WEBP"),
    "png-garbage-idat-correct-crc": (garbage_idat_png(), "PNG"),
    "png-pixels-short-of-header": (short_idat_png(600, 400), "PNG"),
}
