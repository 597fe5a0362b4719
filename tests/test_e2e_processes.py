"""``easel serve --processes N``: N API processes on one port, the worker as one more."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psutil
import pytest

from processes import create_key, easel_process, free_port, stop, wait_healthy, write_config

pytestmark = pytest.mark.e2e


def test_two_api_processes_share_the_port_and_one_worker_runs_the_tasks(tmp_path: Path) -> None:
    config = write_config(tmp_path, "poll_interval_s = 0.1\n", delay_s=0.05)
    key = create_key(config, 100)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "easel.log"
    headers = {"Authorization": f"Bearer {key}"}
    with (
        easel_process(
            "serve", "--processes", "2", "--port", str(port), "--config", str(config), log=log
        ) as serve,
        httpx.Client(base_url=base, headers=headers, timeout=10) as client,
    ):
        wait_healthy(base, serve, log)
        family = psutil.Process(serve.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in family]
        assert sum("spawn_main" in c for c in commands) == 2, commands  # the API processes
        assert sum(c.endswith("-m easel worker") for c in commands) == 1, commands

        body = {"type": "generate_image", "prompt": "p", "model_version": "flux.1_dev"}
        ids = [
            client.post("/v2/openapi/task", json=body).json()["data"]["task_id"] for _ in range(5)
        ]
        deadline = time.monotonic() + 60
        statuses: list[str] = []
        while time.monotonic() < deadline:
            statuses = [client.get(f"/v2/openapi/task/{i}").json()["data"]["status"] for i in ids]
            if set(statuses) == {"success"}:
                break
            time.sleep(0.1)
        assert statuses == ["success"] * 5
        balance = client.get("/v2/openapi/user/balance").json()["data"]
        assert balance == {"balance": 100 - 5 * 5, "frozen": 0}  # flux.1_dev costs 5

        stop(serve)
        assert serve.returncode == 0, log.read_text()
        _, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]  # no process left behind
