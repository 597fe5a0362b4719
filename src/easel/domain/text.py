"""What counts as text and as a number at the door: the rule every request value must meet.

A string that enters Easel is stored (PostgreSQL ``text`` and ``json``, SQLite), compared in
SQL, logged and sent back as UTF-8 JSON. Two kinds of Python ``str`` cannot make that trip:

* a lone UTF-16 surrogate (U+D800–U+DFFF), which JSON's ``\\ud800`` escape produces and which
  UTF-8 cannot encode: the database driver, the log or the response encoder raises;
* NUL (U+0000), which PostgreSQL refuses in text (an error even to compare with it).

Other control characters are valid Unicode and are stored, compared and echoed (JSON escapes
them); a field whose grammar excludes them refuses them by that grammar (the prompt's 2009 rule,
URLs, ids that then match nothing).

A JSON integer must fit in 64 bits, the widest integer column: Python's ``json`` would
otherwise build a 5,000-digit ``int`` (or raise at its 4,300-digit conversion limit), which no
field takes and the SQL drivers cannot bind.

:func:`decode_json` is the one JSON decoder of request bodies: it applies both rules and names
the offending field. Pure: no I/O, no HTTP.
"""

from __future__ import annotations

import json
import re
from typing import Any

from easel.domain.errors import InvalidParameter, MalformedBody

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INT64_DIGITS = len(str(INT64_MAX))
_FLAWED = re.compile("[\x00\ud800-\udfff]")
_SUGGESTION = (
    "Send text as valid UTF-8 (a JSON \\u escape may name a whole character only, never "
    "half of a surrogate pair, nor \\u0000) and integers within 64 bits."
)


def flaw(text: str) -> str | None:
    """What makes ``text`` unfit to store or compare, or None when it is fit."""
    found = _FLAWED.search(text)
    if found is None:
        return None
    char = found.group()
    what = "a NUL character" if char == "\x00" else "a lone UTF-16 surrogate"
    return f"{what} (U+{ord(char):04X}) at position {found.start()}"


class OutOfRange:
    """An integer literal that does not fit in 64 bits, kept as its digits (never converted:
    a long one would trip Python's int-string limit) until the walk names its field."""

    __slots__ = ("digits",)

    def __init__(self, digits: str) -> None:
        self.digits = digits


def _parse_int(digits: str) -> int | OutOfRange:
    if len(digits.lstrip("-")) > _INT64_DIGITS:
        return OutOfRange(digits)
    value = int(digits)
    return value if INT64_MIN <= value <= INT64_MAX else OutOfRange(digits)


def _any_problem(value: Any) -> bool:
    """Whether :func:`find_flaw` would find something: the same walk without the paths, for
    the common case of a sound value."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _FLAWED.search(item):
                return True
        elif isinstance(item, dict):
            if any(_FLAWED.search(key) for key in item):
                return True
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, OutOfRange):
            return True
    return False


def _problem(value: object) -> str | None:
    """What is wrong with one JSON scalar, as a predicate ("holds …", "is …")."""
    if isinstance(value, str):
        found = flaw(value)
        return None if found is None else f"holds {found}"
    if isinstance(value, OutOfRange):
        return f"is an integer of {len(value.digits.lstrip('-'))} digits, beyond 64 bits"
    return None


def find_flaw(value: Any) -> tuple[str, str] | None:
    """The first string (key or value) or integer in a decoded JSON value that breaks the
    rules, in document order, as (its field, what is wrong with it); None when there is none.
    Iterative: a body nested as deep as the decoder allows cannot overflow the stack here."""
    if not _any_problem(value):
        return None
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        problem = _problem(item)
        if problem is not None:
            return path or "the request body", problem
        inner: list[tuple[str, Any]] = []
        if isinstance(item, dict):
            for key, child in item.items():
                if (problem := flaw(key)) is not None:
                    return f"a key of {path or 'the request body'}", f"holds {problem}"
                name = key if len(key) <= 40 else key[:40] + "…"  # messages stay short
                inner.append((f"{path}.{name}" if path else name, child))
        elif isinstance(item, list):
            inner = [(f"{path}[{index}]", child) for index, child in enumerate(item)]
        pending.extend(reversed(inner))
    return None


def decode_json(raw: bytes) -> Any:
    """A request body as JSON: 1003 when it is not JSON, 1004 naming the field that holds
    text or a number the server cannot keep (see the module's rules).

    The bytes are decoded strictly (``json.loads`` alone lets UTF-8-encoded surrogates
    through, as ``surrogatepass``), and JSON refuses raw control characters in strings, so a
    flawed string can only come from a ``\\u`` escape: bodies without one skip the walk."""
    oversized = False

    def parse_int(digits: str) -> int | OutOfRange:
        nonlocal oversized
        value = _parse_int(digits)
        oversized = oversized or isinstance(value, OutOfRange)
        return value

    try:
        text = raw.decode(json.detect_encoding(raw))
        value = json.loads(text, parse_int=parse_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. 100000 levels of [[[…]]]: the decoder refuses the depth
        raise MalformedBody("the request body nests JSON too deeply.") from None
    found = find_flaw(value) if oversized or "\\u" in text else None
    if found is not None:
        field, problem = found
        raise InvalidParameter(f"{field} {problem}.", _SUGGESTION)
    return value


def load_stored(text: str | bytes) -> Any:
    """JSON read back from the database, scrubbed of what the rules refuse (see
    :func:`scrubbed`). What Easel stores is ``json.dumps`` output, ASCII with ``\\u``
    escapes, so text without one needs no look."""
    value = json.loads(text)
    escaped = b"\\u" in text if isinstance(text, bytes) else "\\u" in text
    return scrubbed(value) if escaped and _any_problem(value) else value


def scrubbed(value: Any) -> Any:
    """A JSON value with each unfit character replaced by U+FFFD: for reading data stored
    before the rule held, so that it can still be answered."""
    if isinstance(value, str):
        return _FLAWED.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrubbed(key): scrubbed(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [scrubbed(inner) for inner in value]
    return value
