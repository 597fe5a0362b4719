"""Draw the packaged template reference images (run once; the PNGs are committed)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "src" / "easel" / "template_images"


def t_pose_reference() -> Image.Image:
    """A grey mannequin silhouette in a T-pose on white, 512×512."""
    image = Image.new("RGB", (512, 512), "white")
    draw = ImageDraw.Draw(image)
    grey = (110, 110, 110)
    draw.ellipse((226, 60, 286, 124), fill=grey)  # head
    draw.rectangle((246, 120, 266, 140), fill=grey)  # neck
    draw.rounded_rectangle((211, 140, 301, 300), radius=18, fill=grey)  # torso
    draw.rounded_rectangle((66, 148, 446, 176), radius=12, fill=grey)  # arms
    draw.rounded_rectangle((216, 290, 250, 470), radius=14, fill=grey)  # left leg
    draw.rounded_rectangle((262, 290, 296, 470), radius=14, fill=grey)  # right leg
    return image


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    t_pose_reference().save(OUT / "t_pose_reference.png", optimize=True)
