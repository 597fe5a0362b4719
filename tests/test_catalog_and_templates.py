"""Specification of the model catalog (prices, image rules) and the eight templates."""

from __future__ import annotations

import pytest

from easel.domain import templates
from easel.domain.catalog import CATALOG, DEFAULT_MODEL, ImageRule
from easel.domain.errors import InvalidParameter, ModelVersionInvalid
from easel.domain.images import inspect_image
from easel.domain.prompts import check_prompt

# --- models -----------------------------------------------------------------------------------

#: The seed: "5 credits when model_version is flux.1_kontext_pro, flux.1_dev, gpt_4o, or
#: gemini_2.5_flash_image_preview, and 10 credits when it is gpt_image_1.5, gpt_image_2,
#: midjourney, gemini_3_pro_image_preview, or gemini_3.1_flash_image_preview."
PRICES = {
    "flux.1_kontext_pro": 5,
    "flux.1_dev": 5,
    "gpt_4o": 5,
    "gemini_2.5_flash_image_preview": 5,
    "gpt_image_1.5": 10,
    "gpt_image_2": 10,
    "midjourney": 10,
    "gemini_3_pro_image_preview": 10,
    "gemini_3.1_flash_image_preview": 10,
}


def test_the_catalog_has_the_nine_model_versions_of_the_seed() -> None:
    assert set(PRICES) <= set(CATALOG)
    assert all(spec.version == version for version, spec in CATALOG.items())


@pytest.mark.parametrize(("version", "credits"), PRICES.items())
def test_each_model_version_costs_the_seed_price(version: str, credits: int) -> None:
    assert CATALOG.lookup(version).credits == credits


def test_the_default_model_is_flux_1_kontext_pro() -> None:
    assert DEFAULT_MODEL == "flux.1_kontext_pro"
    assert CATALOG.lookup(DEFAULT_MODEL).images is ImageRule.ACCEPTS


@pytest.mark.parametrize(
    ("version", "max_files"),
    [
        pytest.param("flux.1_kontext_pro", 4, id="kontext-4-per-seed"),
        pytest.param("gpt_4o", 10, id="gpt_4o-10-per-seed"),
        pytest.param("gpt_image_1.5", 10, id="gpt_image_1.5-10-seed-silent"),
        pytest.param("gpt_image_2", 10, id="gpt_image_2-10-per-seed"),
        pytest.param("gemini_2.5_flash_image_preview", 10, id="gemini_2.5-10-per-seed"),
        pytest.param("gemini_3_pro_image_preview", 10, id="gemini_3_pro-10-seed-silent"),
        pytest.param("gemini_3.1_flash_image_preview", 10, id="gemini_3.1-10-seed-silent"),
    ],
)
def test_models_that_accept_images_have_their_file_limit(version: str, max_files: int) -> None:
    spec = CATALOG.lookup(version)
    assert spec.images is ImageRule.ACCEPTS
    assert spec.max_files == max_files


@pytest.mark.parametrize(
    ("version", "rule"),
    [
        pytest.param("flux.1_dev", ImageRule.UPGRADE, id="flux.1_dev-upgrades-to-default"),
        pytest.param("midjourney", ImageRule.REFUSES, id="midjourney-refuses-images"),
    ],
)
def test_text_only_models_take_no_files(version: str, rule: ImageRule) -> None:
    spec = CATALOG.lookup(version)
    assert spec.images is rule
    assert spec.max_files == 0


def test_only_flux_1_kontext_pro_refuses_webp() -> None:
    assert {v for v in PRICES if not CATALOG[v].accepts_webp} == {"flux.1_kontext_pro"}


@pytest.mark.parametrize(
    "version",
    ["flux.2", "", "FLUX.1_KONTEXT_PRO", "gpt-4o", "gpt_4o ", "dall-e-3", "gemini"],
)
def test_an_unknown_model_version_is_refused_with_2017_suggesting_the_valid_ones(
    version: str,
) -> None:
    with pytest.raises(ModelVersionInvalid) as caught:
        CATALOG.lookup(version)
    assert caught.value.code == 2017
    assert caught.value.status == 400
    assert repr(version) in caught.value.message
    for valid in PRICES:
        assert valid in caught.value.suggestion


# --- templates --------------------------------------------------------------------------------

#: The seed's template table: slug → (description, "Best with" hint).
SEED_TEMPLATES = {
    "asset_extraction": (
        "Extract scene elements into separate assets for 3D generation.",
        "Nano Banana 2, Image Input, ar 16:9, Smart Mesh",
    ),
    "character_completion": (
        "Complete missing parts to restore a full character.",
        "Nano Banana, Image Input",
    ),
    "t_pose": (
        "Convert character to standard T-pose for rigging and animation.",
        "Nano Banana, ar 1:1, Smart Mesh",
    ),
    "head_extraction": (
        "Extract the head to enhance facial detail for high-fidelity 3D generation.",
        "Nano Banana, ar 1:1, Image Input",
    ),
    "3d_enhance": (
        "Enhance 3D structure and detail (2D → 3D).",
        "Nano Banana, Image Input",
    ),
    "variants": (
        "Generate multiple consistent variations based on the original input.",
        "Nano Banana 2, Text/Image Input",
    ),
    "print_clay": (
        "Convert to high-contrast clay for 3D printing.",
        "Nano Banana 2, Image Input, HD Model",
    ),
    "figure": (
        "Convert your photo into a stylized figure character.",
        "Nano Banana 2, Image Input, HD Model",
    ),
}


def test_there_are_exactly_the_eight_templates_of_the_seed() -> None:
    assert set(templates.TEMPLATES) == set(SEED_TEMPLATES)


@pytest.mark.parametrize("slug", SEED_TEMPLATES)
def test_each_template_has_the_seed_description_and_a_non_empty_allowed_prompt(slug: str) -> None:
    template = templates.lookup(slug)
    description, best_with = SEED_TEMPLATES[slug]
    assert template.slug == slug
    assert template.description == description
    assert template.best_with == best_with
    assert template.prompt.strip()
    check_prompt(template.prompt)  # a template prompt obeys the same rules as a user's


@pytest.mark.parametrize(
    ("alias", "slug"),
    [
        ("3d-enhance", "3d_enhance"),
        ("t-pose", "t_pose"),
        ("asset-extraction", "asset_extraction"),
        ("character-completion", "character_completion"),
        ("head-extraction", "head_extraction"),
        ("print-clay", "print_clay"),
    ],
)
def test_a_hyphenated_slug_resolves_to_its_underscored_template(alias: str, slug: str) -> None:
    assert templates.lookup(alias) is templates.TEMPLATES[slug]


@pytest.mark.parametrize("slug", ["cartoon", "T_POSE", "tpose", "3d enhance", "figures", " "])
def test_an_unknown_template_is_refused_with_1004_suggesting_the_valid_ones(slug: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        templates.lookup(slug)
    assert caught.value.code == 1004
    assert repr(slug) in caught.value.message
    for valid in SEED_TEMPLATES:
        assert valid in caught.value.suggestion


def test_only_the_t_pose_template_carries_a_reference_image() -> None:
    with_images = {slug: len(t.images) for slug, t in templates.TEMPLATES.items() if t.images}
    assert with_images == {"t_pose": 1}


@pytest.mark.parametrize("slug", SEED_TEMPLATES)
def test_template_images_load_as_png_bytes(slug: str) -> None:
    images = templates.lookup(slug).image_bytes()
    assert len(images) == len(templates.lookup(slug).images)
    for data in images:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert inspect_image(data, what=f"template {slug} image").format == "png"
