"""Run real ``easel`` processes for end-to-end tests."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

EASEL = str(Path(sys.executable).parent / "easel")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SERVED = ("flux.1_kontext_pro", "flux.1_dev", "gemini_2.5_flash_image_preview", "gpt_image_2")


def write_config(
    directory: Path, extra: str = "", *, models: tuple[str, ...] = SERVED, **placeholder: float
) -> Path:
    """A config with SQLite and a file store in ``directory`` and a placeholder backend
    serving each of ``models``."""
    options = "".join(f"{key} = {value}\n" for key, value in placeholder.items())
    served = "".join(f'[models."{version}"]\nbackends = ["dry"]\n' for version in models)
    path = directory / "easel.toml"
    path.write_text(
        f'database_url = "sqlite+aiosqlite:///{directory / "easel.db"}"\n'
        f'storage_url = "file://{directory / "objects"}"\n'
        f"{extra}\n"
        f'[backends.dry]\nkind = "placeholder"\n{options}'
        f"{served}"
    )
    return path


def create_key(config: Path, credits: int) -> str:
    out = subprocess.run(
        [EASEL, "keys", "create", "--credits", str(credits), "--config", str(config)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def easel_process(
    *args: str,
    log: Path,
    env: dict[str, str] | None = None,
    max_files: int | None = None,
    prefix: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``easel ARGS`` (behind the command ``prefix``, which must exec it: ``ip netns
    exec NS``); stop it (SIGTERM, then SIGKILL) when the block ends. ``max_files`` caps the
    process's open descriptors (RLIMIT_NOFILE, soft and hard)."""

    def limit_files() -> None:
        if max_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [*prefix, EASEL, *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=limit_files if max_files is not None else None,
        )
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM ``proc``, then SIGKILL it if it has not exited within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


def wait_ready(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    log: Path,
    *,
    what: str = "server",
    timeout_s: float = 60.0,
) -> None:
    """Poll ``ready`` (an HTTP probe) until it says True; fail when ``proc`` exits first or
    ``timeout_s`` passes, showing ``log``. A transport error counts as not ready yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, (
            f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
        )
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, (
            f"{what} did not start within {timeout_s:g} s:\n{log.read_text(errors='replace')}"
        )
        time.sleep(0.1)


def wait_healthy(
    base_url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    *,
    what: str = "server",
    timeout_s: float = 60.0,
) -> None:
    """Wait until ``GET {base_url}/healthz`` answers 200 (see :func:`wait_ready`)."""
    wait_ready(
        lambda: httpx.get(f"{base_url}/healthz").status_code == 200,
        proc,
        log,
        what=what,
        timeout_s=timeout_s,
    )


@contextmanager
def placeholder_server(
    root: Path, extra: str = "", *, models: tuple[str, ...] = SERVED, delay_s: float = 0.2
) -> Iterator[tuple[str, Path]]:
    """``easel serve`` on a free port with :func:`write_config`'s placeholder backend, its
    ``public_url`` its own address: yields ``(base_url, config)``; fails if it died."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    # The public_url: tripo3d 1.x's own asyncio client sends "Host: 127.0.0.1" without the
    # port, so links built from the Host header would point at port 80.
    extra = f'public_url = "{base_url}"\n{extra}'
    config = write_config(root, extra, models=models, delay_s=delay_s)
    log = root / "server.log"
    args = ("serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port))
    with easel_process(*args, log=log) as proc:
        wait_healthy(base_url, proc, log, what="easel serve")
        yield base_url, config
        assert proc.poll() is None, f"easel serve died:\n{log.read_text(errors='replace')}"
