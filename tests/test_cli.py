"""The ``easel`` command: keys, credits, configuration errors, and what ``serve`` logs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from easel.cli import app

EASEL = str(Path(sys.executable).parent / "easel")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "easel.toml"
    path.write_text(
        f'database_url = "sqlite+aiosqlite:///{tmp_path / "e.db"}"\n'
        f'storage_url = "file://{tmp_path / "objects"}"\n'
        '[backends.dry]\nkind = "placeholder"\n'
        '[models."flux.1_dev"]\nbackends = ["dry"]\n'
    )
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_keys_create_prints_the_key_last_and_credits_work(config: Path) -> None:
    code, out = run("keys", "create", "--credits", "40", "--name", "alice", "--config", str(config))
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert key.startswith("tsk_")
    assert run("credits", "grant", key, "2", "--config", str(config)) == (
        0,
        "granted 2; balance 42, frozen 0\n",
    )
    code, out = run("credits", "show", key, "--config", str(config))
    assert code == 0
    assert "balance 42, frozen 0" in out
    assert out.count("grant") == 2
    assert run("keys", "revoke", key, "--config", str(config))[0] == 0
    code, out = run("keys", "revoke", key, "--config", str(config))
    assert code == 1
    assert "no such key" in out


def test_the_config_file_comes_from_easel_config_too(config: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "create"], env={"EASEL_CONFIG": str(config)})
    assert result.exit_code == 0
    assert (config.parent / "e.db").exists()


def test_an_unknown_config_key_is_an_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('databse_url = "sqlite+aiosqlite:///x.db"\n')
    code, out = run("keys", "create", "--config", str(bad))
    assert code == 2
    assert "unknown key 'databse_url'" in out


def test_an_unknown_backend_option_is_an_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[backends.dry]\nkind = "placeholder"\ndelay = 3\n')
    proc = subprocess.run(
        [EASEL, "worker", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "unknown key delay" in proc.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PROVIDER_VARIABLES = ("OPENAI_API_KEY", "GEMINI_API_KEY", "BFL_API_KEY", "MJ_PROXY_URL")


def clean_env() -> dict[str, str]:
    """This environment without a config file or provider keys."""
    drop = {"EASEL_CONFIG", *PROVIDER_VARIABLES}
    return {name: value for name, value in os.environ.items() if name not in drop}


def serve_log(tmp_path: Path, *args: str) -> str:
    """Start ``easel serve``, wait for /healthz, stop it, return its log."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [EASEL, "serve", "--port", str(port), *args],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return log.read_text()


def test_serve_without_a_config_says_it_serves_nothing_and_how_to_fix_it(
    tmp_path: Path,
) -> None:
    out = serve_log(tmp_path)
    assert "serves no model_version" in out
    assert 'kind = "placeholder"' in out
    assert (tmp_path / "easel-data" / "easel.db").exists()


def test_serve_logs_each_model_and_its_backends(tmp_path: Path, config: Path) -> None:
    out = serve_log(tmp_path, "--config", str(config))
    assert "flux.1_dev -> dry (placeholder, ready)" in out
    assert "serving 1 model_version(s): flux.1_dev" in out
