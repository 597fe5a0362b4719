"""``GET /metrics``: Prometheus text from the database, the same on every replica, and the
server's HTTP requests per route template; a worker's own ``/metrics`` on its health port."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apptools import ALL_MODELS, Api, running_api, settings_for
from easel.backends import pipeline_metrics
from easel.runtime import open_runtime
from processes import create_key, easel_process, free_port, wait_healthy, write_config

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TASK_ROUTE = "/v2/openapi/task/{task_id}"


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(database_url, placeholder={"fail_rate": 0.0})) as api:
        yield api


async def samples(api: Api) -> Samples:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests(got: Samples, route: str, method: str, status: str) -> float:
    """easel_http_requests_total of one route, method and status class (0 when absent)."""
    labels = (("method", method), ("route", route), ("status", status))
    return got.get(("easel_http_requests_total", labels), 0.0)


async def test_metrics_count_outcomes_times_and_credits(api: Api) -> None:
    for model in ("flux.1_kontext_pro", "flux.1_kontext_pro", "gpt_image_2"):
        await api.wait(
            (await api.submit(prompt="x", model_version=model)).json()["data"]["task_id"]
        )
    got = await samples(api)
    kontext = (("model_version", "flux.1_kontext_pro"), ("status", "success"))
    assert got[("easel_tasks_finished_total", kontext)] == 2
    run = (("backend", "dry"), ("model_version", "flux.1_kontext_pro"))
    assert got[("easel_task_run_seconds_count", run)] == 2
    assert got[("easel_task_run_seconds_bucket", (*run[:1], ("le", "+Inf"), *run[1:]))] == 2
    assert got[("easel_task_wait_seconds_count", (("model_version", "gpt_image_2"),))] == 1
    assert got[("easel_credits_held", ())] == 0
    assert got[("easel_credits_moved_total", (("kind", "settle"),))] == 20
    assert got[("easel_credits_moved_total", (("kind", "grant"),))] == 100
    assert got[("easel_queue_oldest_wait_seconds", ())] == 0


async def test_metrics_show_the_queue(database_url: str) -> None:
    async with running_api(settings_for(database_url), run_worker=False) as api:
        for _ in range(3):
            await api.submit(prompt="waiting")
        got = await samples(api)
        assert got[("easel_queue_depth", (("model_version", "flux.1_kontext_pro"),))] == 3
        assert got[("easel_credits_held", ())] == 15
        assert got[("easel_queue_oldest_wait_seconds", ())] >= 0


async def test_every_served_model_has_queue_and_running_gauges_even_at_zero(api: Api) -> None:
    got = await samples(api)
    served = {
        m["model_version"]
        for m in (await api.client.get("/v2/openapi/models")).json()["data"]["models"]
        if m["served"]
    }
    assert served == set(ALL_MODELS)
    for name in ("easel_queue_depth", "easel_tasks_running"):
        series = {labels[0][1]: value for (n, labels), value in got.items() if n == name}
        assert series == dict.fromkeys(served, 0.0), name  # the unserved model: no series


async def test_http_requests_are_counted_and_timed_per_route_template(api: Api) -> None:
    missing = [str(uuid.uuid4()) for _ in range(3)]
    for task_id in missing:
        assert (await api.client.get(f"/v2/openapi/task/{task_id}")).status_code == 404
    task_id = (await api.submit(prompt="counted")).json()["data"]["task_id"]
    assert (await api.client.get(f"/v2/openapi/task/{task_id}")).status_code == 200
    assert (await api.client.get(f"/no/such/{task_id}")).status_code == 403
    # Refused before routing (the body is over max_request_bytes): counted by its route too.
    too_large = b"x" * (1024 * 1024 + 1)
    assert (await api.client.post("/v2/openapi/task", content=too_large)).status_code == 413

    got = await samples(api)
    assert requests(got, TASK_ROUTE, "GET", "4xx") == 3
    assert requests(got, TASK_ROUTE, "GET", "2xx") == 1
    assert requests(got, "/v2/openapi/task", "POST", "2xx") == 1
    assert requests(got, "/v2/openapi/task", "POST", "4xx") == 1
    assert requests(got, "unmatched", "GET", "4xx") == 1
    timed = (("method", "GET"), ("route", TASK_ROUTE), ("status", "4xx"))
    assert got[("easel_http_request_duration_seconds_count", timed)] == 3
    assert 0 < got[("easel_http_request_duration_seconds_sum", timed)] < 10
    routes = {dict(labels)["route"] for _, labels in got if "route" in dict(labels)}
    assert not any(i in route for route in routes for i in [*missing, task_id])  # no ids
    # The scrape itself is counted once it has answered.
    assert requests(await samples(api), "/metrics", "GET", "2xx") == 1


@pytest.mark.e2e
def test_every_process_of_a_server_reports_the_whole_servers_requests(tmp_path: Path) -> None:
    """Under ``--processes 2`` a scrape reaches either process: each reports the requests
    both served (prometheus_client's multiprocess mode), not its own share."""
    config = write_config(tmp_path)
    key = create_key(config, 10)
    port, log = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    command = ("serve", "--processes", "2", "--no-worker", "--port", str(port))
    with easel_process(*command, "--config", str(config), log=log) as serve:
        wait_healthy(base, serve, log)
        api_pids = {
            p.pid
            for p in psutil.Process(serve.pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())
        }
        assert len(api_pids) == 2
        shared = Path(psutil.Process(min(api_pids)).environ()["PROMETHEUS_MULTIPROC_DIR"])
        sent = 0
        # A fresh connection per request: the kernel hands each to either process. Go on
        # until both have served some (each keeps its values in a file named by its pid).
        while not all(list(shared.glob(f"*_{pid}.db")) for pid in api_pids):
            assert sent < 500, "one process served every request"
            missing = httpx.get(
                f"{base}/v2/openapi/task/{uuid.uuid4()}",
                headers={"Authorization": f"Bearer {key}"},
            )
            assert missing.status_code == 404
            sent += 1
        scrapes = [parse(httpx.get(f"{base}/metrics").text) for _ in range(6)]
    assert [requests(got, TASK_ROUTE, "GET", "4xx") for got in scrapes] == [sent] * 6


async def test_a_worker_alone_serves_its_pipelines_figures_on_its_health_port() -> None:
    """``easel worker --health-port``: ``/metrics`` has the load and swap times and the
    resident bytes its diffusers pipelines recorded in its process."""
    pipeline = f"z-image:weights-{uuid.uuid4().hex[:8]}"
    pipeline_metrics.metrics().observe(pipeline, "swap_in", 2.0)
    pipeline_metrics.metrics().set_resident(pipeline, 12345)
    runtime = await open_runtime(settings_for("memory://"))
    try:
        transport = httpx.ASGITransport(runtime.new_worker().health.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            response = await client.get("/metrics")
    finally:
        await runtime.close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = parse(response.text)
    swaps = ("easel_pipeline_load_seconds_count", (("kind", "swap_in"), ("pipeline", pipeline)))
    assert got[swaps] == 1
    assert got[("easel_pipeline_resident_bytes", (("pipeline", pipeline),))] == 12345


def test_a_worker_with_a_multiprocess_directory_scrapes_it(tmp_path: Path) -> None:
    """With ``$PROMETHEUS_MULTIPROC_DIR`` set, the worker writes its figures there, and its
    ``/metrics`` reads them back from there."""
    record = (
        "import sys\n"
        "from easel.backends.pipeline_metrics import metrics\n"
        "from easel.worker.health import scrape\n"
        "metrics().observe('qwen-image-edit-plus:Qwen-Image-Edit-2511', 'load', 30.0)\n"
        "sys.stdout.buffer.write(scrape())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", record], env=env, check=True, capture_output=True, timeout=60
    )
    labels = (("kind", "load"), ("pipeline", "qwen-image-edit-plus:Qwen-Image-Edit-2511"))
    assert parse(out.stdout.decode())[("easel_pipeline_load_seconds_count", labels)] == 1
    assert list(tmp_path.glob("histogram_*.db"))  # written to the directory, read from it
