"""A PostgreSQL server of a test's own: ``initdb`` into a temporary directory, ``pg_ctl`` to
start, restart and stop it, on a free loopback port with its unix socket in that directory.
``postgres_server(host=…, prefix=…)`` runs it on another address instead, its commands behind
``prefix`` (``ip netns exec NS``: a host of ``netns.py``).

Restarting it touches nothing else on the machine (the shared server of the other tests keeps
running). The binaries come from ``pg_config --bindir``. PostgreSQL refuses to run as root:
as root the server's commands run as the ``postgres`` system user (``runuser``), which owns
the directory; as any other user they run as that user. Neither possible skips the test
locally and fails it in CI (``EASEL_CI=1``). The server is stopped and its directory removed
when the block ends, whatever happened inside it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from processes import free_port

SERVER_USER = "postgres"  # who runs the server when the tests run as root
COMMAND_TIMEOUT_S = 60
# Speed over durability against a crash of the machine itself: the faults here crash the
# server, never the machine, and a commit still reaches the kernel before it returns.
SETTINGS = """
listen_addresses = '{host}'
port = {port}
unix_socket_directories = '{socket_dir}'
fsync = off
max_connections = 100
shared_buffers = 16MB
log_min_messages = warning
"""

ShutdownMode = Literal["smart", "fast", "immediate"]


def _missing(message: str) -> None:
    if os.environ.get("EASEL_CI"):
        pytest.fail(message)
    pytest.skip(message)


def _bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        _missing("pg_config is not installed (PostgreSQL's server binaries are needed)")
    assert pg_config is not None
    out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
    bindir = Path(out.stdout.strip())
    if not (bindir / "initdb").exists():
        _missing(f"no initdb in {bindir}: install PostgreSQL's server package")
    return bindir


def _run_as() -> tuple[list[str], int | None]:
    """The command prefix that runs the server's programs, and the uid to own its files."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        user = None
    if runuser is None or user is None:
        _missing(f"running as root needs runuser and a {SERVER_USER!r} user to run PostgreSQL")
    assert runuser is not None and user is not None
    return [runuser, "-u", SERVER_USER, "--"], user.pw_uid


@dataclass
class PostgresServer:
    """One private server. ``url(db)`` is the SQLAlchemy URL Easel uses (TCP, trust)."""

    root: Path
    port: int
    bindir: Path
    run_as: list[str]
    host: str = "127.0.0.1"
    clients: Sequence[str] = ()  # networks trusted besides loopback (pg_hba.conf)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://postgres@{self.host}:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self.run_as, str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed: {done.stderr}\n{tail}")

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", *args)

    def initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(SETTINGS.format(host=self.host, port=self.port, socket_dir=self.root))
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in self.clients)

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: ShutdownMode = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: ShutdownMode = "fast") -> None:
        self._pg_ctl("restart", "-m", mode)

    def is_running(self) -> bool:
        done = subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)],
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        return done.returncode == 0


@contextmanager
def postgres_server(
    host: str = "127.0.0.1",
    port: int | None = None,
    prefix: Sequence[str] = (),
    clients: Sequence[str] = (),
) -> Iterator[PostgresServer]:
    """Initialise and start a private server (on ``host``, trusting connections from
    ``clients`` too, its commands run behind ``prefix``; ``port``: a free one of the
    loopback); stop it and remove its files afterwards."""
    bindir = _bindir()
    run_as, owner = _run_as()
    root = Path(tempfile.mkdtemp(prefix="easel-pg-"))
    try:
        if owner is not None:
            os.chown(root, owner, -1)
        server = PostgresServer(
            root, port or free_port(), bindir, [*prefix, *run_as], host, clients
        )
        server.initdb()
        server.start()
        try:
            yield server
        finally:
            if server.is_running():
                server.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
