"""Property tests of the pure request rules on arbitrary input (hypothesis).

``parse_generate_image`` (and the v3 translation in front of it) sees whatever JSON a client
sends. For any JSON object it must return a request or raise an :class:`EaselError` with the
protocol's code; never another exception, which would be a 500. An accepted request must
round-trip: its ``input`` echo, sent again, is the same effective request. Any text is a prompt
that passes or is refused with 1004 (too long) or 2009 (a refused character), never a crash.

Bodies are drawn near the valid ones (known fields with valid, borderline and arbitrary
values) so that many are accepted and the round trip is exercised, not only the refusals.
Derandomized, so every run checks the same examples (``EASEL_FUZZ_SCALE=10``: ten times as
many).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from easel.domain import catalog, errors, templates, v3
from easel.domain.errors import EaselError, InvalidParameter, InvalidPromptCharacters
from easel.domain.parsing import GenerateImageRequest, parse_file, parse_generate_image
from easel.domain.prompts import MAX_PROMPT_CHARS, check_prompt, refused_reason

# EASEL_FUZZ_SCALE=10 runs ten times the examples, as in test_fuzz.py.
FUZZ = settings(
    max_examples=400 * int(os.environ.get("EASEL_FUZZ_SCALE", "1")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROTOCOL_ERRORS = {
    (cls.code, cls.status)
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, EaselError)
}

# -- strategies -----------------------------------------------------------------------------------

# Any text, lone surrogates included: json.loads turns "\ud800" into one.
ANY_CHAR = st.characters(exclude_categories=())
ANY_TEXT = st.text(ANY_CHAR, max_size=40)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # json.loads reads NaN and Infinity too
    | ANY_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)


def mostly(*valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of the ``valid`` strategies five times in six, any JSON value otherwise: enough
    broken fields to reach every refusal, enough sound ones for bodies to be accepted."""
    sound = st.one_of(*valid)
    return st.integers(0, 5).flatmap(lambda n: JSON_VALUES if n == 0 else sound)


PROMPTS = mostly(
    st.sampled_from(["a red fox", "", "   ", "use image[1] and image[2]", "image[0]", "©™★✓→"]),
    st.text(st.sampled_from("ab [12]\n\timage"), min_size=1, max_size=60),
    st.text(ANY_CHAR, max_size=60),
    st.text(ANY_CHAR, min_size=MAX_PROMPT_CHARS - 2, max_size=MAX_PROMPT_CHARS + 2),
)
VERSIONS = mostly(st.sampled_from([*catalog.CATALOG, "flux.2", "", "FLUX.1_DEV"]))
TEMPLATE_SLUGS = mostly(
    st.sampled_from([*templates.TEMPLATES, *(s.replace("_", "-") for s in templates.TEMPLATES)]),
    st.sampled_from(["", "nope"]),
)
URLS = mostly(
    st.sampled_from(
        [
            "https://example.com/a.png",
            " http://example.com/b.jpg ",
            "http://[::1",
            "ftp://example.com/a.png",
            "https://",
            "http://user@/x",
        ]
    ),
    st.text(ANY_CHAR, max_size=30).map(lambda tail: "http://" + tail),
    # scheme + host + path, from characters that URL parsing and stripping treat specially
    st.builds(
        lambda scheme, host, path: scheme + host + path,
        st.sampled_from(["http://", "https://", " http://", "ftp://", "http:", ""]),
        st.text(st.sampled_from("ab.1:@[]-% \t\n\xa0\u2003\u3000"), max_size=8),
        st.sampled_from(["", "/a.png", " ", "?x=1", "#f"]),
    ),
)
SOURCES = {
    "file_token": mostly(st.sampled_from(["ce85f375-3ccc", " token ", "", "  "]), ANY_TEXT),
    "url": URLS,
    "object": mostly(
        st.fixed_dictionaries(
            {"bucket": mostly(st.just("easel")), "key": mostly(st.just("uploads/a.png"))}
        )
    ),
}
FILE_TYPES = mostly(st.sampled_from(["png", "jpg", "webp", ""]))
FILE_OBJECTS = mostly(
    # usually exactly one source, sometimes none or several
    st.sampled_from(list(SOURCES)).flatmap(
        lambda source: st.fixed_dictionaries(
            {source: SOURCES[source]}, optional={"type": FILE_TYPES}
        )
    ),
    st.fixed_dictionaries({}, optional={**SOURCES, "type": FILE_TYPES}),
)
BOOLS = mostly(st.booleans())
BODIES = st.fixed_dictionaries(
    {"type": mostly(st.just("generate_image")), "prompt": PROMPTS},
    optional={
        "model_version": VERSIONS,
        "template": TEMPLATE_SLUGS,
        "file": FILE_OBJECTS,
        "files": mostly(st.lists(FILE_OBJECTS, max_size=12)),
        "t_pose": BOOLS,
        "sketch_to_render": BOOLS,
        "extra": JSON_VALUES,
    },
)


def assert_protocol_error(exc: EaselError) -> None:
    """A code and status of the protocol, and a message and suggestion fit for the envelope."""
    assert (exc.code, exc.status) in PROTOCOL_ERRORS, (exc.code, exc.status)
    assert exc.message.strip() and exc.suggestion.strip(), exc
    json.dumps({"code": exc.code, "message": exc.message, "suggestion": exc.suggestion})


def parse_or_refuse(body: dict[str, Any]) -> GenerateImageRequest | EaselError:
    """The request, or the protocol error; any other exception fails the test."""
    try:
        return parse_generate_image(body)
    except EaselError as exc:
        refusal = exc
    assert_protocol_error(refusal)
    return refusal


# -- properties -----------------------------------------------------------------------------------


@FUZZ
@given(body=BODIES)
def test_any_body_is_parsed_into_a_request_or_refused_with_a_protocol_error(
    body: dict[str, Any],
) -> None:
    result = parse_or_refuse(body)
    if isinstance(result, GenerateImageRequest):
        # What an accepted request is used for must not fail either.
        json.dumps(result.input_echo())
        assert result.composed_prompt.strip()
        assert result.image_count <= result.model.max_files


@FUZZ
@given(body=BODIES)
def test_an_accepted_request_round_trips_through_its_input_echo(body: dict[str, Any]) -> None:
    request = parse_or_refuse(body)
    if not isinstance(request, GenerateImageRequest):
        return
    echo = request.input_echo()
    again = parse_or_refuse({"type": "generate_image", **json.loads(json.dumps(echo))})
    assert isinstance(again, GenerateImageRequest), (echo, again)
    # The echo names the effective model, so an upgrade's note is not repeated.
    assert again == replace(request, notes=()), echo
    assert again.input_echo() == echo


@FUZZ
@given(value=FILE_OBJECTS | st.fixed_dictionaries({"url": URLS}, optional={"type": FILE_TYPES}))
def test_an_accepted_file_object_round_trips_through_its_json(value: Any) -> None:
    try:
        ref = parse_file(value, "file")
    except EaselError as exc:
        assert_protocol_error(exc)
        return
    again = parse_or_refuse({"type": "generate_image", "prompt": "x", "file": ref.to_json()})
    assert isinstance(again, GenerateImageRequest), (ref, again)
    assert again.files == (ref,)


@FUZZ
@given(body=st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=6) | BODIES)
def test_any_v3_generation_body_becomes_a_request_or_a_protocol_error(
    body: dict[str, Any],
) -> None:
    for route in ("text-to-image", "image-to-image"):
        try:
            translated = v3.to_generate_image(body, route)
        except EaselError as exc:
            assert_protocol_error(exc)
        else:
            parse_or_refuse(translated)


@FUZZ
@given(prompt=st.text(ANY_CHAR, max_size=MAX_PROMPT_CHARS))
def test_any_text_up_to_the_limit_passes_or_is_refused_with_2009_at_the_first_refused_character(
    prompt: str,
) -> None:
    first = next((i for i, char in enumerate(prompt) if refused_reason(char)), None)
    if first is None:
        check_prompt(prompt)
        return
    with pytest.raises(InvalidPromptCharacters, match=f"at position {first}: U\\+") as caught:
        check_prompt(prompt)
    assert (caught.value.code, caught.value.status) == (2009, 400)


@FUZZ
@given(prompt=st.text(ANY_CHAR, min_size=MAX_PROMPT_CHARS + 1, max_size=MAX_PROMPT_CHARS + 50))
def test_any_text_over_the_limit_is_refused_with_1004(prompt: str) -> None:
    with pytest.raises(InvalidParameter, match=f"prompt is {len(prompt)} characters") as caught:
        check_prompt(prompt)
    assert caught.value.code == 1004


@FUZZ
@given(prompt=st.text(ANY_CHAR, max_size=MAX_PROMPT_CHARS))
def test_any_prompt_in_a_body_is_accepted_or_refused_with_1004_or_2009(prompt: str) -> None:
    result = parse_or_refuse({"type": "generate_image", "prompt": prompt})
    if isinstance(result, EaselError):
        assert result.code in (1004, 2009), result


# -- regressions: what the properties found -------------------------------------------------------


@pytest.mark.parametrize("url", ["http://\u3000", "http:// ", "https://\xa0", " http://\u2003 "])
def test_a_url_that_is_only_a_scheme_once_stripped_is_refused(url: str) -> None:
    """Found by the round trip: the URL was checked before it was stripped, so it was
    accepted, stored as "http://", and refused when sent again."""
    with pytest.raises(InvalidParameter, match="must be an http\\(s\\) URL") as caught:
        parse_file({"url": url}, "files[0]")
    assert caught.value.code == 1004
