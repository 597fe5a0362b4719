"""The text rules at the door: path, query, headers and ``Host``, before any route runs.

Every string a request brings in is valid text (``easel.domain.text``) or the request is refused
with 1004, naming where the text was:

* the path and the query's names and values hold no NUL and no lone surrogate (a path id
  holding one matches nothing, and PostgreSQL refuses even to compare it);
* header values hold no control character but tab (RFC 9110 allows none; the HTTP server
  refuses them on the wire, so this guards what reaches the app otherwise, and the headers
  the server stores: ``Idempotency-Key``);
* ``Content-Length`` is 1 to 19 ASCII digits (``str.isdigit`` takes "²", ``int`` then raises);
* ``Host`` is a host name or address with an optional port (at most 259 characters). The
  request's base URL is built from it, and that base ends up in answers and in storage (a
  webhook keeps the base of its output links, in a 512-character column): an unbounded or
  malformed one was a 500, or a link to anywhere. ``public_url``, when set, is used instead.

JSON bodies follow the same rules in their one decoder, ``easel.domain.text.decode_json``. This is
ASGI middleware so that it holds for every route, WebSockets included, and costs a few
microseconds: nothing is decoded unless the bytes could hold a flaw.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from easel.api.envelope import refuse
from easel.domain.errors import InvalidParameter
from easel.domain.text import flaw

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TEXT_SUGGESTION = "Percent-encode text as UTF-8 and leave NUL and control characters out."
# The headers the server parses, the form each must have, and what to say when it has not.
_FORMS: dict[bytes, tuple[re.Pattern[bytes], str, str]] = {
    b"host": (
        # a DNS name (253 characters at most) or a bracketed IPv6 literal; an optional port
        re.compile(rb"(?:[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{0,5})?"),
        "the Host header ({size} bytes) is not a host name or address with an optional port.",
        "Send the host (and port) of the URL you connect to, as HTTP clients do; behind a "
        "proxy, have it pass a valid Host, or set public_url.",
    ),
    b"content-length": (
        re.compile(rb"[0-9]{1,19}"),
        "the Content-Length header ({size} bytes) is not a number of bytes.",
        "Send the body's length in ASCII digits, or let the HTTP client set it.",
    ),
}


def _path_or_query(scope: Scope) -> InvalidParameter | None:
    problem = flaw(scope["path"])
    if problem is not None:
        return InvalidParameter(
            f"the path holds {problem}; no task, file or webhook id holds one.", _TEXT_SUGGESTION
        )
    query: bytes = scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:  # nothing else decodes to a flaw
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        for text in (name, value):
            if (problem := flaw(text)) is not None:
                return InvalidParameter(
                    f"query parameter {name[:40]!r} holds {problem}.", _TEXT_SUGGESTION
                )
    return None


def _headers(scope: Scope) -> InvalidParameter | None:
    for name, value in scope["headers"]:
        control = _CONTROL.search(value)
        if control is not None:
            return InvalidParameter(
                f"the {name.decode('latin-1')[:60]} header holds a control character "
                f"(U+{control.group()[0]:04X}) at position {control.start()}.",
                "Send header values without control characters (RFC 9110).",
            )
        form = _FORMS.get(name)
        if form is not None and not form[0].fullmatch(value):
            return InvalidParameter(form[1].format(size=len(value)), form[2])
    return None


class TextRules:
    """Refuse a request whose path, query or headers break the text rules, or whose
    ``Host`` is not a host (400 / 1004; a WebSocket is closed with 1008)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = _path_or_query(scope) or _headers(scope)
            if refusal is not None:
                await refuse(refusal, scope, receive, send)
                return
        await self.app(scope, receive, send)
