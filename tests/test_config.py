"""Configuration: defaults, TOML, EASEL_* overrides and errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from easel.backends.autoconfig import auto_tables
from easel.config import ConfigError, load_settings


def test_no_file_gives_the_embedded_defaults() -> None:
    settings = load_settings(None, env={})
    assert settings.database_url == "sqlite+aiosqlite:///easel-data/easel.db"
    assert settings.storage_url == "file://easel-data/objects"
    assert settings.allow_outbound_cidrs == []
    assert settings.max_unfinished_tasks == 10
    assert settings.backends == {}


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('storage_url = "memory://"\nlease_s = 5\n')
    settings = load_settings(
        path,
        env={
            "EASEL_LEASE_S": "7.5",
            "EASEL_ALLOW_OUTBOUND_CIDRS": "10.1.0.0/16, 127.0.0.0/8",
            "EASEL_DATABASE_URL": "postgresql+asyncpg://db/easel",
        },
    )
    assert settings.storage_url == "memory://"
    assert settings.lease_s == 7.5
    assert settings.allow_outbound_cidrs == ["10.1.0.0/16", "127.0.0.0/8"]
    assert settings.database_url == "postgresql+asyncpg://db/easel"


def test_easel_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("max_attempts = 9\n")
    assert load_settings(None, env={"EASEL_CONFIG": str(path)}).max_attempts == 9


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("colour = 1\n", "unknown key 'colour'"),
        (
            '[models."flux.1_dev"]\nbackends = ["x"]\nretries = 2\n',
            "unknown key 'models.flux.1_dev.retries'",
        ),
        ('[models."flux.2"]\nbackends = ["x"]\n', "unknown model_version 'flux.2'"),
        ('[models."flux.1_dev"]\nbackends = ["ghost"]\n', "[backends.ghost]"),
        ('allow_outbound_cidrs = ["10.0.0.0/33"]\n', "not a CIDR network"),
        ("lease_s = -1\n", "lease_s"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_configuration_is_an_error_that_names_the_problem(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert message in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_without_backends_the_provider_keys_in_the_environment_enable_backends() -> None:
    settings = load_settings(None, env={"OPENAI_API_KEY": "sk-x", "MJ_PROXY_URL": "http://mj"})
    assert {name: table.kind for name, table in settings.backends.items()} == {
        "openai": "openai",
        "midjourney-proxy": "midjourney-proxy",
    }
    assert settings.models["gpt_image_2"].backends == ["openai"]
    assert settings.models["midjourney"].backends == ["midjourney-proxy"]
    assert "flux.1_dev" not in settings.models


def test_a_local_gpu_puts_the_local_pipelines_before_hosted_flux() -> None:
    tables = auto_tables({"BFL_API_KEY": "k"}, local_gpu=True)
    assert tables["models"]["flux.1_dev"] == {"backends": ["local-flux", "bfl"]}
    assert tables["models"]["flux.1_kontext_pro"] == {"backends": ["local-kontext", "bfl"]}
    assert tables["backends"]["local-kontext"]["pipeline"] == "flux-kontext"


def test_a_file_that_names_backends_turns_auto_configuration_off(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[backends.dry]\nkind = "placeholder"\n')
    settings = load_settings(path, env={"OPENAI_API_KEY": "sk-x"})
    assert list(settings.backends) == ["dry"]
    assert settings.models == {}
