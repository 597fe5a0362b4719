"""``easel worker`` as Kubernetes runs it: probes on ``--health-port``, and SIGTERM drains:
no more claims, the running task finishes within ``worker_drain_s`` (or is stopped through
its backend's stop flag and put back in the queue), then exit 0. Real processes."""

from __future__ import annotations

import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from processes import easel_process, free_port, wait_ready
from test_e2e_crash import api_only, poll, submit

pytestmark = pytest.mark.e2e


def probe(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def test_sigterm_lets_the_running_task_finish_and_claims_nothing_more(tmp_path: Path) -> None:
    settings = "poll_interval_s = 0.1\nworker_drain_s = 20\n"
    with api_only(tmp_path, settings) as (client, config, log):
        port = free_port()
        args = ("worker", "--config", str(config), "--health-port", str(port))
        with easel_process(*args, log=log) as worker:
            wait_ready(lambda: probe(port, "/readyz").status_code == 200, worker, log)
            first = submit(client, "finish me")
            poll(client, first, {"running"}, 30)
            worker.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            # Draining: alive, not ready (a load balancer or KEDA stops counting on it).
            assert probe(port, "/healthz").status_code == 200
            ready = probe(port, "/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["draining"].startswith("stopping")
            second = submit(client, "not for a stopping worker")
            assert worker.wait(timeout=20) == 0, log.read_text()
        assert poll(client, first, {"success", "failed"}, 5)["status"] == "success"
        assert poll(client, second, {"queued"}, 5)["status"] == "queued"  # never claimed
        assert "1 running task(s) get 20 s to finish" in log.read_text()


def test_a_task_outlasting_the_drain_is_stopped_and_put_back(tmp_path: Path) -> None:
    settings = "poll_interval_s = 0.1\nlease_s = 60\nworker_drain_s = 1\n"
    with api_only(tmp_path, settings, delay_s=30.0) as (client, config, log):
        with easel_process("worker", "--config", str(config), log=log) as worker:
            task_id = submit(client, "too long")
            poll(client, task_id, {"running"}, 30)
            sent = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0, log.read_text()
            took = time.monotonic() - sent
        assert took < 8, took  # 1 s of drain, then the backend noticed its stop flag
        # Back in the queue (not waiting out its 60 s lease), its attempt ended by the flag.
        assert poll(client, task_id, {"queued"}, 2)["status"] == "queued"
    with closing(sqlite3.connect(tmp_path / "easel.db")) as db:
        attempts = db.execute(
            "SELECT outcome, error FROM attempts WHERE task_id = ?", (task_id,)
        ).fetchall()
    assert attempts == [("cancelled", "the worker stopped")]
