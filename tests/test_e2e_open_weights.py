"""End to end: ``easel serve`` with only local open-weight pipelines behind the models.

``easel demo-weights`` writes tiny random pipelines of every family; one server loads them on
the CPU at start: Z-Image behind ``flux.1_dev`` (text to image), FLUX.2 klein behind
``flux.1_kontext_pro`` and ``gpt_image_2`` (editing with references, and text to image),
Qwen-Image-Edit-Plus behind ``gemini_2.5_flash_image_preview`` (without torchvision, as here,
its processor loads without its video half), a slow Z-Image for cancelling, and two backends
whose weights are missing or corrupt. Each task says, in its v2 and v3 views, which pipeline
and weights made its image, and so does ``GET /models``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apptools import png
from diffusers_tools import backend_table, corrupt_copy
from processes import EASEL, create_key, easel_process, free_port, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.local]

CHAINS = {  # model_version -> (backend, pipeline, steps, side)
    "flux.1_dev": ("tiny-zimage", "z-image", 2, 64),
    "flux.1_kontext_pro": ("tiny-klein", "flux2-klein", 2, 64),
    "gpt_image_2": ("tiny-klein", "flux2-klein", 2, 64),
    "gemini_2.5_flash_image_preview": ("tiny-qwen", "qwen-image-edit-plus", 2, 64),
    # The worker hears of a cancel at its next heartbeat (up to a second), after the first
    # beat has shown progress: 200 steps at 192 px take 40 s here and stay well over the
    # few seconds that needs on a machine several times faster (64 px took 2 s: too short).
    "midjourney": ("slow-zimage", "z-image", 200, 192),
    "gpt_image_1.5": ("missing-zimage", "z-image", 2, 64),
    "gpt_4o": ("corrupt-klein", "flux2-klein", 2, 64),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    root = tmp_path_factory.mktemp("open-weights")
    weights = root / "weights"
    out = subprocess.run(
        [EASEL, "demo-weights", str(weights)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "z-image:" in out.stdout
    assert "flux2-klein:" in out.stdout
    assert "qwen-image-edit-plus:" in out.stdout
    paths = {"missing-zimage": root / "nowhere", "corrupt-klein": corrupt_copy(
        weights / "flux2-klein", root / "corrupt"
    )}  # fmt: skip
    backends, chains = {}, []
    for version, (name, pipeline, steps, side) in CHAINS.items():
        path = paths.get(name, weights / pipeline)
        backends[name] = backend_table(name, pipeline, path, steps, side)
        chains.append(f'[models."{version}"]\nbackends = ["{name}"]\n')
    config = root / "easel.toml"
    config.write_text(
        f'database_url = "sqlite+aiosqlite:///{root / "easel.db"}"\n'
        f'storage_url = "file://{root / "objects"}"\npoll_interval_s = 0.2\n'
        + "".join(backends.values())
        + "".join(chains)
    )
    key = create_key(config, 1000)
    port, log = free_port(), root / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with easel_process("serve", "--port", str(port), "--config", str(config), log=log) as proc:
        wait_healthy(base, proc, log)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            yield client, log


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v2/openapi/task", json={"type": "generate_image", **body})
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def final(client: httpx.Client, task_id: str, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while True:
        task: dict[str, Any] = client.get(f"/v2/openapi/task/{task_id}").json()["data"]
        if task["status"] not in ("queued", "running"):
            return task
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def succeed(client: httpx.Client, body: dict[str, Any], log: Path) -> dict[str, Any]:
    task = final(client, submit(client, body), log)
    assert task["status"] == "success", (task, log.read_text())
    assert task["progress"] == 100
    return task


def reference(client: httpx.Client, width: int = 96, height: int = 64) -> dict[str, str]:
    files = {"file": ("r.png", png(width, height), "image/png")}
    token = client.post("/v2/openapi/upload", files=files).json()["data"]["image_token"]
    return {"file_token": token}


def test_flux_1_dev_is_served_by_z_image_and_says_so(server: tuple[httpx.Client, Path]) -> None:
    client, log = server
    task = succeed(client, {"prompt": "a lighthouse", "model_version": "flux.1_dev"}, log)
    made_by = "diffusers ZImagePipeline, weights z-image"
    assert [(a["backend"], a["served_by"]) for a in task["attempts"]] == [("tiny-zimage", made_by)]
    assert task["served_by"] == made_by
    v3 = client.get(f"/v3/tasks/{task['task_id']}").json()["data"]
    assert (v3["model"], v3["served_by"]) == ("flux.1_dev", made_by)
    assert client.get(task["output"]["generated_image"]).content.startswith(b"\x89PNG")


def test_kontext_edits_references_on_klein(server: tuple[httpx.Client, Path]) -> None:
    client, log = server
    files = [reference(client), reference(client, 64, 128)]
    task = succeed(client, {"prompt": "make image[1] blue", "files": files}, log)
    assert task["input"]["model_version"] == "flux.1_kontext_pro"
    assert task["served_by"] == "diffusers Flux2KleinPipeline, weights flux2-klein"


def test_gpt_image_2_text_only_runs_on_klein(server: tuple[httpx.Client, Path]) -> None:
    client, log = server
    task = succeed(client, {"prompt": "a red kite", "model_version": "gpt_image_2"}, log)
    assert task["attempts"][0]["backend"] == "tiny-klein"


def test_gemini_edits_on_qwen_image_edit(server: tuple[httpx.Client, Path]) -> None:
    client, log = server
    body = {"prompt": "make it blue", "model_version": "gemini_2.5_flash_image_preview"}
    task = succeed(client, {**body, "file": reference(client)}, log)
    assert task["served_by"] == "diffusers QwenImageEditPlusPipeline, weights qwen-image-edit-plus"


def test_cancel_stops_a_running_pipeline(server: tuple[httpx.Client, Path]) -> None:
    """A 200-step run cancelled once it reports progress ends cancelled, well short of 100,
    and refunded."""
    client, log = server
    before = client.get("/v2/openapi/user/balance").json()["data"]["balance"]
    task_id = submit(client, {"prompt": "a slow painting", "model_version": "midjourney"})
    deadline = time.monotonic() + 60
    while client.get(f"/v2/openapi/task/{task_id}").json()["data"]["progress"] == 0:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    assert client.post(f"/v2/openapi/task/{task_id}/cancel").status_code == 200
    task = final(client, task_id, log)
    assert task["status"] == "cancelled"
    assert task["progress"] < 100
    assert task["attempts"][-1]["outcome"] == "cancelled"
    assert client.get("/v2/openapi/user/balance").json()["data"]["balance"] == before


def test_missing_and_corrupt_weights_are_named_without_a_traceback(
    server: tuple[httpx.Client, Path],
) -> None:
    client, log = server
    rows = {
        row["model_version"]: row
        for row in client.get("/v2/openapi/models").json()["data"]["models"]
    }
    missing, broken = rows["gpt_image_1.5"], rows["gpt_4o"]
    assert missing["served"] is False
    assert "load the z-image pipeline from" in missing["reason"]
    assert "no such directory" in missing["reason"]
    deadline = time.monotonic() + 60
    while rows["gpt_4o"]["backends"][0]["load_state"] != "failed":  # the worker tries at start
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
        rows = {
            r["model_version"]: r for r in client.get("/v2/openapi/models").json()["data"]["models"]
        }
    broken = rows["gpt_4o"]
    assert broken["served"] is False
    assert "could not load the flux2-klein pipeline" in broken["reason"]
    assert "Traceback" not in log.read_text()
    response = client.post(
        "/v2/openapi/task",
        json={"type": "generate_image", "prompt": "x", "model_version": "gpt_4o"},
    )
    assert response.status_code != 200
    assert "could not load the flux2-klein pipeline" in response.text


def test_models_names_what_runs_behind_each_model(server: tuple[httpx.Client, Path]) -> None:
    client, _ = server
    rows = {
        row["model_version"]: row
        for row in client.get("/v2/openapi/models").json()["data"]["models"]
    }
    assert [b["served_by"] for b in rows["flux.1_dev"]["backends"]] == [
        "diffusers ZImagePipeline, weights z-image"
    ]
    assert rows["gpt_image_2"]["backends"][0]["served_by"].startswith(
        "diffusers Flux2KleinPipeline"
    )
