"""Adding a model is one catalog entry: ``CATALOG.with_model`` in ``Settings.catalog`` makes a
server that lists, prices, validates and serves a model the code does not list, through the
placeholder and through a remote adapter (OpenAI, against its loopback wire fake), the entry's
provider id reaching the provider. The catalog's own invariants are checked here too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apptools import Api, png, running_api, settings_for
from easel.backends import registry
from easel.backends.autoconfig import HOSTED, auto_tables
from easel.backends.fallback import Router
from easel.config import ConfigError, Settings, load_settings
from easel.domain import v3
from easel.domain.catalog import CATALOG, PNG_JPEG, ImageRule, ModelSpec
from easel.domain.errors import InvalidParameter, ModelVersionInvalid
from easel.domain.parsing import TASK_TYPE, parse_generate_image
from fake_providers import OPENAI_IMAGE, OPENAI_KEY, FakeOpenAI
from loopback import serve_app

ACME = ModelSpec(
    "acme_image_1",
    7,
    "Acme Image 1",
    max_files=2,
    formats=PNG_JPEG,
    v3_names=("acme",),
    provider_models={"openai": "acme-image-1"},
)
WITH_ACME = CATALOG.with_model(ACME)
KEY_ENV = "EASEL_TEST_OPENAI_KEY"


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def openai_url(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    with serve_app(fake.app()) as url:
        yield url + "/v1"


def acme_settings(database_url: str, backend: dict[str, Any]) -> Settings:
    """A server whose catalog has ACME, served by ``backend`` alone."""
    return settings_for(
        database_url,
        catalog=WITH_ACME,
        backends={"new": backend},
        models={ACME.version: {"backends": ["new"]}},
    )


async def generated_image(api: Api, task: dict[str, Any]) -> bytes:
    assert task["status"] == "success", task
    response = await api.client.get(task["output"]["generated_image"])
    assert response.status_code == 200
    return response.content


@pytest.mark.parametrize("kind", ["placeholder", "openai"])
async def test_a_model_added_as_one_entry_is_listed_priced_and_served(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    backend: dict[str, Any] = {"kind": kind}
    if kind == "openai":
        backend |= {"base_url": request.getfixturevalue("openai_url"), "api_key_env": KEY_ENV}
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}"
    async with running_api(acme_settings(database_url, backend)) as api:
        listing = (await api.client.get("/v2/openapi/models")).json()["data"]
        [row] = [row for row in listing["models"] if row["model_version"] == ACME.version]
        assert (row["credits"], row["images"], row["max_files"]) == (7, "accepts", 2)
        assert (row["accepts_webp"], row["served"], row["description"]) == (
            False,
            True,
            "Acme Image 1",
        )
        assert [(b["name"], b["kind"]) for b in row["backends"]] == [("new", kind)]

        text = await api.submit(prompt="a brass teapot", model_version=ACME.version)
        assert text.status_code == 200, text.text
        by_v2 = await api.wait(text.json()["data"]["task_id"])
        assert by_v2["consumed_credit"] == 7
        assert await api.balance() == {"balance": 93, "frozen": 0}

        token = await api.client.post("/v3/files", files={"file": ("r.png", png(), "image/png")})
        body = {
            "prompt": "the teapot in image 1",
            "model": "acme",
            "input": token.json()["data"]["file_token"],
        }
        edit = await api.client.post("/v3/generation/image-to-image", json=body)
        assert edit.status_code == 200, edit.text
        by_v3 = await api.wait(edit.json()["data"]["task_id"])
        assert by_v3["input"]["model_version"] == ACME.version

        images = [await generated_image(api, task) for task in (by_v2, by_v3)]
    if kind == "openai":
        fake: FakeOpenAI = request.getfixturevalue("fake")
        assert images == [OPENAI_IMAGE, OPENAI_IMAGE]
        generate, edit_request = fake.seen
        assert generate.path == "/v1/images/generations"
        assert generate.json is not None and generate.json["model"] == "acme-image-1"
        assert edit_request.path == "/v1/images/edits"
        assert edit_request.fields["model"] == "acme-image-1"
        assert len(edit_request.files) == 1
    else:
        assert all(image.startswith(b"\x89PNG") for image in images)


def test_the_entry_carries_its_request_rules() -> None:
    """Its file limit and formats hold; a server without the entry refuses its names."""
    files = [{"url": f"https://example.com/{n}.png"} for n in range(3)]
    body = {"type": TASK_TYPE, "prompt": "x", "model_version": ACME.version}
    assert parse_generate_image(body, WITH_ACME).model is ACME
    with pytest.raises(InvalidParameter, match="acme_image_1 takes at most 2 images"):
        parse_generate_image({**body, "files": files}, WITH_ACME)
    assert not ACME.accepts_webp
    assert v3.model_version("acme", WITH_ACME) == ACME.version
    with pytest.raises(ModelVersionInvalid):
        parse_generate_image(body)
    with pytest.raises(ModelVersionInvalid):
        v3.model_version("acme")


def test_autoconfig_enables_the_entry_for_the_kinds_it_names() -> None:
    tables = auto_tables({"OPENAI_API_KEY": "k"}, local_gpu=False, models=WITH_ACME)
    assert tables["models"][ACME.version] == {"backends": ["openai"]}
    assert ACME.version not in auto_tables({"GEMINI_API_KEY": "k"}, False, WITH_ACME)["models"]


async def test_each_leg_gets_the_configured_provider_id_else_the_catalogs_for_its_kind() -> None:
    settings = Settings.model_validate(
        {
            "catalog": WITH_ACME,
            "backends": {"oa": {"kind": "openai"}, "dry": {"kind": "placeholder"}},
            "models": {
                ACME.version: {"backends": ["oa", "dry"]},
                "gpt_4o": {"backends": ["oa"], "provider_model": {"oa": "gpt-image-1-mini"}},
                "midjourney": {"backends": ["dry"]},
            },
        }
    )
    router = Router.from_settings(settings)
    try:
        ids = {v: [leg.provider_model for leg in router.chain(v)] for v in settings.models}
        assert ids == {
            ACME.version: ["acme-image-1", None],
            "gpt_4o": ["gpt-image-1-mini"],
            "midjourney": [None],
        }
        assert router.catalog is WITH_ACME
    finally:
        await router.close()


def test_an_option_the_entry_does_not_take_is_refused() -> None:
    plain = CATALOG.with_model(ModelSpec("plain", 1, "Plain", options=frozenset({"template"})))
    body = {"type": TASK_TYPE, "prompt": "x", "model_version": "plain"}
    assert parse_generate_image({**body, "t_pose": False}, plain).model.version == "plain"
    with pytest.raises(InvalidParameter, match="plain does not take sketch_to_render, t_pose"):
        parse_generate_image({**body, "t_pose": True, "sketch_to_render": True}, plain)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(ModelSpec("gpt_4o", 1, "again"), id="a-model_version-twice"),
        pytest.param(ModelSpec("x", 1, "X", v3_names=("banana",)), id="a-v3-name-twice"),
        pytest.param(ModelSpec("x", 1, "X", v3_names=("midjourney",)), id="a-v3-name-of-a-version"),
    ],
)
def test_a_name_given_to_two_entries_is_refused(spec: ModelSpec) -> None:
    with pytest.raises(ValueError, match="names given to two catalog entries"):
        CATALOG.with_model(spec)


def test_every_kind_the_catalog_names_is_a_registered_backend_kind() -> None:
    named = {kind for spec in CATALOG.values() for kind in spec.provider_models}
    assert named <= set(registry.KINDS)
    assert set(HOSTED) <= named
    assert CATALOG[CATALOG.default].images is ImageRule.ACCEPTS


def test_the_config_file_cannot_set_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "easel.toml"
    path.write_text('catalog = "mine"\n')
    with pytest.raises(ConfigError, match="unknown key 'catalog'"):
        load_settings(path, env={})
