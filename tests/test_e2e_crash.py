"""A worker process killed mid-task: its task is re-run elsewhere and charged once."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from apptools import has_estimate
from processes import create_key, easel_process, free_port, wait_healthy, write_config

pytestmark = pytest.mark.e2e


@contextmanager
def api_only(
    tmp_path: Path, settings: str, delay_s: float = 3.0
) -> Iterator[tuple[httpx.Client, Path, Path]]:
    """``easel serve --no-worker`` on a config with ``settings`` (placeholder jobs take
    ``delay_s``) and a key of 100 credits; yields a client using the key, the config and the
    shared log."""
    config = write_config(tmp_path, settings, delay_s=delay_s)
    key = create_key(config, 100)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "easel.log"
    with (
        easel_process(
            "serve", "--no-worker", "--port", str(port), "--config", str(config), log=log
        ) as api,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client,
    ):
        wait_healthy(base, api, log)
        yield client, config, log


def submit(client: httpx.Client, prompt: str) -> str:
    answer = client.post("/v2/openapi/task", json={"type": "generate_image", "prompt": prompt})
    task_id: str = answer.json()["data"]["task_id"]
    return task_id


def poll(client: httpx.Client, task_id: str, until: set[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        task: dict[str, Any] = client.get(f"/v2/openapi/task/{task_id}").json()["data"]
        if task["status"] in until:
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.1)


def test_a_killed_workers_task_is_reclaimed_and_settled_once(tmp_path: Path) -> None:
    with api_only(tmp_path, "lease_s = 1.0\npoll_interval_s = 0.1\n") as (client, config, log):
        with easel_process("worker", "--config", str(config), log=log) as doomed:
            task_id = submit(client, "survive")
            running = poll(client, task_id, {"running"}, 30)
            assert has_estimate(running)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
        with easel_process("worker", "--config", str(config), log=log):
            done = poll(client, task_id, {"success", "failed"}, 60)
        assert done["status"] == "success", log.read_text()
        assert done["consumed_credit"] == 5
        image = client.get(done["output"]["generated_image"])
        assert image.content.startswith(b"\x89PNG")
        assert client.get("/v2/openapi/user/balance").json()["data"] == {"balance": 95, "frozen": 0}
    with closing(sqlite3.connect(tmp_path / "easel.db")) as db:
        kinds = [
            r[0]
            for r in db.execute("SELECT kind FROM ledger WHERE task_id = ? ORDER BY id", (task_id,))
        ]
        attempts = db.execute("SELECT attempts FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]
    assert kinds == ["hold", "settle"]
    assert attempts == 2


def test_a_worker_stopped_with_sigterm_releases_its_task_at_once(tmp_path: Path) -> None:
    settings = "lease_s = 30\npoll_interval_s = 0.1\nworker_drain_s = 0\n"  # no drain
    with api_only(tmp_path, settings) as (client, config, log):
        with easel_process("worker", "--config", str(config), log=log) as leaving:
            task_id = submit(client, "hand over")
            poll(client, task_id, {"running"}, 30)
            leaving.send_signal(signal.SIGTERM)
            assert leaving.wait(timeout=20) == 0
        # Back in the queue at once, not after the 30 s lease.
        assert poll(client, task_id, {"queued"}, 5)["status"] == "queued"
        with easel_process("worker", "--config", str(config), log=log):
            done = poll(client, task_id, {"success", "failed"}, 60)
        assert done["status"] == "success", log.read_text()
        assert client.get("/v2/openapi/user/balance").json()["data"] == {"balance": 95, "frozen": 0}
