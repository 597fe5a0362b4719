"""``GET /metrics``: Prometheus text from the database, the same on every replica."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apptools import Api, running_api, settings_for


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(database_url, placeholder={"fail_rate": 0.0})) as api:
        yield api


async def samples(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


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
