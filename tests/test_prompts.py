"""Specification of the prompt rules: length, the 2009 character rule, image[N], composition."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from easel.domain.errors import InvalidParameter, InvalidPromptCharacters
from easel.domain.prompts import (
    MAX_PROMPT_CHARS,
    SKETCH_TO_RENDER_INSTRUCTION,
    T_POSE_INSTRUCTION,
    check_image_references,
    check_prompt,
    compose_prompt,
    referenced_images,
    refused_reason,
)

# --- length -----------------------------------------------------------------------------------


def test_the_prompt_limit_is_1024_characters() -> None:
    assert MAX_PROMPT_CHARS == 1024


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param("a" * 1024, id="exactly-1024-ascii"),
        pytest.param("猫" * 1024, id="exactly-1024-cjk-counted-as-characters-not-bytes"),
        pytest.param("", id="empty"),
    ],
)
def test_a_prompt_of_at_most_1024_characters_is_accepted(prompt: str) -> None:
    check_prompt(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param("a" * 1025, id="1025-ascii"),
        pytest.param("猫" * 1025, id="1025-cjk"),
        pytest.param("a" * 5000, id="far-over"),
    ],
)
def test_a_prompt_over_1024_characters_is_refused_with_1004(prompt: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        check_prompt(prompt)
    assert caught.value.code == 1004
    assert caught.value.status == 400
    assert f"{len(prompt)} characters" in caught.value.message
    assert "1024" in caught.value.message
    assert "1024" in caught.value.suggestion


def test_length_is_checked_before_characters_so_an_overlong_emoji_prompt_gets_1004() -> None:
    with pytest.raises(InvalidParameter) as caught:
        check_prompt("😀" * 1025)
    assert caught.value.code == 1004


# --- the 2009 character rule ------------------------------------------------------------------

REFUSED: list[tuple[str, str, str]] = [
    # (description, text, the first refused character)
    ("emoji grinning face", "a 😀 cat", "\U0001f600"),
    ("emoji rocket", "to the moon 🚀", "\U0001f680"),
    ("flag (regional indicators)", "Paris 🇫🇷", "\U0001f1eb"),
    ("skin tone modifier alone", "hand \U0001f3fd", "\U0001f3fd"),
    ("emoji with skin tone", "thumbs 👍🏽 up", "\U0001f44d"),
    ("watch U+231A", "a ⌚ on a wrist", "\u231a"),
    ("check mark button U+2705", "done ✅", "\u2705"),
    ("cross mark U+274C", "no ❌", "\u274c"),
    ("star U+2B50", "a ⭐ in the sky", "\u2b50"),
    ("umbrella with rain U+2614", "rainy ☔", "\u2614"),
    ("variation selector-16 after a text symbol", "sun \u2600\ufe0f", "\ufe0f"),
    ("variation selector-15", "x\ufe0e", "\ufe0e"),
    ("ideographic variation selector", "葛\U000e0100", "\U000e0100"),
    ("keycap sequence 1️⃣", "press 1️⃣", "\ufe0f"),
    ("combining enclosing keycap alone", "1\u20e3", "\u20e3"),
    ("tag characters (subdivision flag)", "gb\U000e0067\U000e0062", "\U000e0067"),
    ("cancel tag", "x\U000e007f", "\U000e007f"),
    ("private use U+E000", "logo \ue000", "\ue000"),
    ("supplementary private use", "logo \U000f0000", "\U000f0000"),
    ("unassigned code point U+0378", "greek \u0378", "\u0378"),
    ("unassigned code point U+E0080", "x\U000e0080", "\U000e0080"),
    ("control U+0000", "nul\x00byte", "\x00"),
    ("control U+0007 (bell)", "ding\x07", "\x07"),
    ("control U+007F (delete)", "del\x7f", "\x7f"),
    ("C1 control U+0085", "next\x85line", "\x85"),
    ("noncharacter U+FFFE", "bom\ufffe", "\ufffe"),
    ("noncharacter U+FFFF", "x\uffff", "\uffff"),
    ("noncharacter U+FDD0", "x\ufdd0", "\ufdd0"),
    ("supplementary noncharacter U+1FFFE", "x\U0001fffe", "\U0001fffe"),
    ("lone surrogate", "x\ud800", "\ud800"),
]


@pytest.mark.parametrize(
    ("text", "refused_char"),
    [pytest.param(text, char, id=name) for name, text, char in REFUSED],
)
def test_emoji_and_special_unicode_are_refused_with_2009_naming_position_and_code_point(
    text: str, refused_char: str
) -> None:
    with pytest.raises(InvalidPromptCharacters) as caught:
        check_prompt(text)
    assert caught.value.code == 2009
    assert caught.value.status == 400
    assert f"at position {text.index(refused_char)}" in caught.value.message
    assert f"U+{ord(refused_char):04X}" in caught.value.message
    assert refused_reason(refused_char) is not None


ALLOWED: list[tuple[str, str]] = [
    ("Chinese", "一只坐在窗台上的橘猫"),
    ("Japanese", "窓辺に座っている猫、カタカナとひらがな"),
    ("Korean", "창가에 앉아 있는 고양이"),
    ("Arabic", "قطة تجلس على حافة النافذة"),
    ("Hindi (with virama and zero-width joiner)", "खिड़की पर बैठी बिल्ली क्\u200dष"),
    ("Cyrillic", "Кошка сидит на подоконнике"),
    ("Greek", "Μια γάτα κάθεται στο περβάζι"),
    ("accented Latin", "Café crème, naïve façade, Ångström, Ærø, Łódź"),
    ("copyright ©", "© 2024 Studio"),
    ("trademark ™", "Easel™ logo"),
    ("black star ★ (text style, unlike ⭐)", "a ★ badge"),
    ("check mark ✓ (text style, unlike ✅)", "✓ done"),
    ("arrows", "left ← right → up ↑ ⇒"),
    ("text-style sun without a variation selector", "☀ sunny"),
    ("tab and newline", "line one\tcolumn\nline two"),
    ("carriage return", "line one\r\nline two"),
    ("punctuation and digits", "Size: 16:9, 50% off! (№ 3) — “quoted” «guillemets» ¿qué?"),
    ("image references", "Use the style of image[1] with colors from image[2]"),
    ("combining marks", "e\u0301 a\u0308 n\u0303"),
    ("no-break and ideographic spaces", "a\u00a0b\u3000c"),
]


@pytest.mark.parametrize("text", [pytest.param(text, id=name) for name, text in ALLOWED])
def test_letters_marks_punctuation_and_text_symbols_of_every_script_are_allowed(
    text: str,
) -> None:
    check_prompt(text)
    assert all(refused_reason(char) is None for char in text)


# --- properties of the 2009 rule -------------------------------------------------------------

_ALLOWED_CHARS = st.characters(categories=("L", "M", "N", "P", "Zs")).filter(
    lambda char: refused_reason(char) is None
)
_ALLOWED_TEXT = st.text(_ALLOWED_CHARS, max_size=MAX_PROMPT_CHARS)

_NONCHARACTERS = [chr(cp) for cp in range(0xFDD0, 0xFDF0)] + [
    chr(plane * 0x10000 + low) for plane in range(17) for low in (0xFFFE, 0xFFFF)
]
# Emoji_Presentation=Yes below U+1F000 (Unicode emoji-data.txt), written out independently.
_EMOJI_PRESENTATION_BMP_RANGES = (
    (0x231A, 0x231B),
    (0x23E9, 0x23EC),
    (0x23F0, 0x23F0),
    (0x23F3, 0x23F3),
    (0x25FD, 0x25FE),
    (0x2614, 0x2615),
    (0x2648, 0x2653),
    (0x267F, 0x267F),
    (0x2693, 0x2693),
    (0x26A1, 0x26A1),
    (0x26AA, 0x26AB),
    (0x26BD, 0x26BE),
    (0x26C4, 0x26C5),
    (0x26CE, 0x26CE),
    (0x26D4, 0x26D4),
    (0x26EA, 0x26EA),
    (0x26F2, 0x26F3),
    (0x26F5, 0x26F5),
    (0x26FA, 0x26FA),
    (0x26FD, 0x26FD),
    (0x2705, 0x2705),
    (0x270A, 0x270B),
    (0x2728, 0x2728),
    (0x274C, 0x274C),
    (0x274E, 0x274E),
    (0x2753, 0x2755),
    (0x2757, 0x2757),
    (0x2795, 0x2797),
    (0x27B0, 0x27B0),
    (0x27BF, 0x27BF),
    (0x2B1B, 0x2B1C),
    (0x2B50, 0x2B50),
    (0x2B55, 0x2B55),
)
_EMOJI_PRESENTATION_BMP = [
    chr(cp) for lo, hi in _EMOJI_PRESENTATION_BMP_RANGES for cp in range(lo, hi + 1)
]


def _code_points(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(chr)


#: The documented refused sets, drawn independently of ``refused_reason``.
REFUSED_CHARS: st.SearchStrategy[str] = st.one_of(
    st.characters(categories=["Cc"]).filter(lambda char: char not in "\t\n\r"),
    st.characters(categories=["Cs"]),
    st.characters(categories=["Co"]),
    st.characters(categories=["Cn"]),
    st.sampled_from(_NONCHARACTERS),
    _code_points(0xFE00, 0xFE0F),  # variation selectors
    _code_points(0xE0100, 0xE01EF),  # variation selectors supplement
    st.just("\u20e3"),  # combining enclosing keycap
    _code_points(0xE0000, 0xE007F),  # tags
    _code_points(0x1F000, 0x1FAFF),  # emoji blocks: pictographs, flags, skin tones…
    st.sampled_from(_EMOJI_PRESENTATION_BMP),  # ⌚ ✅ ❌ ⭐ …
)


@given(_ALLOWED_TEXT)
def test_any_text_of_allowed_letters_marks_numbers_punctuation_and_spaces_passes(
    text: str,
) -> None:
    check_prompt(text)


@given(
    text=st.text(_ALLOWED_CHARS, max_size=MAX_PROMPT_CHARS - 1),
    refused=REFUSED_CHARS,
    data=st.data(),
)
def test_inserting_any_refused_character_into_allowed_text_raises_2009_at_its_position(
    text: str, refused: str, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(text)), label="position")
    prompt = text[:position] + refused + text[position:]
    with pytest.raises(InvalidPromptCharacters) as caught:
        check_prompt(prompt)
    assert caught.value.code == 2009
    assert f"at position {position}:" in caught.value.message
    assert f"U+{ord(refused):04X}" in caught.value.message


# --- image[N] references ----------------------------------------------------------------------


def test_image_references_are_listed_in_order_of_appearance() -> None:
    assert referenced_images("image[2] then image[1] and image[10], not image[] or image[x]") == [
        2,
        1,
        10,
    ]


@pytest.mark.parametrize(
    ("prompt", "image_count"),
    [
        pytest.param("Use image[1]", 1, id="first-of-one"),
        pytest.param("Use image[1] with colors from image[3]", 3, id="first-and-last-of-three"),
        pytest.param("style of image[2]", 3, id="middle"),
        pytest.param("image[4]", 4, id="last-of-four"),
        pytest.param("a cat, no references", 0, id="no-references-no-images"),
        pytest.param("a cat, no references", 2, id="no-references-with-images"),
    ],
)
def test_image_references_from_1_to_the_image_count_are_accepted(
    prompt: str, image_count: int
) -> None:
    check_image_references(prompt, image_count)


@pytest.mark.parametrize(
    ("prompt", "image_count", "bad_reference", "hint"),
    [
        pytest.param("image[0]", 3, "image[0]", "image[1]..image[3]", id="zero-is-not-1-based"),
        pytest.param("image[4]", 3, "image[4]", "image[1]..image[3]", id="one-past-the-end"),
        pytest.param("image[1] image[5]", 4, "image[5]", "image[1]..image[4]", id="second-ref-bad"),
        pytest.param("image[1]", 0, "image[1]", "no images", id="no-images-at-all"),
        pytest.param("image[99]", 10, "image[99]", "image[1]..image[10]", id="far-beyond"),
    ],
)
def test_image_references_outside_1_to_the_image_count_are_refused_with_1004(
    prompt: str, image_count: int, bad_reference: str, hint: str
) -> None:
    with pytest.raises(InvalidParameter) as caught:
        check_image_references(prompt, image_count)
    assert caught.value.code == 1004
    assert bad_reference in caught.value.message
    assert f"has {image_count} image(s)" in caught.value.message
    assert hint in caught.value.suggestion


@given(st.integers(1, 20), st.data())
def test_every_reference_from_1_to_n_is_accepted_and_0_and_n_plus_1_are_refused(
    image_count: int, data: st.DataObject
) -> None:
    number = data.draw(st.integers(1, image_count))
    check_image_references(f"use image[{number}]", image_count)
    for bad in (0, image_count + 1):
        with pytest.raises(InvalidParameter) as caught:
            check_image_references(f"use image[{bad}]", image_count)
        assert caught.value.code == 1004


# --- composition ------------------------------------------------------------------------------


def test_compose_orders_template_user_prompt_t_pose_sketch_with_blank_lines_between() -> None:
    composed = compose_prompt("TEMPLATE", "USER", t_pose=True, sketch_to_render=True)
    assert composed == "\n\n".join(
        ["TEMPLATE", "USER", T_POSE_INSTRUCTION, SKETCH_TO_RENDER_INSTRUCTION]
    )


@pytest.mark.parametrize(
    ("template", "user", "t_pose", "sketch", "expected_parts"),
    [
        pytest.param(None, "USER", False, False, ["USER"], id="user-prompt-only"),
        pytest.param("TEMPLATE", "", False, False, ["TEMPLATE"], id="template-only"),
        pytest.param("TEMPLATE", "   \n", False, False, ["TEMPLATE"], id="blank-user-dropped"),
        pytest.param("", "USER", False, False, ["USER"], id="empty-template-dropped"),
        pytest.param(None, "  USER  ", False, False, ["USER"], id="user-prompt-stripped"),
        pytest.param(None, "USER", True, False, ["USER", T_POSE_INSTRUCTION], id="t-pose"),
        pytest.param(
            None, "USER", False, True, ["USER", SKETCH_TO_RENDER_INSTRUCTION], id="sketch"
        ),
        pytest.param(
            "TEMPLATE",
            "",
            True,
            True,
            ["TEMPLATE", T_POSE_INSTRUCTION, SKETCH_TO_RENDER_INSTRUCTION],
            id="template-and-both-flags-without-user-prompt",
        ),
        pytest.param(None, "", False, False, [], id="nothing-at-all"),
    ],
)
def test_compose_drops_empty_parts_and_keeps_the_documented_order(
    template: str | None, user: str, t_pose: bool, sketch: bool, expected_parts: list[str]
) -> None:
    composed = compose_prompt(template, user, t_pose=t_pose, sketch_to_render=sketch)
    assert composed == "\n\n".join(expected_parts)
    assert "\n\n\n" not in composed
    assert not composed.startswith("\n")
    assert not composed.endswith("\n")


def test_the_t_pose_and_sketch_instructions_are_themselves_allowed_prompts() -> None:
    check_prompt(T_POSE_INSTRUCTION)
    check_prompt(SKETCH_TO_RENDER_INSTRUCTION)
