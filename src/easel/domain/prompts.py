"""Prompt rules: length, the 2009 character rule, ``image[N]`` references, composition.

The characters refused with 2009 ("emoji and certain special Unicode") are exactly:

* controls (category Cc) other than tab, line feed and carriage return;
* surrogates (Cs), private use (Co), unassigned code points (Cn) and noncharacters;
* variation selectors (U+FE00–U+FE0F, U+E0100–U+E01EF), the combining keycap U+20E3 and
  tag characters (U+E0000–U+E007F), the glue of emoji sequences;
* emoji: everything in U+1F000–U+1FAFF (pictographs, emoticons, transport, flags' regional
  indicators, skin tones, playing cards…) and the characters of U+2300–U+2BFF that Unicode
  presents as emoji by default (⌚, ☔, ⚡, ✅, ❌, ⬛, …).

Letters, marks, digits, punctuation and spaces of every script pass, as do text-style
symbols such as ©, ™, ★, ✓ and arrows.
"""

from __future__ import annotations

import re
import unicodedata

from easel.domain.errors import InvalidParameter, InvalidPromptCharacters

MAX_PROMPT_CHARS = 1024
V3_MAX_PROMPT_CHARS = 1800  # Tripo's limit on the v3 image routes

# Emoji_Presentation=Yes code points below U+1F000 (Unicode emoji-data.txt).
_EMOJI_PRESENTATION_BMP: tuple[tuple[int, int], ...] = (
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

_SEQUENCE_GLUE: tuple[tuple[int, int], ...] = (
    (0xFE00, 0xFE0F),
    (0x20E3, 0x20E3),
    (0xE0000, 0xE007F),
    (0xE0100, 0xE01EF),
)

_ALLOWED_CONTROLS = frozenset("\t\n\r")

IMAGE_REFERENCE = re.compile(r"image\[(\d+)\]")


def _in(ranges: tuple[tuple[int, int], ...], cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def refused_reason(char: str) -> str | None:
    """Why ``char`` is refused in a prompt, or ``None`` when it is allowed."""
    cp = ord(char)
    category = unicodedata.category(char)
    if category == "Cc" and char not in _ALLOWED_CONTROLS:
        return "control character"
    if category in ("Cs", "Co", "Cn") or (cp & 0xFFFE) == 0xFFFE or 0xFDD0 <= cp <= 0xFDEF:
        return "private-use, unassigned or non-character code point"
    if _in(_SEQUENCE_GLUE, cp):
        return "variation selector or emoji sequence character"
    if 0x1F000 <= cp <= 0x1FAFF or _in(_EMOJI_PRESENTATION_BMP, cp):
        return "emoji"
    return None


def check_prompt(prompt: str, limit: int = MAX_PROMPT_CHARS) -> None:
    """Refuse a prompt over ``limit`` characters (1004) or one with refused characters (2009)."""
    if len(prompt) > limit:
        raise InvalidParameter(
            f"prompt is {len(prompt)} characters long; the limit is {limit}.",
            f"Shorten the prompt to at most {limit} characters.",
        )
    check_characters(prompt, "prompt")


def check_characters(text: str, name: str) -> None:
    """Refuse ``text`` (the field ``name``) holding a character of the 2009 rule."""
    for index, char in enumerate(text):
        reason = refused_reason(char)
        if reason is not None:
            raise InvalidPromptCharacters(
                f"{name} contains a character that is not allowed at position {index}: "
                f"U+{ord(char):04X} ({reason}).",
                "Remove emoji and special Unicode characters (variation selectors, private-use "
                f"and control characters) from the {name}.",
            )


def referenced_images(prompt: str) -> list[int]:
    """The image numbers named by ``image[N]`` in ``prompt``, in order of appearance."""
    return [int(match) for match in IMAGE_REFERENCE.findall(prompt)]


def check_image_references(prompt: str, image_count: int) -> None:
    """Every ``image[N]`` must name one of the ``image_count`` images (1-based)."""
    for number in referenced_images(prompt):
        if not 1 <= number <= image_count:
            available = (
                f"image[1]..image[{image_count}]" if image_count else "no images (none were given)"
            )
            raise InvalidParameter(
                f"prompt refers to image[{number}], but the request has {image_count} "
                "image(s) (your files first, then the template's).",
                f"Refer only to {available}.",
            )


T_POSE_INSTRUCTION = (
    "Show the character in a neutral T-pose: standing upright, facing the viewer, arms "
    "stretched out horizontally to the sides, legs straight and slightly apart, keeping the "
    "character's proportions, outfit, colors and main characteristics unchanged."
)
SKETCH_TO_RENDER_INSTRUCTION = (
    "Turn the sketch into a finished, fully rendered image: clean shapes, realistic materials, "
    "consistent lighting and color, keeping the sketch's composition and design."
)


def compose_prompt(
    template_prompt: str | None, user_prompt: str, *, t_pose: bool, sketch_to_render: bool
) -> str:
    """The prompt the backend receives, in this documented order:

    1. the template's prompt (the seed: it is prepended),
    2. the user's prompt,
    3. the T-pose instruction when ``t_pose``,
    4. the sketch-to-render instruction when ``sketch_to_render``.

    Parts are separated by a blank line; empty parts are left out.
    """
    parts = [
        template_prompt or "",
        user_prompt.strip(),
        T_POSE_INSTRUCTION if t_pose else "",
        SKETCH_TO_RENDER_INSTRUCTION if sketch_to_render else "",
    ]
    return "\n\n".join(part for part in parts if part)
