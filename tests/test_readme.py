"""Every client snippet in README.md runs as written against a real ``easel serve``.

The blocks are read from the README itself, so an edit that breaks one fails here. Each runs
in a scratch directory laid out like a checkout (``examples/`` and ``.venv`` linked in), the
way a reader runs it from the repository root; only the documented placeholders are put in
place: the key (``tsk_…``) and the port (``8000``). The official SDK's snippets run with the
copies ``make install`` puts beside the venv: 0.4.2 with aiohttp, as the README installs it,
and 1.0.0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from processes import create_key, easel_process, free_port, wait_healthy, write_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
BLOCKS: list[tuple[str, str]] = BLOCK.findall(README)
SDK_DIRS = {"0.4.2": Path(sys.prefix) / "tripo3d-aiohttp", "1.x": Path(sys.prefix) / "tripo3d-v1"}


def block(lang: str, marker: str) -> str:
    """The one ``lang`` block that contains ``marker``."""
    found = [body for kind, body in BLOCKS if kind == lang and marker in body]
    assert len(found) == 1, f"{len(found)} {lang} blocks in README.md contain {marker!r}"
    return found[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """``easel serve`` on the placeholder backend, as the README's dry run starts it."""
    root = tmp_path_factory.mktemp("readme-server")
    config = write_config(root, delay_s=0.2)
    key = create_key(config, credits=1000)
    port, log = free_port(), root / "serve.log"
    with easel_process("serve", "--config", str(config), "--port", str(port), log=log) as proc:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        yield port, key


def run(
    code: str, server: tuple[int, str], cwd: Path, *command: str, sdk: str | None = None
) -> str:
    """Run ``code`` with ``command`` (its text is the last argument) in a checkout-like
    ``cwd``; fail with its output unless it exits 0. With ``sdk``, that copy of the official
    SDK comes first, and boto3 (of the dev extra, not of the README's install line) cannot be
    imported, as where the reader installed what the README says."""
    port, key = server
    (cwd / "examples").symlink_to(ROOT / "examples")
    (cwd / ".venv").symlink_to(sys.prefix)
    text = code.replace("tsk_…", key).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if sdk is not None:
        assert SDK_DIRS[sdk].is_dir(), f"{SDK_DIRS[sdk]} is missing: run make install"
        site = cwd / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import sys\nsys.modules['boto3'] = None\n")
        env["PYTHONPATH"] = os.pathsep.join([str(SDK_DIRS[sdk]), str(site)])
    done = subprocess.run(
        [*command, text], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_the_example_image_the_readme_uses_ships_with_the_repository() -> None:
    assert "examples/cat.png" in README
    assert "photo.png" not in README
    assert image_size(ROOT / "examples" / "cat.png") == (256, 256)
    assert (ROOT / "examples" / "cat.png").stat().st_size < 16_000


def test_curl(server: tuple[int, str], tmp_path: Path) -> None:
    out = run(block("sh", "curl -s"), server, tmp_path, "bash", "-euo", "pipefail", "-c")
    assert re.search(r'"task_id":"[0-9a-f-]{36}","type":"generate_image"', out), out
    assert '"balance":' in out


def test_easel_command(server: tuple[int, str], tmp_path: Path) -> None:
    out = run(block("sh", "easel generate"), server, tmp_path, "bash", "-euo", "pipefail", "-c")
    assert image_size(tmp_path / "fox.png")[0] > 0
    assert "flux.1_kontext_pro" in out  # easel models


def test_easel_client(server: tuple[int, str], tmp_path: Path) -> None:
    out = run(block("python", "from easel.client"), server, tmp_path, sys.executable, "-c")
    assert "success" in out
    assert image_size(tmp_path / "fox.png")[0] > 0


def test_official_sdk_0_4_2(server: tuple[int, str], tmp_path: Path) -> None:
    code = block("python", "class EaselClient(TripoClient)")
    out = run(code, server, tmp_path, sys.executable, "-c", sdk="0.4.2")
    assert "success" in out.lower()
    assert [p.suffix for p in (tmp_path / "out").iterdir()] != []


def test_official_sdk_1_x(server: tuple[int, str], tmp_path: Path) -> None:
    code = block("python", "v3_base_url=")
    out = run(code, server, tmp_path, sys.executable, "-c", sdk="1.x")
    assert f"http://127.0.0.1:{server[0]}/" in out  # the generated image's URL
