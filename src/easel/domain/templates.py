"""The template catalog: eight preset style packages for ``generate_image``.

Each template is data: the seed's title and description, the prompt Easel prepends to the
user's, and optional reference images (packaged PNGs, appended after the user's images and
counted against the model's file limit) and, where the seed names one ("ar 16:9"), the aspect
ratio the image gets unless the request asks for another shape. Slugs accept ``-`` for ``_``
(``3d-enhance``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from easel.domain.errors import InvalidParameter


@dataclass(frozen=True, slots=True)
class Template:
    slug: str
    description: str
    best_with: str
    prompt: str
    images: tuple[str, ...] = ()  # file names in easel/domain/template_images/
    aspect_ratio: str | None = None  # the seed's "ar …": the default where none is asked

    def image_bytes(self) -> list[bytes]:
        folder = resources.files("easel.domain") / "template_images"
        return [(folder / name).read_bytes() for name in self.images]


TEMPLATES: dict[str, Template] = {
    t.slug: t
    for t in (
        Template(
            "asset_extraction",
            "Extract scene elements into separate assets for 3D generation.",
            "Nano Banana 2, Image Input, ar 16:9, Smart Mesh",
            "Extract the main objects of the scene as separate, complete assets laid out side "
            "by side on a plain white background, each fully visible, unoccluded and evenly "
            "lit, with no shadows or overlaps, ready for 3D generation.",
            aspect_ratio="16:9",
        ),
        Template(
            "character_completion",
            "Complete missing parts to restore a full character.",
            "Nano Banana, Image Input",
            "Complete the character: restore every missing or cropped body part, clothing and "
            "accessory so the whole character is visible from head to toe, consistent with the "
            "visible style, on a plain white background.",
        ),
        Template(
            "t_pose",
            "Convert character to standard T-pose for rigging and animation.",
            "Nano Banana, ar 1:1, Smart Mesh",
            "Redraw the character in a standard T-pose for rigging, following the pose of the "
            "T-pose reference image: full body, front view, arms horizontal, legs straight, "
            "on a plain white background.",
            images=("t_pose_reference.png",),
            aspect_ratio="1:1",
        ),
        Template(
            "head_extraction",
            "Extract the head to enhance facial detail for high-fidelity 3D generation.",
            "Nano Banana, ar 1:1, Image Input",
            "Isolate the character's head and hair, centred and front-facing, filling most of "
            "a square frame with sharp facial detail, neutral expression, even lighting, on a "
            "plain white background.",
            aspect_ratio="1:1",
        ),
        Template(
            "3d_enhance",
            "Enhance 3D structure and detail (2D → 3D).",
            "Nano Banana, Image Input",
            "Re-render the subject as a detailed 3D model render: clear volumes and depth, "
            "consistent soft studio lighting, realistic materials, full subject in frame, "
            "plain background.",
        ),
        Template(
            "variants",
            "Generate multiple consistent variations based on the original input.",
            "Nano Banana 2, Text/Image Input",
            "Create several consistent design variations of the subject side by side, keeping "
            "its identity and style while varying details such as colors, outfits or props.",
        ),
        Template(
            "print_clay",
            "Convert to high-contrast clay for 3D printing.",
            "Nano Banana 2, Image Input, HD Model",
            "Render the subject as a single-color matte clay sculpture with high-contrast "
            "lighting that shows every form clearly, solid and printable, no thin floating "
            "parts, on a plain background.",
        ),
        Template(
            "figure",
            "Convert your photo into a stylized figure character.",
            "Nano Banana 2, Image Input, HD Model",
            "Turn the person into a stylized collectible figure: full body on a round base, "
            "slightly enlarged head, clean painted surfaces, keeping their hair, outfit and "
            "recognizable features, studio lighting.",
        ),
    )
}


def lookup(slug: str) -> Template:
    """The template named ``slug`` (``-`` accepted for ``_``), or 1004 naming the valid ones."""
    template = TEMPLATES.get(slug.replace("-", "_"))
    if template is None:
        raise InvalidParameter(
            f"template {slug!r} does not exist.",
            f"Use one of: {', '.join(TEMPLATES)}.",
        )
    return template
