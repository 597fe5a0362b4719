"""Hypothesis strategies of hostile strings and numbers, and what the server must answer them.

Values are drawn near valid ones: a field is its valid value most of the time and a hostile
one otherwise, so requests reach the deep rules as well as the door. Hostile means: lone
surrogates and NULs (text that cannot be stored), control characters, non-ASCII digits
("²", "٣", "１"), long strings, integers past 64 bits (written as raw JSON digits: Python
cannot even ``repr`` a 5,000-digit int), NaN and infinities, and any JSON value in any field.

The expectation is computed here, independently of the server's code: a request that holds
unstorable text (in any JSON string or key, the path or a query value), an integer past 64
bits, or a control character in a header must get 1004.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import strategies as st

from easel.domain import catalog, templates
from easel.domain.webhooks import EVENT_TYPES

INT64 = range(-(2**63), 2**63)
UNSTORABLE = [chr(0xD800), chr(0xDBFF), chr(0xDC00), chr(0xDFFF), "\x00"]
ODD = ["²", "٣", "１２", "߀", "Ⅻ", "\u200f", "\ufeff", "\x7f", "\x1b[0m", "\t", "%00", "\\u0000"]
TOKEN = "\x00token"  # replaced by a real upload's token when the body is written
TASK_ID = "\x00task"  # replaced by the id of a task of the key


@dataclass(frozen=True)
class Raw:
    """A JSON number written as its digits."""

    digits: str


def _inserted(text: str, char: str, at: int) -> str:
    at = min(at, len(text))
    return text[:at] + char + text[at:]


SOUND_TEXT = st.text(max_size=16)  # any character but surrogates (hypothesis' default)
TEXT = st.one_of(
    SOUND_TEXT,
    st.builds(_inserted, SOUND_TEXT, st.sampled_from(UNSTORABLE), st.integers(0, 16)),
    st.builds(_inserted, SOUND_TEXT, st.sampled_from(ODD), st.integers(0, 16)),
    st.integers(300, 3000).map(lambda n: "é" * n),
)
HUGE = st.one_of(
    st.sampled_from(["1" * 5000, "-" + "9" * 5000, str(2**63), str(-(2**63) - 1)]).map(Raw),
    st.integers(min_value=2**63, max_value=10**40).map(lambda n: Raw(str(n))),
)
NUMBERS = st.one_of(st.integers(-(2**63), 2**63 - 1), HUGE, st.floats())
SCALARS = st.one_of(TEXT, NUMBERS, st.booleans(), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def mostly(*sound: Any) -> st.SearchStrategy[Any]:
    """A sound value five times in six, any hostile value otherwise: bodies with several
    fields are still often accepted, and every field is often hostile."""
    return st.integers(0, 5).flatmap(lambda n: VALUES if n == 0 else st.sampled_from(sound))


# -- JSON bodies ----------------------------------------------------------------------------------

SOURCES = {
    "file_token": mostly(TOKEN),
    "url": mostly("http://127.0.0.1:9/a.png", "https://example.com/a.png"),
    "object": mostly({"bucket": "easel", "key": "uploads/a.png"}),
}
FILE = st.one_of(
    # usually exactly one source, as a client sends; sometimes none or several
    st.sampled_from(sorted(SOURCES)).flatmap(
        lambda source: st.fixed_dictionaries(
            {source: SOURCES[source]}, optional={"type": mostly("png", "jpg")}
        )
    ),
    st.fixed_dictionaries({}, optional={**SOURCES, "type": VALUES}),
)
EXTRA = st.dictionaries(TEXT, VALUES, max_size=1)  # an unknown field: ignored, yet text
TASK_BODY = st.builds(
    lambda body, extra: {**extra, **body},
    st.fixed_dictionaries(
        {"type": mostly("generate_image"), "prompt": mostly("a red fox", "image[1] in snow")},
        optional={
            "model_version": mostly(*catalog.CATALOG),
            "template": mostly(*templates.TEMPLATES),
            "file": mostly(None) | FILE,
            "files": st.lists(FILE, max_size=3) | VALUES,
            "t_pose": mostly(True, False),
            "sketch_to_render": mostly(False),
        },
    ),
    EXTRA,
)
V3_OPTIONS = {
    "model": mostly("flux.1_kontext_pro", "banana", "gpt_4o"),
    "size": VALUES,
}
V3_TEXT_BODY = st.fixed_dictionaries({"prompt": mostly("a red fox")}, optional=V3_OPTIONS)
V3_IMAGE_BODY = st.builds(
    lambda body, images: {**body, **images},
    st.fixed_dictionaries({"prompt": mostly("a red fox")}, optional=V3_OPTIONS),
    st.one_of(
        st.fixed_dictionaries({"input": mostly(TOKEN, "http://127.0.0.1:9/a.png", TASK_ID)}),
        st.fixed_dictionaries({"inputs": st.lists(mostly(TOKEN, TASK_ID), max_size=3)}),
        st.fixed_dictionaries({}, optional={"input": VALUES, "inputs": VALUES}),
    ),
)
V3_LIST_BODY = st.fixed_dictionaries({"task_ids": st.lists(mostly(TASK_ID), max_size=3) | VALUES})
FORMAT_BODY = st.fixed_dictionaries({"format": mostly("png", "webp")})
WEBHOOK_BODY = st.fixed_dictionaries(
    {
        "url": st.one_of(
            mostly("http://127.0.0.1:9/hook"), TEXT.map(lambda tail: "http://127.0.0.1:9/" + tail)
        ),
        "events": st.lists(mostly(*EVENT_TYPES), max_size=3) | VALUES,
    }
)
JSON_ROUTES = {
    "/v2/openapi/task": TASK_BODY,
    "/v3/generation/text-to-image": V3_TEXT_BODY,
    "/v3/generation/image-to-image": V3_IMAGE_BODY,
    "/v3/tasks/list": V3_LIST_BODY,
    "/v3/files/presign": FORMAT_BODY,
    "/v2/openapi/upload/sts/token": FORMAT_BODY,
    "/v2/openapi/webhooks": WEBHOOK_BODY,
}


def write(body: Any, substitutes: dict[str, str]) -> tuple[bytes, bool]:
    """The body as JSON bytes (lone surrogates as ``\\ud800`` escapes, :class:`Raw` as its
    digits, sentinels replaced), and whether the rules refuse it: unstorable text in what the
    server decodes, or an integer past 64 bits."""
    raws: list[str] = []

    def place(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.digits)
            return f"@raw{len(raws) - 1}@"
        if isinstance(value, str):
            return substitutes.get(value, value)
        if isinstance(value, dict):
            return {place(k): place(v) for k, v in value.items()}
        if isinstance(value, list):
            return [place(v) for v in value]
        return value

    text = json.dumps(place(body))
    refused = bool(raws) or unstorable(json.loads(text))  # a surrogate pair decodes as one
    for index, digits in enumerate(raws):
        text = text.replace(f'"@raw{index}@"', digits, 1)
    return text.encode(), refused


def unstorable(value: Any) -> bool:
    """Whether a decoded JSON value holds, in any string or key, a lone surrogate or a NUL."""
    if isinstance(value, str):
        return any(char == "\x00" or 0xD800 <= ord(char) <= 0xDFFF for char in value)
    if isinstance(value, dict):
        return any(unstorable(k) or unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(unstorable(v) for v in value)
    return False


# -- path, query and headers ------------------------------------------------------------------

PATH_TEXT = TEXT.filter(lambda text: text not in ("", ".", "..") and "/" not in text)
ID = st.one_of(st.just(TASK_ID), PATH_TEXT)


def query(pairs: list[tuple[str, str]]) -> bytes:
    """Pairs percent-encoded from their UTF-8 (a surrogate as the bytes it would be)."""
    return "&".join(
        quote_from_bytes(n.encode("utf-8", "surrogatepass"))
        + "="
        + quote_from_bytes(v.encode("utf-8", "surrogatepass"))
        for n, v in pairs
    ).encode()


DIGITS = st.one_of(
    st.integers(-10, 2**70).map(str),
    st.sampled_from(["²", "٣", "１", "0x10", "1e3", "9" * 5000, "", " 1"]),
)
QUERY_VALUE = st.one_of(DIGITS, TEXT)
IDEMPOTENCY_KEYS = st.one_of(st.none(), st.none(), st.uuids().map(str), TEXT)
HEADER_BYTES = st.one_of(
    st.binary(max_size=24),
    TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),
    DIGITS.map(lambda text: text.encode("utf-8")),
    st.sampled_from([b"\xb2", "٣".encode(), b"1" * 5000, str(2**64).encode()]),
)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
HOSTS = st.one_of(
    st.builds(
        lambda labels, port: ".".join(labels).encode() + port,
        st.lists(LABEL, min_size=1, max_size=4),
        st.sampled_from([b"", b":8000", b":1"]),
    ),
    st.sampled_from([b"127.0.0.1:8000", b"[::1]:8443", b"[2001:db8::1]"]),
)
BAD_HOSTS = st.one_of(
    st.integers(260, 2000).map(lambda n: b"a" * n),
    st.builds(lambda host, bad: host + bad, HOSTS, st.sampled_from([b"/x", b"?", b"#", b"@"])),
    st.sampled_from([b"", b" ", b"h\xe9te", b"a b", b"[::1", b"evil.example/x"]),
)


def has_control(value: bytes) -> bool:
    return any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in value)
