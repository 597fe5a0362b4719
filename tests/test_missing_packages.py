"""A configured backend whose package is not installed is never ready: it names the install
command, its models are not served, and a task for them is refused at submit (no credits
held) instead of being accepted and failed with "package not installed".

The end-to-end test runs a real ``easel serve`` whose interpreter cannot import ``openai``
(a ``sitecustomize`` on its path marks the module absent, as an install without it is); the
others make the same check in-process for every remote kind's package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from easel.backends.fallback import Router
from easel.backends.registry import create_backend
from easel.config import BackendTable, Settings
from processes import create_key, easel_process, free_port, wait_healthy, write_config

BLOCK_OPENAI = "import sys\nsys.modules['openai'] = None  # as if it were not installed\n"

OPENAI_BACKEND = """
[backends.gpt]
kind = "openai"
api_key_env = "EASEL_TEST_OPENAI_KEY"
[models."gpt_4o"]
backends = ["gpt"]
"""

# kind -> (its options, the module it imports, the distribution named in the message)
KINDS = {
    "openai": ({"api_key_env": "EASEL_TEST_KEY"}, "openai", "openai"),
    "gemini": ({"api_key_env": "EASEL_TEST_KEY"}, "google.genai", "google-genai"),
    "bfl": ({"api_key_env": "EASEL_TEST_KEY"}, "stamina", "stamina"),
    "midjourney-proxy": ({"base_url": "http://127.0.0.1:9"}, "stamina", "stamina"),
    "modelark": ({"api_key_env": "EASEL_TEST_KEY"}, "stamina", "stamina"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_backend_without_its_package_is_not_ready_and_names_the_install_command(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options, module, distribution = KINDS[kind]
    monkeypatch.setenv("EASEL_TEST_KEY", "sk-test")
    ready = create_backend("b", BackendTable.model_validate({"kind": kind, **options}))
    assert ready.unavailable_reason() is None  # installed here: the key is all it needs

    monkeypatch.setitem(sys.modules, module, None)
    backend = create_backend("b", BackendTable.model_validate({"kind": kind, **options}))
    reason = backend.unavailable_reason()
    assert reason is not None
    assert f"the {distribution!r} package is not installed; run: pip install '" in reason
    assert f"pip install '{distribution}>=" in reason  # the range easel's metadata asks for


def test_a_model_whose_only_backend_lacks_its_package_is_not_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EASEL_TEST_KEY", "sk-test")
    monkeypatch.setitem(sys.modules, "google.genai", None)
    settings = Settings.model_validate(
        {
            "backends": {
                "gem": {"kind": "gemini", "api_key_env": "EASEL_TEST_KEY"},
                "gpt": {"kind": "openai", "api_key_env": "EASEL_TEST_KEY"},
            },
            "models": {
                "gemini_2.5_flash_image_preview": {"backends": ["gem"]},
                "gpt_4o": {"backends": ["gem", "gpt"]},  # falls back to an installed one
            },
        }
    )
    router = Router.from_settings(settings)
    assert router.served() == ["gpt_4o"]
    assert router.ready_backends("gpt_4o") == ["gpt"]
    assert any(
        "gem (gemini, not ready: the 'google-genai' package" in line for line in router.describe()
    )


@pytest.mark.e2e
def test_easel_serve_without_the_openai_package_refuses_its_models(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_OPENAI)
    config = write_config(tmp_path, extra="", delay_s=0.1)
    config.write_text(config.read_text() + OPENAI_BACKEND)
    key = create_key(config, credits=100)
    port, log = free_port(), tmp_path / "serve.log"
    env = {"PYTHONPATH": str(site), "EASEL_TEST_OPENAI_KEY": "sk-test"}
    args = ("serve", "--config", str(config), "--port", str(port))
    with easel_process(*args, log=log, env=env) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, log)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"{base}/v2/openapi", headers=headers) as client:
            body = {"type": "generate_image", "prompt": "a fox", "model_version": "gpt_4o"}
            refused = client.post("/task", json=body).json()
            served = client.post("/task", json={**body, "model_version": "flux.1_dev"}).json()
            models = {m["model_version"]: m for m in client.get("/models").json()["data"]["models"]}
            balance = client.get("/user/balance").json()["data"]
    text = log.read_text()
    assert (
        "gpt (openai, not ready: the 'openai' package is not installed; run: pip install 'openai>="
        in text
    )
    assert refused["code"] == 1004
    assert "'gpt_4o' is not served" in refused["message"]
    assert served["code"] == 0  # the placeholder's models still are
    gpt = models["gpt_4o"]
    assert gpt["served"] is False
    assert gpt["backends"][0]["ready"] is False
    assert "pip install 'openai>=" in gpt["backends"][0]["reason"]
    assert balance["frozen"] == 5  # only the flux.1_dev task holds credits
