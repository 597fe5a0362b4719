"""``easel serve --processes 2`` watches its children: a worker or API process killed with
SIGKILL is reported by /readyz and the log, started again, and tasks still complete; a worker
that keeps dying stops the server with exit status 1 instead of leaving it up and idle."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from conftest import reset_schema
from processes import create_key, easel_process, free_port, wait_ready, write_config

pytestmark = pytest.mark.e2e


def config_on(tmp_path: Path, database: str) -> Path:
    config = write_config(tmp_path, "poll_interval_s = 0.1\n", delay_s=0.05)
    if database != "sqlite":
        lines = config.read_text().splitlines()
        config.write_text("\n".join([f'database_url = "{database}"', *lines[1:]]) + "\n")
    return config


@contextmanager
def serving(config: Path, log: Path) -> Iterator[tuple[httpx.Client, psutil.Process]]:
    port = free_port()
    with (
        easel_process(
            "serve", "--processes", "2", "--port", str(port), "--config", str(config), log=log
        ) as serve,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        wait_ready(lambda: client.get("/readyz").status_code == 200, serve, log, timeout_s=90)
        yield client, psutil.Process(serve.pid)


def children(parent: psutil.Process, marker: str) -> list[psutil.Process]:
    return [p for p in parent.children() if marker in " ".join(p.cmdline())]


def readyz_until(
    client: httpx.Client, log: Path, holds: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """Poll /readyz until its body satisfies ``holds``; fail after ``timeout_s``."""
    deadline, body = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            body = client.get("/readyz").json()
        except httpx.TransportError:
            body = {}
        if body and holds(body):
            return body
        time.sleep(0.05)
    raise AssertionError(f"/readyz never satisfied the check; last: {body}\n{log.read_text()}")


def submit(client: httpx.Client, key: str, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"type": "generate_image", "prompt": "p", "model_version": "flux.1_dev"}
    return [
        client.post("/v2/openapi/task", json=body, headers=headers).json()["data"]["task_id"]
        for _ in range(count)
    ]


def wait_success(client: httpx.Client, key: str, ids: list[str], timeout_s: float = 60) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    deadline, statuses = time.monotonic() + timeout_s, [""]
    while time.monotonic() < deadline:
        statuses = [
            client.get(f"/v2/openapi/task/{i}", headers=headers).json()["data"]["status"]
            for i in ids
        ]
        if set(statuses) == {"success"}:
            return
        time.sleep(0.1)
    raise AssertionError(f"tasks did not complete: {statuses}")


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite"
    url: str = request.getfixturevalue("postgres_database")
    await reset_schema(url)  # empty: the processes migrate it together
    return url


def test_a_killed_worker_is_reported_started_again_and_tasks_complete(
    tmp_path: Path, database: str
) -> None:
    config = config_on(tmp_path, database)
    log = tmp_path / "easel.log"
    with serving(config, log) as (client, parent):
        key = create_key(config, 100)
        [worker] = children(parent, "-m easel worker")
        assert client.get("/readyz").json()["checks"]["worker"] == "ok"
        os.kill(worker.pid, signal.SIGKILL)

        down = readyz_until(client, log, lambda b: b["status"] != "ok", timeout_s=10)
        assert (
            f"worker process (pid {worker.pid}) was killed by SIGKILL" in down["checks"]["worker"]
        )
        while_down = submit(client, key, 2)  # accepted, and run once the worker is back
        readyz_until(client, log, lambda b: b["status"] == "ok", timeout_s=60)
        [replacement] = children(parent, "-m easel worker")
        assert replacement.pid != worker.pid
        wait_success(client, key, [*while_down, *submit(client, key, 2)])
    text = log.read_text()
    assert f"the worker process (pid {worker.pid}) was killed by SIGKILL" in text
    assert "the worker process serves again" in text


def test_a_killed_api_process_is_reported_and_started_again(tmp_path: Path) -> None:
    config = config_on(tmp_path, "sqlite")
    log = tmp_path / "easel.log"
    with serving(config, log) as (client, parent):
        key = create_key(config, 100)
        api = children(parent, "spawn_main")
        assert len(api) == 2
        os.kill(api[0].pid, signal.SIGKILL)
        down = readyz_until(client, log, lambda b: b["status"] != "ok", timeout_s=10)
        assert f"(pid {api[0].pid}) was killed by SIGKILL" in down["checks"]["api_processes"]
        readyz_until(client, log, lambda b: b["status"] == "ok", timeout_s=60)
        assert len(children(parent, "spawn_main")) == 2
        wait_success(client, key, submit(client, key, 2))


def test_a_worker_that_keeps_dying_stops_the_server_with_status_1(tmp_path: Path) -> None:
    config = config_on(tmp_path, "sqlite")
    create_key(config, 1)  # migrates the database
    # every worker fails to register; `with connection` only commits: closing() closes it
    # (an unclosed one is a ResourceWarning from Python 3.13 on, an error here)
    with closing(sqlite3.connect(tmp_path / "easel.db")) as db, db:
        db.execute(
            "CREATE TRIGGER refuse_workers BEFORE INSERT ON workers "
            "BEGIN SELECT RAISE(ABORT, 'workers refused by the test'); END"
        )
    log = tmp_path / "easel.log"
    port = free_port()
    with easel_process(
        "serve", "--processes", "2", "--port", str(port), "--config", str(config), log=log
    ) as serve:
        code = serve.wait(timeout=120)  # 5 deaths, restarted after 1, 2, 4 and 8 s
    text = log.read_text()
    assert code == 1, text
    assert text.count("workers refused by the test") >= 5, text
    assert "it died 5 times in a row" in text and "the server stops" in text, text
    assert "Traceback" not in text, text
