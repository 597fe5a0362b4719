"""Structured logs: every record written while serving a request carries its trace id."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from easel import logs
from processes import create_key, easel_process, free_port, wait_healthy, write_config


def test_json_records_carry_the_trace_id_of_their_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json")
    try:
        token = logs.trace_id.set("trace-123")
        logging.getLogger("easel.test").warning("hello %s", "there")
        logs.trace_id.reset(token)
        logging.getLogger("easel.test").warning("outside")
    finally:
        logging.getLogger().handlers.clear()
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "hello there"
    assert first["trace_id"] == "trace-123"
    assert first["level"] == "WARNING"
    assert second["trace_id"] == "-"


@pytest.mark.e2e
def test_the_servers_log_lines_carry_the_trace_id_the_client_saw(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'log_format = "json"')
    key = create_key(config, 10)
    port = free_port()
    log = tmp_path / "serve.log"
    with easel_process("serve", "--port", str(port), "--config", str(config), log=log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, log)
        response = httpx.get(
            f"{base}/v2/openapi/task/nope", headers={"Authorization": f"Bearer {key}"}
        )
    trace = response.headers["X-Tripo-Trace-ID"]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [
        r for r in records if r["logger"] == "uvicorn.access" and "/task/nope" in r["message"]
    ]
    assert access, log.read_text()
    assert access[0]["trace_id"] == trace
