"""Current model names on both protocols, prices from config, and ``[aliases]``.

The new names (``seedream_v4``, ``seedream_v5``, ``chat_image_2.5_flare``,
``chat_image_2.5_sunburst``, ``z_image``) are model_versions on v2 and ``model`` names on v3,
served here through the placeholder backend; the old ``chat_image_1``/``chat_image_1.5`` name
their entries until the configuration remaps them. A bad ``[aliases]`` table stops the
server before it starts, with a message naming the alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from apptools import ALL_MODELS, Api, State, account_state, png, running_api, settings_for
from easel.cli import app
from easel.config import ConfigError, load_settings

NEW = {  # name: (credits, takes images)
    "seedream_v4": (5, False),
    "seedream_v5": (5, True),
    "chat_image_2.5_flare": (10, True),
    "chat_image_2.5_sunburst": (10, True),
    "z_image": (5, False),
}
PROMPT = "a kite over the dunes"


def database(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}"


async def state(api: Api) -> State:
    caller = await api.runtime.store.accounts.authenticate(api.key)
    return await account_state(api.runtime, caller.account_id)


async def v3_task(api: Api, route: str, **body: Any) -> dict[str, Any]:
    response = await api.client.post(f"/v3/generation/{route}", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    task = await api.wait(response.json()["data"]["task_id"])
    assert task["status"] == "success", task
    v3: dict[str, Any] = (await api.client.get(f"/v3/tasks/{task['task_id']}")).json()["data"]
    return v3


@pytest.mark.parametrize("name", NEW)
async def test_each_new_name_is_served_on_v2_and_v3_at_its_price(name: str, tmp_path: Path) -> None:
    credits, takes_images = NEW[name]
    async with running_api(settings_for(database(tmp_path)), credits=100) as api:
        response = await api.submit(prompt=PROMPT, model_version=name)
        assert response.status_code == 200, response.text
        v2 = await api.wait(response.json()["data"]["task_id"])
        assert (v2["status"], v2["input"]["model_version"]) == ("success", name)
        assert v2["consumed_credit"] == credits

        v3 = await v3_task(api, "text-to-image", model=name)
        assert (v3["model"], v3["credits_consumed"]) == (name, float(credits))
        if takes_images:
            token = await api.upload(png())
            edited = await v3_task(api, "image-to-image", model=name, input=token)
            assert (edited["type"], edited["model"]) == ("image_to_image", name)
        assert (await api.balance())["balance"] == 100 - credits * (3 if takes_images else 2)


async def test_text_only_names_refuse_references_at_no_cost(tmp_path: Path) -> None:
    async with running_api(settings_for(database(tmp_path))) as api:
        token = await api.upload(png())
        before = await state(api)
        for name in ("seedream_v4", "z_image"):
            response = await api.client.post(
                "/v3/generation/image-to-image",
                json={"prompt": PROMPT, "model": name, "input": token},
            )
            assert response.status_code == 400
            assert response.json()["code"] == 1004
            assert "cannot use image input" in response.json()["message"]
        assert await state(api) == before


async def test_seedream_v5_takes_four_references_and_refuses_a_fifth(tmp_path: Path) -> None:
    async with running_api(settings_for(database(tmp_path))) as api:
        tokens = [await api.upload(png(color=c)) for c in ("red", "green", "blue", "gray", "pink")]
        four = await v3_task(api, "image-to-image", model="seedream_v5", inputs=tokens[:4])
        assert four["status"] == "success"
        response = await api.client.post(
            "/v3/generation/image-to-image",
            json={"prompt": PROMPT, "model": "seedream_v5", "inputs": tokens},
        )
        assert response.status_code == 400
        assert "at most 4 images" in response.json()["message"]


async def test_the_old_chat_image_names_run_their_models_until_remapped(tmp_path: Path) -> None:
    async with running_api(settings_for(database(tmp_path))) as api:
        assert (await v3_task(api, "text-to-image", model="chat_image_1"))["model"] == "gpt_4o"
        old = await v3_task(api, "text-to-image", model="chat_image_1.5")
        assert old["model"] == "gpt_image_1.5"


async def test_aliases_remap_retired_names_on_both_protocols(tmp_path: Path) -> None:
    aliases = {"chat_image_1": "chat_image_2", "gpt_image_1.5": "chat_image_2.5_flare"}
    models = {m: {"backends": ["dry"]} for m in ALL_MODELS if m != "gpt_image_1.5"}
    settings = settings_for(database(tmp_path), aliases=aliases, models=models)
    async with running_api(settings, credits=100) as api:
        by_v3_name = await v3_task(api, "text-to-image", model="chat_image_1")
        assert (by_v3_name["model"], by_v3_name["credits_consumed"]) == ("gpt_image_2", 10.0)
        # an aliased model_version takes every name of its entry with it
        assert (await v3_task(api, "text-to-image", model="chat_image_1.5"))["model"] == (
            "chat_image_2.5_flare"
        )
        response = await api.submit(prompt=PROMPT, model_version="gpt_image_1.5")
        v2 = await api.wait(response.json()["data"]["task_id"])
        assert v2["input"]["model_version"] == "chat_image_2.5_flare"
        # gpt_4o itself is not aliased: only the name chat_image_1 moved
        response = await api.submit(prompt=PROMPT, model_version="gpt_4o")
        assert (await api.wait(response.json()["data"]["task_id"]))["input"]["model_version"] == (
            "gpt_4o"
        )

        listing = (await api.client.get("/v2/openapi/models")).json()["data"]
        assert listing["aliases"] == {
            "chat_image_1": "gpt_image_2",
            "gpt_image_1.5": "chat_image_2.5_flare",
        }
        rows = {row["model_version"]: row for row in listing["models"]}
        assert "gpt_image_1.5" not in rows
        assert rows["gpt_4o"]["v3_names"] == ["chat_image_1"]  # the name still listed; it moved
        response = await api.client.post(
            "/v3/generation/text-to-image", json={"prompt": PROMPT, "model": "nope"}
        )
        assert "chat_image_1" in response.json()["suggestion"]


async def test_prices_set_in_config_are_listed_and_charged(tmp_path: Path) -> None:
    models = {"seedream_v5": {"backends": ["dry"], "credits": 7}, "z_image": {"backends": ["dry"]}}
    async with running_api(settings_for(database(tmp_path), models=models), credits=50) as api:
        listing = (await api.client.get("/v2/openapi/models")).json()["data"]["models"]
        rows = {row["model_version"]: row for row in listing}
        assert (rows["seedream_v5"]["credits"], rows["z_image"]["credits"]) == (7, 5)
        response = await api.submit(prompt=PROMPT, model_version="seedream_v5")
        task = await api.wait(response.json()["data"]["task_id"])
        assert task["consumed_credit"] == 7
        assert (await api.balance())["balance"] == 43


# --- startup refuses a bad [aliases] table ----------------------------------------------------

DRY = '[backends.dry]\nkind = "placeholder"\n'
ROUTED = '[models."gpt_image_2"]\nbackends = ["dry"]\n'


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[aliases]\nchat_image_1 = "gpt_image_9"\n', "[aliases] chat_image_1 = 'gpt_image_9': "
         "'gpt_image_9' is not a model of this server; known: flux.1_kontext_pro"),
        ('[aliases]\na = "b"\nb = "gpt_image_2"\n', "[aliases] a = 'b': 'b' is an alias itself; "
         "name the model it stands for ('gpt_image_2') directly"),
        ('[aliases]\nchat_image_1 = "gpt_4o"\n', "a name cannot be an alias of its own model"),
        ('[aliases]\n"chat image" = "gpt_image_2"\n', "an alias is a name of letters, digits"),
        ("[aliases]\nchat_image_1 = 2\n", "aliases.chat_image_1: Input should be a valid string"),
        ('[aliases]\n"flux.1_kontext_pro" = "midjourney"\n', "the default model 'midjourney' "
         "must be an entry that takes images"),
        (ROUTED + '[aliases]\ngpt_image_2 = "chat_image_2.5_flare"\n',
         "'gpt_image_2' is an alias of 'chat_image_2.5_flare' ([aliases]): its requests run "
         "on chat_image_2.5_flare's backends. Configure [models.\"chat_image_2.5_flare\"] instead"),
        ('[models."gpt_image_2"]\nbackends = ["dry"]\ncredits = 0\n', "credits: Input should be "
         "greater than 0"),
    ],
    ids=["unknown", "chain", "itself", "bad-name", "not-a-string", "default", "routed", "price"],
)  # fmt: skip
def test_a_bad_alias_or_price_is_refused_naming_it(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(DRY + toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert message in str(caught.value)


def test_the_server_does_not_start_with_a_bad_alias(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(DRY + ROUTED + '[aliases]\nchat_image_1 = "chat_image_3"\n')
    result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert "'chat_image_3' is not a model of this server" in result.output


def test_environment_autoconfig_leaves_an_aliased_model_to_its_target(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[aliases]\ngpt_4o = "chat_image_2"\n"gpt_image_1.5" = "gpt_image_2"\n')
    settings = load_settings(path, env={"OPENAI_API_KEY": "sk-x", "ARK_API_KEY": "ark-x"})
    assert "gpt_4o" not in settings.models and "gpt_image_1.5" not in settings.models
    assert settings.models["gpt_image_2"].backends == ["openai"]
    assert settings.models["seedream_v5"].backends == ["modelark"]
    assert settings.catalog.lookup("gpt_4o").version == "gpt_image_2"


def test_aliases_live_in_the_file_only(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(DRY + ROUTED + '[aliases]\nchat_image_1 = "chat_image_2"\n')
    settings = load_settings(path, env={"EASEL_ALIASES": "chat_image_1=gpt_4o"})
    assert settings.aliases == {"chat_image_1": "chat_image_2"}
    assert settings.catalog.lookup("chat_image_1").version == "gpt_image_2"
