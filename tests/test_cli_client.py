"""The caller commands (``easel generate``, ``task get``, ``balance``, ``models``) as a user
types them, through a real ``easel serve`` process."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from apptools import png
from easel.domain.templates import TEMPLATES
from processes import EASEL, create_key, easel_process, free_port, wait_healthy, write_config

pytestmark = pytest.mark.e2e

FAILING = '[backends.broken]\nkind = "placeholder"\nfail_rate = 1.0\n'
FAILING += '[models."gpt_4o"]\nbackends = ["broken"]\n'


@dataclass(frozen=True)
class Server:
    url: str
    key: str

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``easel ARGS`` with EASEL_SERVER and EASEL_API_KEY unset unless ``env`` sets them."""
        base = {k: v for k, v in os.environ.items() if k not in ("EASEL_SERVER", "EASEL_API_KEY")}
        return subprocess.run(
            [EASEL, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
            env={**base, **(env or {})},
        )

    def call(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """``easel ARGS --server URL --key KEY``."""
        return self.run(*args, "--server", self.url, "--key", self.key, cwd=cwd)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``easel serve``: the placeholder (0.3 s) for most models, gpt_4o always failing."""
    directory = tmp_path_factory.mktemp("cli-client")
    config = write_config(directory, extra=FAILING, delay_s=0.3)
    key = create_key(config, 100)
    port, log = free_port(), directory / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with easel_process("serve", "--config", str(config), "--port", str(port), log=log) as proc:
        wait_healthy(url, proc, log)
        yield Server(url, key)


def help_page(*command: str) -> str:
    """``easel COMMAND --help``, wide enough that no line wraps."""
    out = subprocess.run(
        [EASEL, *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def option_line(page: str, option: str) -> str:
    """The help line of ``option`` (``--t-pose``): its name, type column and help."""
    return next(line for line in page.splitlines() if f" {option} " in line)


def test_generate_uploads_the_image_waits_and_saves_the_png(server: Server, tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png(color="gray"))
    out = server.call(
        "generate", "a cat, style of image[1]", "--image", "cat.png", "-o", "out.png", cwd=tmp_path
    )

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "out.png"
    assert "uploading 1 local image(s)" in out.stderr
    assert "success" in out.stderr
    with Image.open(tmp_path / "out.png") as image:
        assert image.format == "PNG"


def test_generate_reads_server_and_key_from_the_environment_and_names_the_file_by_task(
    server: Server, tmp_path: Path
) -> None:
    env = {"EASEL_SERVER": server.url, "EASEL_API_KEY": server.key}
    out = server.run("generate", "a dog", "--model", "flux.1_dev", cwd=tmp_path, env=env)

    assert out.returncode == 0, out.stderr
    task_id = out.stderr.split("task ", 1)[1].split()[0]
    assert out.stdout.strip() == f"{task_id}.png"
    assert (tmp_path / f"{task_id}.png").is_file()


def test_generate_with_an_unknown_model_exits_1_with_the_code_and_suggestion(
    server: Server, tmp_path: Path
) -> None:
    out = server.call("generate", "a fox", "--model", "flux.9", cwd=tmp_path)

    assert out.returncode == 1
    assert "error 2017: model_version 'flux.9' is not a valid version." in out.stderr
    assert "suggestion: Use one of: flux.1_kontext_pro, flux.1_dev" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_generate_exits_1_when_the_task_fails(server: Server, tmp_path: Path) -> None:
    out = server.call("generate", "doomed", "--model", "gpt_4o", cwd=tmp_path)

    assert out.returncode == 1
    assert "error 1001: task " in out.stderr
    assert "ended failed" in out.stderr
    assert "suggestion: The credits were refunded" in out.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--key": "tsk_wrong"}, "error 1002:"),
        ({"--image": "missing.png"}, "No such file or directory: 'missing.png'"),
        ({"--server": f"http://127.0.0.1:{free_port()}"}, "could not reach"),
    ],
    ids=["bad-key", "missing-image", "no-server"],
)
def test_generate_explains_what_went_wrong_with_a_suggestion(
    server: Server, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    options = {"--server": server.url, "--key": server.key, **change}
    out = server.run("generate", "x", *itertools.chain(*options.items()), cwd=tmp_path)

    assert out.returncode == 1
    assert message in out.stderr
    assert "suggestion:" in out.stderr


@pytest.mark.parametrize(
    "command",
    [(), ("generate",), ("task", "get"), ("balance",), ("serve",), ("keys", "create")],
    ids=lambda command: " ".join(("easel", *command)),
)
def test_help_shows_no_value_type_beside_a_flag(command: tuple[str, ...]) -> None:
    page = help_page(*command)

    assert "--help " in page
    assert "<bool>" not in page


def test_generate_help_lists_the_templates_and_types_only_options_with_a_value() -> None:
    page = help_page("generate")

    assert all(slug in option_line(page, "--template") for slug in TEMPLATES)
    assert "<str>" in option_line(page, "--model")
    assert "<float>" in option_line(page, "--timeout")
    assert option_line(page, "--t-pose").split()[1:3] == ["--t-pose", "Ask"]  # no type between


def test_balance_models_and_task_get(server: Server, tmp_path: Path) -> None:
    generated = server.call("generate", "a hen", "-o", "hen.png", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    task_id = generated.stderr.split("task ", 1)[1].split()[0]

    balance = server.call("balance", cwd=tmp_path)
    models = server.call("models", cwd=tmp_path)
    task = server.call("task", "get", task_id, cwd=tmp_path)
    missing = server.call("task", "get", "no-such-task", cwd=tmp_path)

    assert balance.returncode == 0
    assert balance.stdout.startswith("balance ")
    assert balance.stdout.strip().endswith("frozen 0")
    assert models.returncode == 0
    assert "flux.1_kontext_pro (default)" in models.stdout
    assert "gemini_3.1_flash_image_preview" in models.stdout
    assert "served" in models.stdout
    assert task.returncode == 0
    assert f"task_id: {task_id}" in task.stdout
    assert "status: success" in task.stdout
    assert "image: http://" in task.stdout
    assert missing.returncode == 1
    assert "error 2001:" in missing.stderr
